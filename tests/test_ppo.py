"""PPO on a tiny GPT-2: GAE, whitening, the clipped losses and the KL controller against hand computations;
rollouts that stop at EOS; a KL that is 0 at π = π_ref and ≥ 0 in expectation; every parameter learns and a
toy reward rises; a NaN names its step; a resumed run equals an uninterrupted one bit for bit, β and the
episode count included."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import string

import pytest
import torch

from dpo_edu import losses, models
from dpo_edu.evaluate import make_eval_fn, sequence_kl
from dpo_edu.ppo import PPOConfig, Rollout, ValueHead, adapt_kl_coef, gae, rollout, train_ppo, whiten
from dpo_edu.presets import PRESETS, get_preset
from dpo_edu.reward_model import RewardModel, score
from dpo_edu.sampling import Generation, generate
from dpo_edu.checkpoints import STATE_FILE, find_checkpoint
from dpo_edu.training import iterate_batches

PROMPTS = ["The movie was", "I", "This film is a", "Acting", "What a", "Not", "The plot", "One of the best"]


def lowercase_share(texts: list[str]) -> torch.Tensor:
    """A toy reward the tiny random model can move fast: the share of lowercase ASCII letters in the text."""
    return torch.tensor([sum(c in string.ascii_lowercase for c in t) / max(1, len(t)) for t in texts])


GEN = Generation(max_new_tokens=8)


def _config(**changes) -> PPOConfig:
    base = dict(lr=1e-3, batch_size=16, mini_batch_size=8, ppo_epochs=2, steps=3, kl_coef=0.1, progress=False)
    return PPOConfig(**{**base, **changes})


def _train(tiny_lm, config, score_fn=lowercase_share, generation=GEN, **kwargs):
    policy, tokenizer = tiny_lm  # the fixture is shared: train a copy, and π_ref is another
    return train_ppo(copy.deepcopy(policy), copy.deepcopy(policy), tokenizer, PROMPTS * 4, score_fn, config,
                     generation, **kwargs)


def _responses(roll: Rollout) -> list[list[int]]:
    """Each row's sampled tokens (EOS included), read off the rollout's batch."""
    ids, response = roll.batch["input_ids"], roll.batch["response_mask"].bool()
    return [row[m].tolist() for row, m in zip(ids, response)]


# --- GAE, whitening, losses, controllers against plain Python ----------------------------------------------


def _hand_gae(rewards, values, mask, gamma, lam):
    """Backwards recursion over each row's unmasked positions: δ = r + γV' − V, A = δ + γλA'."""
    advantages = [[0.0] * len(row) for row in rewards]
    returns = [[0.0] * len(row) for row in rewards]
    for i in range(len(rewards)):
        next_advantage, next_value = 0.0, 0.0
        for t in reversed(range(len(rewards[i]))):
            if not mask[i][t]:
                continue
            delta = rewards[i][t] + gamma * next_value - values[i][t]
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[i][t]
            advantages[i][t] = next_advantage
            returns[i][t] = next_advantage + values[i][t]
    return advantages, returns


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_a_hand_loop_with_padded_positions(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1],  # full length
                         [1, 1, 1, 0, 0, 0, 0],  # stopped at EOS: right padding
                         [1, 0, 0, 0, 0, 0, 0],  # one token
                         [1, 1, 0, 1, 1, 0, 0]])  # a hole: masked positions are skipped, not zero-valued states
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    want_a, want_r = _hand_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    for got, want in ((advantages, want_a), (returns, want_r)):
        for row_got, row_want in zip(got.tolist(), want):
            assert row_got == pytest.approx(row_want, abs=1e-12)
    assert (advantages[mask == 0] == 0).all() and (returns[mask == 0] == 0).all()


def test_gae_with_gamma_lambda_one_and_zero_values_is_the_reward_to_go():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 5.0]])
    advantages, returns = gae(rewards, torch.zeros_like(rewards), torch.ones_like(rewards), 1.0, 1.0)
    assert advantages.tolist()[0] == pytest.approx([5.2, 5.1, 5.3, 5.0])  # Σ_{t' ≥ t} r_t'
    assert torch.equal(advantages, returns)


def test_whiten_uses_only_the_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    kept = [1.0, 2.0, 3.0, 6.0]
    mean = sum(kept) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / 3)  # unbiased, as TRL
    out = whiten(x, mask, eps=0.0)
    assert out[mask.bool()].tolist() == pytest.approx([(v - mean) / std for v in kept])
    assert out[~mask.bool()].tolist() == [0.0, 0.0]
    scaled = whiten(x, mask, shift_mean=False, eps=0.0)
    assert scaled[mask.bool()].tolist() == pytest.approx([(v - mean) / std + mean for v in kept])


def test_clipped_policy_loss_by_hand():
    ratios = [0.5, 1.1, 1.5, 0.5, 1.5, 0.9]
    advantages = [1.0, -1.0, 2.0, -2.0, -1.0, 1e6]
    mask = [1, 1, 1, 1, 1, 0]  # the last token is padding: its huge advantage must not count
    # max(−Aρ, −A clip(ρ, 0.8, 1.2)) per token, and whether the clipped term is the larger:
    #   ρ 0.5, A +1 → max(−0.5, −0.8) = −0.5      no clip (a positive A below 1 − ε is not clipped)
    #   ρ 1.1, A −1 → max(1.1, 1.1)   =  1.1      no clip (inside the range)
    #   ρ 1.5, A +2 → max(−3.0, −2.4) = −2.4      clipped (no gain beyond 1 + ε)
    #   ρ 0.5, A −2 → max(1.0, 1.6)   =  1.6      clipped (no gain below 1 − ε)
    #   ρ 1.5, A −1 → max(1.5, 1.2)   =  1.5      no clip (a loss is never clipped away)
    per_token = [-0.5, 1.1, -2.4, 1.6, 1.5]
    old = torch.zeros(1, 6, dtype=torch.float64)
    new = torch.log(torch.tensor([ratios], dtype=torch.float64))
    loss, metrics = losses.ppo_policy_loss(new, old, torch.tensor([advantages], dtype=torch.float64),
                                           torch.tensor([mask]), cliprange=0.2)
    assert loss.item() == pytest.approx(sum(per_token) / 5)
    assert metrics["policy/clipfrac"] == pytest.approx(2 / 5)
    assert metrics["policy/approxkl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios[:5]) / 5)
    assert metrics["val/ratio"] == pytest.approx(sum(ratios[:5]) / 5)


def test_clipped_value_loss_by_hand():
    old = [0.0, 0.0, 1.0, 1.0, 0.0]
    new = [0.1, 0.5, 0.5, 1.1, 9.0]
    returns = [1.0, 1.0, 0.0, 2.0, 0.0]
    mask = [1, 1, 1, 1, 0]
    # V_clip = V_old + clip(V − V_old, ±0.2); ½ max((V − R)², (V_clip − R)²):
    #   0.1 (clip 0.1): (0.81, 0.81)  → 0.81        0.5 (clip 0.2): (0.25, 0.64) → 0.64  clipped larger
    #   0.5 (clip 0.8): (0.25, 0.64) → 0.64 clipped  1.1 (clip 1.1): (0.81, 0.81) → 0.81
    loss, metrics = losses.ppo_value_loss(*(torch.tensor([v], dtype=torch.float64) for v in (new, old, returns)),
                                          torch.tensor([mask]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 0.64 + 0.81) / 4)
    assert metrics["val/clipfrac"] == pytest.approx(2 / 4)
    assert metrics["val/vpred"] == pytest.approx((0.1 + 0.5 + 0.5 + 1.1) / 4)
    assert metrics["val/error"] == pytest.approx((0.81 + 0.25 + 0.25 + 0.81) / 4)


@pytest.mark.parametrize("kl, error", [(6.6, 0.1), (5.4, -0.1), (12.0, 0.2), (0.0, -0.2), (6.0, 0.0)])
def test_adaptive_kl_coef_follows_ziegler_with_the_clip(kl, error):
    beta = adapt_kl_coef(0.1, kl, n=32, target=6.0, horizon=1000)
    assert beta == pytest.approx(0.1 * (1 + error * 32 / 1000))  # β(1 + clip(KL/target − 1, ±0.2) n/H)
    assert adapt_kl_coef(0.1, kl, n=32, target=None, horizon=1000) == 0.1  # no target: β is fixed


def test_adaptive_kl_coef_scales_with_n_over_the_horizon_and_compounds():
    # the same error moves β in proportion to the episodes n seen, over the horizon H
    assert adapt_kl_coef(0.1, 12.0, n=500, target=6.0, horizon=1000) == pytest.approx(0.1 * 1.1)
    assert adapt_kl_coef(0.1, 12.0, n=50, target=6.0, horizon=100) == pytest.approx(0.1 * 1.1)
    assert adapt_kl_coef(0.1, 0.0, n=1000, target=6.0, horizon=1000) == pytest.approx(0.1 * 0.8)
    assert adapt_kl_coef(0.1, 12.0, n=0, target=6.0, horizon=1000) == 0.1
    beta = 0.1  # a run of updates: each starts from the last β
    for kl, n in ((12.0, 100), (0.0, 50), (6.6, 200), (7.2, 10), (6.0, 400)):
        beta = adapt_kl_coef(beta, kl, n=n, target=6.0, horizon=1000)
    # 0.1 · (1 + 0.2·0.1)(1 − 0.2·0.05)(1 + 0.1·0.2)(1 + 0.2·0.01)(1 + 0)
    assert beta == pytest.approx(0.1 * 1.02 * 0.99 * 1.02 * 1.002)
    assert beta == pytest.approx(0.10320559920)


# --- rollouts ---------------------------------------------------------------------------------------------


def _eos_prone(policy, tokenizer, p_eos: float = 0.3):
    """A copy whose every next-token distribution puts about ``p_eos`` on EOS, whatever the context."""
    toy = copy.deepcopy(policy)
    ln_f, wte = toy.transformer.ln_f, toy.get_input_embeddings().weight
    with torch.no_grad():
        direction = torch.zeros_like(ln_f.bias)
        direction[0] = 1.0
        ln_f.weight.zero_()  # the final hidden state is the constant ln_f.bias = e_0
        ln_f.bias.copy_(direction)
        # logits: wte[v] · e_0 ≈ 0 (init std 0.02) for every other token, so p(EOS) ≈ e^z / (e^z + n − 1)
        n = wte.shape[0]
        wte[tokenizer.eos_token_id] = direction * math.log(p_eos / (1 - p_eos) * (n - 1))  # tied: the EOS logit z
    return toy


def test_rollout_stops_at_eos_masks_what_follows_and_penalises_missing_eos(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    toy = _eos_prone(policy, tokenizer)
    prompts = PROMPTS * 4
    half = lambda texts: torch.full((len(texts),), 0.5)  # noqa: E731
    config = _config(missing_eos_penalty=-1.0, normalize_scores=False)
    roll = rollout(toy, ValueHead(32), toy, tokenizer, prompts, half, config, Generation(max_new_tokens=4),
                   kl_coef=0.1, seed=0)
    mask, ids = roll.mask, roll.batch["input_ids"]
    assert mask.shape == (len(prompts), ids.shape[1] - 1)  # (rows, L − 1): column t scores token t + 1
    assert torch.equal(mask, roll.batch["response_mask"][:, 1:].bool())
    tokens = ids[:, 1:]  # the token each column scores
    start = int(mask.any(0).nonzero()[0])  # left-padded prompts: every response starts in this column
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    lengths = mask.sum(1)
    for i in range(len(prompts)):
        n = int(lengths[i])
        assert mask[i].tolist() == [False] * start + [True] * n + [False] * (mask.shape[1] - start - n)
        assert (tokens[i, start + n :] == pad).all()  # nothing follows the stop
        assert eos not in tokens[i, start : start + n - 1].tolist()  # EOS only as the last token
        assert bool(roll.has_eos[i]) == (tokens[i, start + n - 1].item() == eos)
        assert n == 4 or roll.has_eos[i]  # a row without EOS ran to max_new_tokens
    has_eos = roll.has_eos
    assert 0 < has_eos.sum() < len(prompts)  # both kinds present
    assert torch.equal(roll.scores, torch.where(has_eos, 0.5, -1.0))  # the penalty replaces exactly those
    for name in ("logprobs", "ref_logprobs", "values", "entropy", "kl", "advantages", "returns"):
        assert (getattr(roll, name)[~mask] == 0).all(), name
    assert (roll.kl == 0).all() and (roll.values == 0).all()
    # π = π_ref and V ≡ 0 (a new head): r_t is s̃ alone, at the last token; γ = 1 makes R_t = λ^(last − t) s̃,
    # and the advantages before whitening equal the returns
    for i in range(len(prompts)):
        n = int(lengths[i])
        want = [config.lam ** (n - 1 - k) * roll.scores[i].item() for k in range(n)]
        assert roll.returns[i, start : start + n].tolist() == pytest.approx(want, abs=1e-6)
    assert torch.equal(roll.advantages, whiten(roll.returns, mask))
    without = rollout(toy, ValueHead(32), toy, tokenizer, prompts, half, _config(normalize_scores=False),
                      Generation(max_new_tokens=4), kl_coef=0.1, seed=0)
    assert torch.equal(without.has_eos, has_eos) and (without.scores == 0.5).all()  # off by default


def test_scores_are_normalised_by_the_first_rollout_then_by_those_numbers(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    prompts = PROMPTS * 4
    first = rollout(policy, ValueHead(32), policy, tokenizer, prompts, lowercase_share, _config(), GEN,
                    kl_coef=0.1, seed=0)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in _responses(first)]
    raw = lowercase_share([p + t for p, t in zip(prompts, texts)])
    assert torch.allclose(first.raw_scores, raw)
    assert first.score_stats == pytest.approx((raw.mean().item(), raw.std().item()))
    assert first.scores.mean().item() == pytest.approx(0.0, abs=1e-6)  # s̃ = (s − μ₀) / σ₀ on π_ref's samples
    assert first.scores.std().item() == pytest.approx(1.0, abs=1e-5)
    later = rollout(policy, ValueHead(32), policy, tokenizer, prompts, lowercase_share, _config(), GEN,
                    kl_coef=0.1, seed=1, score_stats=(0.2, 0.5))
    assert torch.allclose(later.scores, (later.raw_scores - 0.2) / 0.5)  # fixed numbers after the first
    assert later.score_stats == (0.2, 0.5)
    off = rollout(policy, ValueHead(32), policy, tokenizer, prompts, lowercase_share, _config(normalize_scores=False),
                  GEN, kl_coef=0.1, seed=0)
    assert torch.equal(off.scores, off.raw_scores)


def test_rollout_log_probs_are_those_of_the_sampling_temperature(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    value_head = ValueHead(32)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        value_head.linear.weight.normal_()  # a head that is not 0 everywhere, so its values are checked
        value_head.linear.bias.fill_(0.3)
    roll = rollout(policy, value_head, policy, tokenizer, PROMPTS, lowercase_share, _config(),
                   Generation(max_new_tokens=8, temperature=0.7), kl_coef=0.1, seed=1)
    assert roll.temperature == 0.7
    batch, mask = roll.batch, roll.mask
    with torch.no_grad():  # independently: the model's full logits, log_softmax(z / T), column t → token t + 1
        attention = batch["attention_mask"]
        out = policy(input_ids=batch["input_ids"], attention_mask=attention,
                     position_ids=(attention.cumsum(1) - 1).clamp(min=0), output_hidden_states=True)
        log_dist = torch.log_softmax(out.logits[:, :-1].float() / 0.7, -1)
        want = log_dist.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        entropy = -(log_dist.exp() * log_dist).sum(-1)
        values = value_head(out.hidden_states[-1][:, :-1])
        at_one = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])
    assert torch.allclose(roll.logprobs[mask], want[mask], atol=1e-5)
    assert torch.allclose(roll.ref_logprobs[mask], want[mask], atol=1e-5)  # π_ref (= π here) at the same T
    assert not torch.allclose(at_one.squeeze(-1)[mask], want[mask], atol=1e-3)  # T = 1 would differ
    now = models.response_logps(policy, batch, 0.7, value_head, entropy=True)
    assert torch.equal(now.mask, mask)
    for got, expected in ((now.logps, want), (now.entropy, entropy), (now.values, values),
                          (roll.entropy, entropy), (roll.values, values)):
        assert torch.allclose(got[mask], expected[mask], atol=1e-5)
        assert (got[~mask] == 0).all()


def test_reward_model_scores_the_response_at_its_last_token(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    reward_model = RewardModel.from_policy(policy, seed=0)
    roll = rollout(policy, ValueHead(32), policy, tokenizer, PROMPTS, reward_model, _config(), GEN, kl_coef=0.1,
                   seed=0)
    responses = [r[:-1] if r[-1] == tokenizer.eos_token_id else r for r in _responses(roll)]
    assert torch.allclose(roll.raw_scores, score(reward_model, tokenizer, PROMPTS, responses), atol=1e-6)


def test_kl_is_zero_at_the_reference_and_non_negative_in_expectation(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    _, metrics = _train(tiny_lm, _config(steps=1))
    assert metrics[0]["objective/kl"] == 0.0  # π_θ = π_ref at the first rollout: every log-ratio is exactly 0
    assert metrics[0]["objective/non_score_reward"] == 0.0
    assert metrics[0]["objective/rlhf_reward"] == pytest.approx(0.0, abs=1e-6)  # s̃ − 0, s̃ centred on this batch
    moved = copy.deepcopy(policy)  # a frozen policy some distance from π_ref
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = PROMPTS * 16
    roll = rollout(moved, ValueHead(32), policy, tokenizer, prompts, lowercase_share, _config(), GEN, kl_coef=0.1,
                   seed=0)
    sampled = roll.kl.sum(1)  # Σ_t log π − log π_ref on samples of π: unbiased for KL(π ‖ π_ref) ≥ 0
    exact, log_ratio = sequence_kl(moved, policy, roll.batch)
    assert torch.allclose(sampled, log_ratio, atol=1e-4)  # the same estimate as evaluate's
    assert (sampled < 0).any()  # single samples can be negative ...
    assert sampled.mean() > 0  # ... their mean is not
    stderr = sampled.std() / math.sqrt(len(sampled))
    assert abs(sampled.mean() - exact.mean()) < 4 * stderr  # and it agrees with the exact per-token sum


# --- training ---------------------------------------------------------------------------------------------


def test_high_lr_changes_every_parameter_and_raises_the_reward(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    trained, value_head = copy.deepcopy(policy), ValueHead(32)
    before = {name: p.detach().clone() for name, p in trained.named_parameters()}
    config = _config(lr=3e-2, steps=8, ppo_epochs=2, kl_coef=0.0, grad_clip=None)
    _, metrics = train_ppo(trained, copy.deepcopy(policy), tokenizer, PROMPTS * 4, lowercase_share, config, GEN,
                           value_head=value_head)
    unchanged = [name for name, p in trained.named_parameters() if torch.equal(p, before[name])]
    assert not unchanged
    # ... but no weight decay: the last position's embedding, never reached by ≤ 12-token rows, has stayed put
    assert torch.equal(trained.transformer.wpe.weight[-1], before["transformer.wpe.weight"][-1])
    assert (value_head.linear.weight != 0).all() and (value_head.linear.bias != 0).all()

    def mean_reward(model):  # 128 fresh samples, the same seed for both models
        prompts = PROMPTS * 16
        return lowercase_share([p + c for p, c in zip(prompts, generate(model, tokenizer, prompts, 8, seed=123,
                                                                         batch_size=128))]).mean()

    start, end = mean_reward(policy), mean_reward(trained)
    assert end > start + 0.08, (start, end)
    assert metrics[-1]["objective/kl"] > 0.5  # it moved away from π_ref to get there
    assert {"objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy", "objective/kl_coef",
            "policy/approxkl", "policy/clipfrac", "loss/policy", "loss/value", "val/clipfrac", "val/vpred",
            "val/ratio", "val/num_eos_tokens", "episode", "step", "epoch"} <= set(metrics[0])
    assert [row["epoch"] for row in metrics] == [(i + 1) / 2 for i in range(8)]  # 32 prompts, 16 a rollout


def test_adaptive_coefficient_moves_between_steps_as_the_controller_says(tiny_lm, one_thread):
    config = _config(lr=1e-2, steps=4, target_kl=0.5, kl_horizon=50, batch_size=12, mini_batch_size=6)
    _, metrics = _train(tiny_lm, config)  # 32 prompts in rollouts of 12, 12, 8 (the epoch's rest), 12
    assert [row["episode"] for row in metrics] == [12, 24, 32, 44]
    beta = 0.1
    for row, rollout_size in zip(metrics, [12, 12, 8, 12]):
        assert row["objective/kl_coef"] == beta  # β used by this step's rewards
        beta = adapt_kl_coef(beta, row["objective/kl"], rollout_size, 0.5, 50)  # n: this rollout's episodes
    assert metrics[0]["objective/kl_coef"] != metrics[-1]["objective/kl_coef"]
    fixed = _train(tiny_lm, _config(lr=1e-2, steps=3))[1]
    assert {row["objective/kl_coef"] for row in fixed} == {0.1}


def test_non_finite_loss_names_the_step_and_the_minibatch(tiny_lm, one_thread):
    value_head = ValueHead(32)

    def poison(step, row):  # after step 1, a NaN in the value head: step 2's advantages and loss are NaN
        with torch.no_grad():
            value_head.linear.weight.fill_(math.nan)

    with pytest.raises(FloatingPointError, match=r"advantages has a non-finite value nan at index \(\d+, \d+\) "
                                                 r"at step 2 \(epoch 0, batch 0") as error:
        _train(tiny_lm, _config(log_every=1), callback=poison, value_head=value_head)
    named = [int(r) for r in re.search(r"rows \[([\d, ]+)\]", str(error.value)).group(1).split(", ")]
    step_2_prompts = next(iterate_batches(PROMPTS * 4, 16, seed=0, start_step=1)).rows
    assert len(named) == 8 and set(named) <= set(step_2_prompts)  # the minibatch's prompts, not rollout rows
    with pytest.raises(FloatingPointError, match=r"non-finite score at step 1"):
        _train(tiny_lm, _config(), score_fn=lambda texts: torch.full((len(texts),), math.nan))


def test_a_reward_without_spread_on_pi_ref_cannot_be_normalised(tiny_lm, one_thread):
    constant = lambda texts: torch.ones(len(texts))  # noqa: E731  (σ₀ = 0: s̃ = 0/0)
    with pytest.raises(ValueError, match=r"16 score\(s\) have no spread \(σ₀ = 0\).*normalize_scores=False"):
        _train(tiny_lm, _config(steps=1), score_fn=constant)
    _, metrics = _train(tiny_lm, _config(steps=1, normalize_scores=False), score_fn=constant)
    assert metrics[0]["objective/scores"] == 1.0


def test_resume_equals_the_uninterrupted_run_and_the_seed_fixes_it(tiny_lm, tmp_path, one_thread):
    config = _config(lr=1e-2, steps=4, save_every=2, target_kl=1.0, kl_horizon=100)
    value_head = ValueHead(32)
    policy, full = _train(tiny_lm, config, value_head=value_head)
    assert _train(tiny_lm, config)[1] == full  # same seed, same numbers
    assert _train(tiny_lm, _config(lr=1e-2, steps=4, save_every=2, target_kl=1.0, kl_horizon=100, seed=1))[1] != full

    def crash(step, row):
        if step == 3:
            raise KeyboardInterrupt  # after the step-2 checkpoint, before the step-4 one

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_lm, config, callback=crash, checkpoint_dir=tmp_path)
    resumed_head = ValueHead(32)
    resumed, metrics = _train(tiny_lm, config, checkpoint_dir=tmp_path, value_head=resumed_head)
    assert metrics == full  # bit for bit, β and the optimiser state included
    for (name, p), q in zip(policy.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(value_head.linear.weight, resumed_head.linear.weight)
    with pytest.raises(ValueError, match="different config"):
        _train(tiny_lm, _config(lr=1e-3, steps=4, save_every=2, target_kl=1.0, kl_horizon=100),
               checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different config \(generation\)"):  # its samples were GEN's
        _train(tiny_lm, config, generation=Generation(max_new_tokens=5), checkpoint_dir=tmp_path)


def test_a_resumed_run_restores_beta_and_the_episode_count(tiny_lm, tmp_path, one_thread):
    config = _config(lr=1e-2, steps=3, save_every=2, target_kl=0.5, kl_horizon=50, batch_size=12, mini_batch_size=6)
    _, full = _train(tiny_lm, config)  # rollouts of 12, 12 and 8 prompts (the epoch's rest)

    def crash(step, row):
        if step == 2:
            raise KeyboardInterrupt  # just after the step-2 checkpoint

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_lm, config, callback=crash, checkpoint_dir=tmp_path)
    saved = torch.load(find_checkpoint(tmp_path) / STATE_FILE, weights_only=False)
    assert saved["step"] == 2
    state = saved["state"]
    assert state["kl_coef"] == full[2]["objective/kl_coef"] != 0.1  # β for step 3, moved twice from 0.1
    assert state["episodes"] == full[1]["episode"] == 24
    assert state["score_stats"][0] == full[0]["objective/scores"] and state["score_stats"][1] > 0  # step 1's μ₀, σ₀
    _, resumed = _train(tiny_lm, config, checkpoint_dir=tmp_path)
    assert resumed[2]["objective/kl_coef"] == full[2]["objective/kl_coef"]  # not the configured 0.1 again
    assert resumed[2]["episode"] == full[2]["episode"] == 32  # not 8: the count goes on
    assert resumed == full


def test_eval_fn_and_callback_cadence(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    trained, calls = copy.deepcopy(policy), []
    config = _config(steps=3, eval_every=2, log_every=2)
    eval_fn = make_eval_fn(trained, tokenizer, PROMPTS, lowercase_share, policy, GEN, seed=config.seed)
    _, metrics = train_ppo(trained, copy.deepcopy(policy), tokenizer, PROMPTS * 4, lowercase_share, config, GEN,
                           callback=lambda step, row: calls.append(step), eval_fn=eval_fn)
    assert calls == [2, 3]
    assert ["eval/reward" in row for row in metrics] == [False, True, True]
    assert {"eval/reward", "eval/kl", "eval/kl_sampled", "eval/length"} <= set(metrics[-1])
    assert len(eval_fn.samples) == len(PROMPTS)


@pytest.mark.parametrize("cls, field, value", [
    *((PPOConfig, field, value) for field, value in (
        ("lr", 0.0), ("batch_size", 0), ("mini_batch_size", 0), ("gamma", 1.5), ("lam", -0.1), ("kl_coef", -1.0),
        ("target_kl", 0.0), ("cliprange", 0), ("steps", 0), ("missing_eos_penalty", math.nan))),
    (Generation, "temperature", 0.0), (Generation, "max_new_tokens", 0)])
def test_config_rejects_bad_values_naming_the_field(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_config_from_preset_and_bad_inputs(tiny_lm):
    for preset in PRESETS.values():
        assert isinstance(preset.ppo, PPOConfig) and isinstance(preset.generation, Generation)
        config = dataclasses.replace(preset.ppo, seed=3)
        assert (config.steps, config.batch_size, config.seed) == (preset.ppo.steps, preset.ppo.batch_size, 3)
    assert get_preset("ci", {"ppo.steps": 5}, verbose=False).ppo.steps == 5
    with pytest.raises(ValueError, match="ppo.beta"):
        get_preset("ci", {"ppo.beta": 1}, verbose=False)
    with pytest.raises(ValueError, match="generation.max_new_tokens"):
        get_preset("ci", {"max_new_tokens": 8}, verbose=False)  # sampling is no longer PPO's
    policy, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="prompts"):
        train_ppo(policy, policy, tokenizer, [], lowercase_share, _config(), GEN)
