"""RLOO and GRPO (critic_free.py) and online DPO (online_dpo.py) on a tiny GPT-2: advantages and losses against
plain-Python sums, k3's expectation against the exact KL, RLOO's first-pass gradient against REINFORCE's, the pair
labels against the reward, and whole runs that move every trained parameter, raise a toy reward, resume bit for bit
and name a non-finite score's step and prompts. TRL's trainers are the oracle in test_critic_free_trl_oracle.py."""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import string

import pytest
import torch

from dpo_edu import critic_free, losses, models, online_dpo
from dpo_edu.checkpoints import find_checkpoint
from dpo_edu.critic_free import GRPOConfig, RLOOConfig, grpo_advantages, grpo_loss, k3, rloo_advantages, rloo_loss
from dpo_edu.online_dpo import OnlineDPOConfig, label_pairs, train_online_dpo
from dpo_edu.sampling import Generation, sample
from dpo_edu.training import iterate_batches

PROMPTS = ["The movie was", "I", "This film is a", "Acting", "What a", "Not", "The plot", "One of the best"]
GEN = Generation(max_new_tokens=8)


def lowercase_share(texts: list[str]) -> torch.Tensor:
    """A toy reward the tiny model can move fast: the share of lowercase ASCII letters in the text."""
    return torch.tensor([sum(c in string.ascii_lowercase for c in t) / max(1, len(t)) for t in texts])


# --- advantages and losses against plain Python ------------------------------------------------------------


def test_rloo_advantages_are_each_reward_minus_the_mean_of_the_others():
    scores, kl, beta, k = [1.0, 2.0, 3.0, 6.0, 0.5, 0.5, -1.0, 2.0], [0.3, 0.0, 1.2, 0.4, 2.0, 0.1, 0.0, 0.7], 0.5, 4
    got = rloo_advantages(torch.tensor(scores), torch.tensor(kl), beta, k)
    rewards = [s - beta * d for s, d in zip(scores, kl)]  # R = s − β KL
    for i, value in enumerate(got.tolist()):
        group = range(i // k * k, i // k * k + k)
        others = [rewards[j] for j in group if j != i]
        assert value == pytest.approx(rewards[i] - sum(others) / len(others), abs=1e-6)
    assert got.reshape(-1, k).sum(1).abs().max() < 1e-5  # leave-one-out advantages sum to 0 in a group
    normalized = rloo_advantages(torch.tensor(scores), torch.tensor(kl), beta, k, normalize=True)
    assert normalized.mean().abs() < 1e-6 and normalized.std().item() == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_are_normalised_within_each_group(scale):
    scores, k = [0.1, 0.9, 0.4, 0.6, 3.0, 1.0, 2.0, 2.0], 4
    got = grpo_advantages(torch.tensor(scores), k, scale).tolist()
    for i, value in enumerate(got):
        group = scores[i // k * k : i // k * k + k]
        std = {"group": statistics.stdev(group), "batch": statistics.stdev(scores), "none": None}[scale]
        want = (scores[i] - statistics.mean(group)) / (1 if std is None else std + 1e-4)
        assert value == pytest.approx(want, rel=1e-5), i
    with pytest.raises(ValueError, match="groups of 3"):
        grpo_advantages(torch.tensor(scores), 3)


def test_k3_is_non_negative_and_its_expectation_is_the_exact_kl():
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(50), 0), torch.softmax(torch.randn(50), 0)
    per_token = k3(p.log(), q.log())  # at every y: π_ref/π − log(π_ref/π) − 1
    assert (per_token >= 0).all()
    exact = (p * (p.log() - q.log())).sum()
    assert (p * per_token).sum().item() == pytest.approx(exact.item(), rel=1e-5)  # E_π[k3] = KL(π ‖ π_ref)


def _hand_grpo(logps, old, ref, adv, mask, loss_type, beta, eps, max_new):
    """GRPO's loss with Python floats, token by token."""
    rows, per_row, total, tokens = len(logps), [], 0.0, 0
    for i in range(rows):
        terms = []
        for t in range(len(logps[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logps[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            r = math.exp(ref[i][t] - logps[i][t])
            terms.append(-min(ratio * adv[i], clipped * adv[i]) + beta * (r - math.log(r) - 1))
        per_row.append(sum(terms) / max(1, len(terms)))
        total, tokens = total + sum(terms), tokens + len(terms)
    return {"grpo": sum(per_row) / rows, "bnpo": total / tokens, "dapo": total / tokens,
            "dr_grpo": total / (rows * max_new)}[loss_type]


@pytest.mark.parametrize("loss_type", list(critic_free.GRPO_LOSSES))
def test_grpo_loss_equals_its_token_by_token_sum(loss_type):
    torch.manual_seed(1)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    logps, old, ref = (-torch.rand(3, 6) * 3 for _ in range(3))
    old = logps - 0.4 * torch.randn(3, 6)  # some ratios far outside [0.8, 1.2]: the clip acts
    adv = torch.tensor([1.5, -0.7, 0.2])
    config = GRPOConfig(loss_type=loss_type, beta=0.04)
    got, stats = grpo_loss(logps, old, ref, adv, mask, config, rollout_tokens=int(mask.sum()), minibatches=1,
                           max_new_tokens=6)
    want = _hand_grpo(logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), loss_type, 0.04,
                      0.2, 6)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert 0 < stats["policy/clipfrac"] < 1 and stats["policy/k3"] > 0


def test_rloo_loss_clips_a_sequence_ratio_and_its_first_pass_is_reinforce():
    torch.manual_seed(2)
    theta = torch.randn(4, 5, requires_grad=True)  # per-token log-probs of 4 samples, as a function of θ
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    logps = torch.nn.functional.logsigmoid(theta)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.3])
    loss, _ = rloo_loss(logps, logps.detach(), adv, mask, 0.2)  # π_old = π_θ: ρ = 1
    (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
    reinforce = -(adv * torch.where(mask, logps, 0.0).sum(1)).mean()  # −1/n Σ A_i log π(y_i)
    (want,) = torch.autograd.grad(reinforce, theta)
    torch.testing.assert_close(grad, want)
    # ρ_1 = e^1.5 with A_1 > 0 and ρ_2 = e^−2.5 with A_2 < 0: both clipped; rows 3–4 keep ρ = 1
    old = logps.detach() + torch.tensor([-0.5, 0.5, 0.0, 0.0])[:, None] * mask
    loss, stats = rloo_loss(logps, old, adv, mask, 0.2)
    ratio = torch.exp(torch.where(mask, logps - old, 0.0).sum(1)).detach()
    want = -sum(min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(ratio.tolist(), adv.tolist())) / 4
    assert loss.item() == pytest.approx(want, rel=1e-5) and stats["policy/clipfrac"] == 0.5


def test_configs_refuse_what_the_methods_cannot_do():
    with pytest.raises(ValueError, match="group_size must be"):
        RLOOConfig(group_size=1)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        GRPOConfig(scale_rewards="rank")
    with pytest.raises(ValueError, match="beta must be a finite number"):
        RLOOConfig(beta=-0.1)
    with pytest.raises(ValueError, match="beta"):
        OnlineDPOConfig(beta=0)
    with pytest.raises(ValueError, match="RLOOConfig or a GRPOConfig"):
        critic_free.train_critic_free(None, None, None, PROMPTS, lowercase_share, OnlineDPOConfig())


def test_online_pairs_put_the_higher_scored_sample_first():
    logps = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    scores = torch.tensor([0.1, 0.9, 0.7, 0.2, 0.5, 0.5])  # a tie keeps the first as chosen
    chosen, rejected = label_pairs(logps, scores)
    assert chosen.tolist() == [-2.0, -3.0, -5.0] and rejected.tolist() == [-1.0, -4.0, -6.0]
    with pytest.raises(ValueError, match="pairs of rows"):
        label_pairs(logps[:5], scores[:5])


# --- whole runs ---------------------------------------------------------------------------------------------


TRAINERS = {
    "RLOO": (critic_free.train_critic_free, RLOOConfig(lr=1e-3, batch_size=4, group_size=4, mini_batch_size=8,
                                                        iterations=2, steps=4, beta=0.05, progress=False)),
    "GRPO": (critic_free.train_critic_free, GRPOConfig(lr=1e-3, batch_size=4, group_size=4, mini_batch_size=8,
                                                        iterations=2, steps=4, beta=0.04, progress=False)),
    "Online DPO": (train_online_dpo, OnlineDPOConfig(lr=1e-3, batch_size=8, steps=4, beta=0.1, progress=False)),
}


def _train(tiny_lm, name, config=None, score_fn=lowercase_share, **kwargs):
    policy, tokenizer = tiny_lm  # the fixture is shared: train a copy, and π_ref is another
    trainer, default = TRAINERS[name]
    return trainer(copy.deepcopy(policy), copy.deepcopy(policy), tokenizer, PROMPTS * 2, score_fn,
                   config or default, GEN, **kwargs)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_run_moves_every_parameter_and_logs_what_it_sampled(tiny_lm, name, one_thread):
    policy, _ = tiny_lm
    trained, metrics = _train(tiny_lm, name)
    moved = [not torch.equal(a, b) for a, b in zip(policy.parameters(), trained.parameters())]
    assert all(moved), f"{moved.count(False)} parameter tensors did not move"
    assert len(metrics) == 4 and [row["step"] for row in metrics] == [1, 2, 3, 4]
    for row in metrics:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
        assert 1 <= row["val/response_length"] <= GEN.max_new_tokens and 0 <= row["objective/scores"] <= 1
    assert metrics[0]["objective/kl"] == pytest.approx(0, abs=1e-5)  # the first samples are π_ref's


@pytest.mark.parametrize("name", ["RLOO", "GRPO", "Online DPO"])
def test_the_toy_reward_rises(tiny_lm, name, one_thread):
    _, default = TRAINERS[name]
    config = type(default)(**{**default.__dict__, "steps": 24, "lr": 3e-3})
    _, metrics = _train(tiny_lm, name, config)
    first, last = (statistics.mean(r["objective/scores"] for r in part) for part in (metrics[:4], metrics[-4:]))
    assert last > first + 0.05, (first, last)


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_resumed_run_equals_an_uninterrupted_one(tiny_lm, name, tmp_path, one_thread):
    _, default = TRAINERS[name]
    config = type(default)(**{**default.__dict__, "save_every": 2})
    whole, whole_metrics = _train(tiny_lm, name, config)

    class Stop(Exception):
        pass

    def stop(step, row):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        _train(tiny_lm, name, config, checkpoint_dir=tmp_path, callback=stop)
    assert find_checkpoint(tmp_path) is not None
    resumed, resumed_metrics = _train(tiny_lm, name, config, checkpoint_dir=tmp_path)
    assert [r["loss"] for r in resumed_metrics] == [r["loss"] for r in whole_metrics]
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_non_finite_score_names_its_step(tiny_lm, name, one_thread):
    def nan_later(texts, calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        out = lowercase_share(texts)
        if len(calls) == 2:
            out[3] = math.nan
        return out

    with pytest.raises(FloatingPointError, match=r"non-finite score at step 2 for prompts \[\d+\]"):
        _train(tiny_lm, name, score_fn=nan_later)


def test_online_dpo_names_the_step_when_its_loss_refuses_a_nan_log_prob(tiny_lm, monkeypatch, one_thread):
    """A NaN log-prob (a diverged policy) stops online DPO with the step and the batch, as every trainer."""
    real = online_dpo.preference_loss

    def nan_at_step_2(chosen, *rest, calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        return real(chosen * math.nan if len(calls) == 2 else chosen, *rest)

    monkeypatch.setattr(online_dpo, "preference_loss", nan_at_step_2)
    with pytest.raises(FloatingPointError, match=r"chosen_logps has a non-finite value .* at step 2 \(epoch"):
        _train(tiny_lm, "Online DPO")


def test_online_dpo_step_is_dpo_on_the_policy_s_own_samples_labelled_by_the_reward(tiny_lm, one_thread):
    """Step 1 by hand: two samples of each prompt from π_θ (≠ π_ref), labelled by the reward, DPO's loss."""
    ref, tokenizer = tiny_lm
    policy = copy.deepcopy(ref)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(5)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = dataclasses.replace(TRAINERS["Online DPO"][1], steps=1)
    _, metrics = train_online_dpo(copy.deepcopy(policy), copy.deepcopy(ref), tokenizer, PROMPTS * 2, lowercase_share,
                                  config, GEN)
    batch = next(iterate_batches(PROMPTS * 2, config.batch_size, seed=config.seed))
    samples = sample(policy, tokenizer, [p for p in batch.items for _ in range(2)], GEN, config.seed * 1_000_003)
    scores = lowercase_share([p + t for p, t in zip(samples.prompts, samples.texts)])
    assert scores[0::2].ne(scores[1::2]).any()
    with torch.no_grad():
        now, before = (models.response_logps(m, samples.batch).sequence_logps for m in (policy, ref))
    (chosen, rejected), (ref_chosen, ref_rejected) = label_pairs(now, scores), label_pairs(before, scores)
    want, _ = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
    assert metrics[0]["loss"] == pytest.approx(want.item(), abs=1e-5)
    assert metrics[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)  # the margins are not 0
