"""Oracle: our RLOO and GRPO advantages, losses and gradients equal TRL 1.16's on one fixed batch.

One batch: 2 prompts × k = 3 completions (token ids, fixed: three end in EOS before the width, one at the width,
two are cut without EOS; lengths 3 to 5), fixed rewards, the tiny GPT-2 as π_ref and a perturbed copy as π_θ.
Both sides see the same tokens; TRL's per-token log-probs (completion columns) are mapped onto ours
((B, L − 1) with a mask) through the masks. Everything is compared to 1e-5:

* GRPO's loss, clip fraction, mean k3 and the gradient of every policy parameter against
  ``GRPOTrainer.compute_loss`` (= ``_compute_loss``) for ``loss_type`` "grpo", "bnpo", "dapo", "dr_grpo",
  β 0 and 0.04, on-policy (ρ = 1) and off-policy (π_old a perturbed copy: some ratios are clipped), with
  one minibatch per rollout (TRL: gradient accumulation 1, ``steps_per_generation`` 1, one process) and
  with two (``steps_per_generation`` 2: a minibatch of half the rollout, ``num_items_in_batch`` the whole
  rollout's tokens, which "dapo" divides by 2).
* GRPO's advantages for ``scale_rewards`` "group", "batch", "none", and RLOO's (β 0 and 0.05, with and
  without ``normalize_advantages``; with β > 0 the KL is in the reward), by driving TRL's own
  ``_generate_and_score_completions``: its generation is replaced by the fixed completion ids (the
  trainer's ``_generate_single_turn``, monkeypatched) and the reward function returns the fixed rewards.
  The same call checks that the hand-built inputs of the loss tests are the ones TRL builds itself.
* RLOO's loss, clip fraction and gradients against ``RLOOTrainer.compute_loss`` (one ratio a sequence).

What TRL 1.16 cannot be made to do, said plainly:

* Its KL term is ours only with ``use_bias_correction_kl=False``, so the GRPO loss tests set it. TRL's
  default (True) multiplies k3 by the token's ratio ρ (DeepSeek-V3.2), which changes the gradient even
  on-policy and the value off-policy; ``dpo_edu.critic_free`` implements the paper's β k3 (Shao et al.,
  Eq. 3). ``test_grpo_kl_differs_from_trl_default`` records that difference as an expected failure.
* TRL scores a batch without position ids, so GPT-2 (absolute positions) gives a left-padded prompt's
  tokens other log-probs than the same prompt unpadded; ours take positions from the attention mask. The
  fixed batch's prompts therefore have the same number of tokens (no left padding: checked), and
  ``test_left_padding`` checks that ours on a left-padded batch equal TRL's on each row unpadded.
* ``current_gradient_accumulation_steps`` exists only inside ``Trainer.train``; it is set to 1 by hand,
  as the training loop would with gradient accumulation 1.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames TRL's defaults

from dpo_edu.critic_free import (GRPOConfig, grpo_advantages, grpo_loss, rloo_advantages,  # noqa: E402
                                 rloo_loss)
from dpo_edu.models import encode_pairs, response_logps  # noqa: E402

PROMPTS = ["The plot", "The acting"]  # 6 tokens each with tiny_lm's tokenizer: no left padding (checked)
K = 3  # group size: TRL's num_generations
WIDTH = 5  # TRL's max_completion_length; a completion is its text's tokens + EOS, cut to WIDTH
COMPLETIONS = [" bad", " great", " was a mess from start to end", " and the", " it was", " is wonderful and moving"]
SCORES = [0.3, -1.2, 0.8, 2.0, 0.1, -0.5]
EPS = 0.2  # ε, both sides' default


def _perturbed(model, scale, seed):
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for p in copied.parameters():
            p.add_(scale * torch.randn_like(p))
    return copied


@pytest.fixture(scope="module")
def models_pair(tiny_lm):
    """(reference, policy, old policy, tokenizer): the tiny GPT-2, a copy whose weights moved (π_θ), and a copy
    of π_θ moved further (an off-policy π_old, so that some ratios leave [1 − ε, 1 + ε])."""
    ref, tokenizer = tiny_lm
    policy = _perturbed(ref, 0.05, 3)
    return copy.deepcopy(ref), policy, _perturbed(policy, 0.05, 4), tokenizer


@pytest.fixture(scope="module")
def fixed_batch(models_pair):
    """The batch both ways: ours (``encode_pairs``) and TRL's ``_compute_loss`` inputs, built by hand."""
    ref, policy, old_policy, tokenizer = models_pair
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(K)]
    completions = [(tokenizer(c, add_special_tokens=False)["input_ids"] + [eos])[:WIDTH] for c in COMPLETIONS]
    ends = [ids[-1] == eos for ids in completions]
    assert len({len(ids) for ids in prompt_ids}) == 1  # no left padding: see the module docstring
    assert any(ends) and not all(ends) and len({len(ids) for ids in completions}) > 2
    assert any(e and len(ids) == WIDTH for e, ids in zip(ends, completions))  # EOS at the last column

    def padded(rows, left):
        width = max(map(len, rows))
        ids = [[pad] * (width - len(r)) + r if left else r + [pad] * (width - len(r)) for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) if left else [1] * len(r) + [0] * (width - len(r))
                for r in rows]
        return torch.tensor(ids), torch.tensor(mask)

    (p_ids, p_mask), (c_ids, c_mask) = padded(prompt_ids, True), padded(completions, False)
    trl = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask}
    ours = encode_pairs(tokenizer, prompt_ids, completions)
    assert torch.equal(ours["input_ids"], torch.cat([p_ids, c_ids], 1))  # the same tokens
    assert torch.equal(ours["attention_mask"], torch.cat([p_mask, c_mask], 1))
    with torch.no_grad():
        logps = {name: response_logps(model, ours)
                 for name, model in (("policy", policy), ("old", old_policy), ("ref", ref))}
    return ours, trl, completions, logps


def _to_trl(per_token, mask, completion_mask):
    """Our (B, L − 1) per-token values at ``mask`` → TRL's (B, C) completion columns."""
    return torch.zeros(completion_mask.shape).masked_scatter(completion_mask.bool(), per_token[mask])


def _reward(prompts, completions, completion_ids, **kwargs):
    """The fixed rewards, looked up by completion, so a reordered batch cannot pass."""
    table = {tuple(ids): s for ids, s in zip(_reward.completions, SCORES)}
    return [table[tuple(ids)] for ids in completion_ids]


def _trainer(kind, model, tokenizer, tmp_path, **kwargs):
    from datasets import Dataset
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer, RLOOTrainer
    from trl import RLOOConfig as TRLRLOOConfig

    config, trainer = (TRLGRPOConfig, GRPOTrainer) if kind == "grpo" else (TRLRLOOConfig, RLOOTrainer)
    args = config(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                  num_generations=K, max_completion_length=WIDTH, epsilon=EPS,
                  **{"per_device_train_batch_size": len(COMPLETIONS), **kwargs})
    trainer = trainer(model=copy.deepcopy(model), reward_funcs=_reward, args=args, processing_class=tokenizer,
                      train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]))
    trainer.model.train()
    return trainer


def _grads(model):
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert any(g.abs().max() > 0 for g in grads.values())  # a gradient to compare, not all zeros
    return grads


def _assert_grads_equal(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], atol=1e-5, rtol=1e-4, msg=name)


def _grpo_case(models_pair, fixed_batch, tmp_path, loss_type, beta, off_policy, rows=slice(None),
               steps_per_generation=1, bias_correction=False):
    """(ours, TRL's): loss, clip fraction, mean k3 and gradients on ``rows`` of the fixed batch, a minibatch of
    a rollout cut in ``steps_per_generation`` minibatches."""
    ref, policy, _, tokenizer = models_pair
    ours_batch, trl_batch, _, logps = fixed_batch
    advantages = grpo_advantages(torch.tensor(SCORES), K, "group")
    rollout_tokens = int(trl_batch["completion_mask"].sum())
    mask = logps["policy"].mask[rows]
    c_mask = trl_batch["completion_mask"][rows]

    trainer = _trainer("grpo", policy, tokenizer, tmp_path, beta=beta, loss_type=loss_type,
                       use_bias_correction_kl=bias_correction, steps_per_generation=steps_per_generation,
                       per_device_train_batch_size=len(COMPLETIONS) // steps_per_generation)
    assert (trainer.importance_sampling_level, trainer.top_entropy_quantile, trainer.off_policy_mask_threshold,
            trainer.use_vllm, trainer.epsilon_low, trainer.epsilon_high, trainer.temperature,
            trainer.args.gradient_accumulation_steps, trainer.accelerator.num_processes, trainer.loss_type,
            trainer.beta) == ("token", 1.0, None, False, EPS, EPS, 1.0, 1, 1, loss_type, beta)
    assert not trainer._entropy_bonus_enabled and not trainer.aux_loss_enabled and trainer.args.delta is None
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets with gradient accumulation 1
    inputs = {key: value[rows] for key, value in trl_batch.items()}
    inputs.update(advantages=advantages[rows], num_items_in_batch=torch.tensor(rollout_tokens),
                  ref_per_token_logps=_to_trl(logps["ref"].logps[rows], mask, c_mask))
    if off_policy:
        inputs["old_per_token_logps"] = _to_trl(logps["old"].logps[rows], mask, c_mask)
    # on-policy, TRL's own path: without old_per_token_logps it uses its log-probs, detached (ρ = 1)
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    theirs = (trl_loss.item(), metrics["clip_ratio/region_mean"], metrics.get("kl"), _grads(trainer.model))

    model = copy.deepcopy(policy).train()
    now = response_logps(model, {key: value[rows] for key, value in ours_batch.items()})
    old = logps["old"].logps[rows] if off_policy else now.logps.detach()
    loss, stats = grpo_loss(now.logps, old, logps["ref"].logps[rows], advantages[rows], now.mask,
                            GRPOConfig(loss_type=loss_type, beta=beta, cliprange=EPS), rollout_tokens=rollout_tokens,
                            minibatches=steps_per_generation, max_new_tokens=WIDTH)
    loss.backward()
    ours = (loss.item(), stats["policy/clipfrac"], stats["policy/k3"] if beta else None, _grads(model))
    return ours, theirs


def _assert_grpo_equal(ours, theirs, beta, off_policy):
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5)  # the loss
    assert ours[1] == pytest.approx(theirs[1], abs=1e-6)  # the fraction of tokens whose ratio is clipped
    assert (ours[1] > 0) == off_policy  # clipping exercised off-policy, never on-policy
    if beta:
        assert ours[2] == pytest.approx(theirs[2], abs=1e-5) and ours[2] > 1e-4  # mean k3, not trivially 0
    _assert_grads_equal(ours[3], theirs[3])


def test_log_probs_equal_trl(models_pair, fixed_batch, tmp_path, one_thread):
    """TRL's per-token log-probs of the completion columns are ours, mapped through the masks."""
    _, policy, _, tokenizer = models_pair
    _, trl_batch, _, logps = fixed_batch
    trainer = _trainer("grpo", policy, tokenizer, tmp_path)
    ids = torch.cat([trl_batch["prompt_ids"], trl_batch["completion_ids"]], 1)
    attention = torch.cat([trl_batch["prompt_mask"], trl_batch["completion_mask"]], 1)
    with torch.no_grad():
        theirs, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, WIDTH)
    c_mask = trl_batch["completion_mask"].bool()
    torch.testing.assert_close(theirs[c_mask], logps["policy"].logps[logps["policy"].mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("off_policy", [False, True], ids=["on_policy", "clipped"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_loss_and_gradients_equal_trl(models_pair, fixed_batch, loss_type, beta, off_policy, tmp_path,
                                           one_thread):
    ours, theirs = _grpo_case(models_pair, fixed_batch, tmp_path, loss_type, beta, off_policy)
    _assert_grpo_equal(ours, theirs, beta, off_policy)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_second_minibatch_equals_trl(models_pair, fixed_batch, loss_type, tmp_path, one_thread):
    """The rollout cut in 2 minibatches (TRL: steps_per_generation 2), the second: "dapo" divides by half the
    rollout's tokens, the others by the minibatch's own counts."""
    ours, theirs = _grpo_case(models_pair, fixed_batch, tmp_path, loss_type, 0.04, True,
                              rows=slice(K, 2 * K), steps_per_generation=2)
    _assert_grpo_equal(ours, theirs, 0.04, True)


@pytest.mark.xfail(raises=AssertionError, strict=True,
                   reason="TRL 1.16's default use_bias_correction_kl=True weighs k3 by the ratio ρ; ours is β k3")
def test_grpo_kl_differs_from_trl_default(models_pair, fixed_batch, tmp_path, one_thread):
    ours, theirs = _grpo_case(models_pair, fixed_batch, tmp_path, "grpo", 0.04, False, bias_correction=True)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5)  # on-policy ρ = 1: the same value...
    _assert_grads_equal(ours[3], theirs[3])  # ...not the same gradient: k3 ∇ρ


def _drive_generation(trainer, monkeypatch, tokenizer, completions, grpo):
    """TRL's ``_generate_and_score_completions`` on the fixed batch: its generation returns the fixed ids."""
    def generate(prompt_ids, *args, **kwargs):
        assert prompt_ids == [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(K)]
        ids = [list(c) for c in completions]
        return (ids, None) if grpo else ids  # GRPO's also returns sampling log-probs (vLLM's), none here

    monkeypatch.setattr(trainer, "_generate_single_turn", generate)
    monkeypatch.setattr(_reward, "completions", completions, raising=False)
    return trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS for _ in range(K)])


def _assert_inputs_equal(out, trl_batch):
    """TRL built the same tensors as the loss tests' hand-built inputs."""
    for key, value in trl_batch.items():
        assert torch.equal(out[key], value), key
    if "num_items_in_batch" in out:  # GRPO's ("dapo" divides by it); RLOO's loss has no use for it
        assert int(out["num_items_in_batch"]) == int(trl_batch["completion_mask"].sum())


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_equal_trl(models_pair, fixed_batch, scale, tmp_path, monkeypatch, one_thread):
    _, policy, _, tokenizer = models_pair
    _, trl_batch, completions, _ = fixed_batch
    trainer = _trainer("grpo", policy, tokenizer, tmp_path, scale_rewards=scale)
    out = _drive_generation(trainer, monkeypatch, tokenizer, completions, grpo=True)
    _assert_inputs_equal(out, trl_batch)
    assert "old_per_token_logps" not in out and "ref_per_token_logps" not in out  # on-policy, β 0
    ours = grpo_advantages(torch.tensor(SCORES), K, scale)
    torch.testing.assert_close(out["advantages"], ours, atol=1e-5, rtol=0)
    assert ours.abs().min() > 1e-3  # no advantage is trivially 0


@pytest.mark.parametrize("beta,normalize", [(0.0, False), (0.05, False), (0.05, True)])
def test_rloo_advantages_equal_trl(models_pair, fixed_batch, beta, normalize, tmp_path, monkeypatch, one_thread):
    ref, policy, _, tokenizer = models_pair
    _, trl_batch, completions, logps = fixed_batch
    trainer = _trainer("rloo", policy, tokenizer, tmp_path, beta=beta, normalize_advantages=normalize)
    assert trainer.reward_clip_range is None and not trainer.mask_truncated_completions
    if beta:  # TRL loads π_ref from the policy's folder: the tiny GPT-2 before the perturbation
        for (name, theirs), mine in zip(trainer.ref_model.named_parameters(), ref.parameters()):
            assert torch.equal(theirs, mine), name
    out = _drive_generation(trainer, monkeypatch, tokenizer, completions, grpo=False)
    _assert_inputs_equal(out, trl_batch)
    policy_logps = logps["policy"]
    torch.testing.assert_close(out["old_logps"], policy_logps.sequence_logps, atol=1e-5, rtol=0)
    kl = torch.where(policy_logps.mask, policy_logps.logps - logps["ref"].logps, 0.0).sum(1)  # Σ_t old − ref
    assert (kl.abs() > 1e-2).all() or not beta  # the KL penalty moves the rewards
    ours = rloo_advantages(torch.tensor(SCORES), kl, beta, K, normalize)
    torch.testing.assert_close(out["advantages"], ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("off_policy", [False, True], ids=["on_policy", "clipped"])
def test_rloo_loss_and_gradients_equal_trl(models_pair, fixed_batch, off_policy, tmp_path, one_thread):
    _, policy, _, tokenizer = models_pair
    ours_batch, trl_batch, _, logps = fixed_batch
    old = logps["old" if off_policy else "policy"]
    kl = torch.where(old.mask, old.logps - logps["ref"].logps, 0.0).sum(1)  # Σ_t log π_old − log π_ref
    advantages = rloo_advantages(torch.tensor(SCORES), kl, 0.05, K)

    trainer = _trainer("rloo", policy, tokenizer, tmp_path, beta=0.05)
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.temperature) == (EPS, EPS, 1.0)
    trl_loss = trainer.compute_loss(trainer.model, {**trl_batch, "advantages": advantages,
                                                    "old_logps": old.sequence_logps})
    trl_loss.backward()
    trl_clipped = trainer._metrics["train"]["clip_ratio/region_mean"][-1]

    model = copy.deepcopy(policy).train()
    now = response_logps(model, ours_batch)
    loss, stats = rloo_loss(now.logps, old.logps, advantages, now.mask, EPS)
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert stats["policy/clipfrac"] == pytest.approx(trl_clipped, abs=1e-6)
    assert (stats["policy/clipfrac"] > 0) == off_policy  # sequences clipped off-policy, none on-policy
    _assert_grads_equal(_grads(model), _grads(trainer.model))


def test_left_padding(models_pair, tmp_path, one_thread):
    """Ours on a left-padded batch equal TRL's on each row unpadded; TRL's on the padded rows differ (GPT-2's
    positions count the pads when no position ids are given): why the fixed batch has no left padding."""
    _, policy, _, tokenizer = models_pair
    prompts, completions = ["The movie was", "The plot"], [" great", " bad"]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    assert len(prompt_ids[0]) > len(prompt_ids[1]) and len(completion_ids[0]) > len(completion_ids[1])
    batch = encode_pairs(tokenizer, prompt_ids, completion_ids)
    trainer = _trainer("grpo", policy, tokenizer, tmp_path)
    width = len(completion_ids[0])
    with torch.no_grad():
        ours = response_logps(trainer.model, batch)
        padded, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, batch["input_ids"], batch["attention_mask"], width)
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            alone, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, torch.tensor([p + c]), torch.ones(1, len(p + c), dtype=torch.long), len(c))
            torch.testing.assert_close(ours.logps[i][ours.mask[i]], alone[0], atol=1e-5, rtol=0)
            if len(p) < len(prompt_ids[0]):  # this row was left-padded
                assert (padded[i, : len(c)] - alone[0]).abs().max() > 1e-4
            else:
                torch.testing.assert_close(padded[i, : len(c)], alone[0], atol=1e-5, rtol=0)
