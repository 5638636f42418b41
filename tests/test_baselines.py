"""The DPO paper's baselines against hand computations: Preferred-FT's loss is the chosen tokens' mean NLL
(EOS where the rule puts it) and ignores the rejected responses; Unlikelihood's loss is its formula token by
token and its gradient pushes every rejected token down; both trainers reach every weight and lower their loss;
Best-of-N picks what a hand loop picks and its measured KL matches log N − (N − 1)/N for continuous scores."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from dpo_edu import baselines
from dpo_edu.baselines import (PreferredFTConfig, UnlikelihoodConfig, best_of_n, chosen_token_logps,
                               log_one_minus, pair_token_logps, preferred_ft_loss, train_preferred_ft,
                               train_unlikelihood, unlikelihood_loss)
from dpo_edu.dpo import DPOConfig, tokenize_pairs

PROMPTS = ["The movie was", "I", "This film is a", "Acting", "What a", "Not", "The plot", "One of the best"]
# A chosen that ended (EOS scored under the "ended" rule) and one that was cut (no EOS), rejected the other way
HAND_PAIRS = [
    {"prompt": "The movie was", "chosen": " great fun", "rejected": " dull", "chosen_ended": True,
     "rejected_ended": False},
    {"prompt": "I", "chosen": " loved it and", "rejected": " hated every bad minute", "chosen_ended": False,
     "rejected_ended": True},
    {"prompt": "What a", "chosen": " superb film", "rejected": " waste", "chosen_ended": True, "rejected_ended": True},
]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen completions praise, rejected ones pan, of random lengths; each says whether it ended."""
    rng = random.Random(seed)

    def words(pool):
        return " " + " ".join(rng.choice(pool) for _ in range(rng.randint(1, 5)))

    return [{"prompt": rng.choice(PROMPTS), "chosen": words(["great", "wonderful", "superb", "fun"]),
             "rejected": words(["awful", "boring", "dull", "bad"]), "chosen_ended": rng.random() < 0.5,
             "rejected_ended": rng.random() < 0.5} for _ in range(n)]


def _hand_logps(model, tokenizer, prompt: str, response: str, eos: bool) -> list[float]:
    """log π(y_t | x, y_<t) of each response token, one unpadded forward pass per token, in float64."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * eos
    out = []
    with torch.no_grad():
        for t in range(len(prompt_ids), len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            out.append(torch.log_softmax(logits, -1)[ids[t]].item())
    return out


def _eos(pair: dict, side: str, append_eos: str) -> bool:
    """Whether the rule scores an EOS after this response ("auto" reads the records' flags)."""
    return {"auto": pair[f"{side}_ended"], "ended": pair[f"{side}_ended"], "always": True, "never": False}[append_eos]


def _settings(**changes) -> dict:
    return {"lr": 1e-3, "batch_size": 4, "steps": 1, "max_length": 48, "progress": False, "log_every": 1, **changes}


# --- Preferred-FT ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("append_eos", ["auto", "always", "never"])
def test_preferred_ft_loss_is_the_mean_nll_of_the_chosen_tokens(tiny_lm, append_eos, one_thread):
    ref, tokenizer = tiny_lm
    config = PreferredFTConfig(**_settings(batch_size=len(HAND_PAIRS), append_eos=append_eos))
    _, metrics = train_preferred_ft(copy.deepcopy(ref), tokenizer, HAND_PAIRS, config)
    per_pair = [_hand_logps(ref, tokenizer, p["prompt"], p["chosen"], _eos(p, "chosen", append_eos))
                for p in HAND_PAIRS]
    tokens = sum(map(len, per_pair))
    words = sum(len(tokenizer(p["chosen"], add_special_tokens=False)["input_ids"]) for p in HAND_PAIRS)
    assert tokens == words + {"auto": 2, "always": 3, "never": 0}[append_eos]  # EOS after the ended chosen only
    assert metrics[0]["tokens"] == tokens  # the prompts are not scored
    assert metrics[0]["loss"] == pytest.approx(-sum(map(sum, per_pair)) / tokens, rel=1e-5)  # token-weighted mean
    assert metrics[0]["logps/chosen"] == pytest.approx(sum(map(sum, per_pair)) / len(HAND_PAIRS), rel=1e-5)


def test_preferred_ft_scores_what_dpo_tokenizes_a_cut_chosen_has_no_eos(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    pair = {**HAND_PAIRS[0], "chosen": " great great great great great great"}  # ended, but cut by max_length
    prompt_len = len(tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"])
    config = PreferredFTConfig(**_settings(batch_size=1, max_length=prompt_len + 3))
    _, metrics = train_preferred_ft(copy.deepcopy(ref), tokenizer, [pair], config)
    kept = _hand_logps(ref, tokenizer, pair["prompt"], pair["chosen"], eos=False)[:3]  # its first 3 tokens, no EOS
    assert metrics[0]["tokens"] == 3
    assert metrics[0]["loss"] == pytest.approx(-sum(kept) / 3, rel=1e-5)


def test_rejected_responses_do_not_touch_preferred_ft(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    pairs = _pairs(8)
    other = [{**p, "rejected": " a completely different and much longer rejected text",
              "rejected_ended": not p["rejected_ended"]} for p in pairs]
    config = PreferredFTConfig(**_settings(steps=3, lr=1e-2))
    one, m1 = train_preferred_ft(copy.deepcopy(ref), tokenizer, pairs, config)
    two, m2 = train_preferred_ft(copy.deepcopy(ref), tokenizer, other, config)
    assert [m["loss"] for m in m1] == [m["loss"] for m in m2]
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        assert torch.equal(a, b), name  # same gradients at every step: the updates are bit for bit equal


# --- Unlikelihood ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_unlikelihood_loss_is_its_formula_token_by_token(tiny_lm, alpha, one_thread):
    ref, tokenizer = tiny_lm
    config = UnlikelihoodConfig(**_settings(batch_size=len(HAND_PAIRS), alpha=alpha))
    _, metrics = train_unlikelihood(copy.deepcopy(ref), tokenizer, HAND_PAIRS, config)
    likelihood, unlikelihood, chosen_sums, rejected_sums = [], [], [], []
    for p in HAND_PAIRS:
        chosen = _hand_logps(ref, tokenizer, p["prompt"], p["chosen"], p["chosen_ended"])
        rejected = _hand_logps(ref, tokenizer, p["prompt"], p["rejected"], p["rejected_ended"])
        likelihood.append(-sum(chosen) / len(chosen))  # −(1/|y_w|) Σ log π(y_w,t)
        unlikelihood.append(-sum(math.log1p(-math.exp(lp)) for lp in rejected) / len(rejected))  # log(1 − π)
        chosen_sums.append(sum(chosen))
        rejected_sums.append(sum(rejected))
    expected = sum(w + alpha * l for w, l in zip(likelihood, unlikelihood)) / len(HAND_PAIRS)
    assert metrics[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics[0]["loss/likelihood"] == pytest.approx(sum(likelihood) / 3, rel=1e-5)
    assert metrics[0]["loss/unlikelihood"] == pytest.approx(sum(unlikelihood) / 3, rel=1e-5)
    assert metrics[0]["logps/chosen"] == pytest.approx(sum(chosen_sums) / 3, rel=1e-5)
    assert metrics[0]["logps/rejected"] == pytest.approx(sum(rejected_sums) / 3, rel=1e-5)
    if alpha == 0:  # α = 0: the likelihood term alone
        assert metrics[0]["loss"] == pytest.approx(sum(likelihood) / 3, rel=1e-6)


def test_unlikelihood_gradient_pushes_every_rejected_token_down():
    # two pairs, chosen and rejected of 3 and 2 tokens (0 is padding); the gradient against a formula
    probs_w = torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.6, 0.0]], dtype=torch.float64)
    probs_l = torch.tensor([[0.4, 0.999, 0.0], [0.05, 0.7, 0.8]], dtype=torch.float64)
    mask_w, mask_l = probs_w > 0, probs_l > 0
    chosen = torch.where(mask_w, probs_w.clamp(min=1e-9).log(), 0.0).requires_grad_()
    rejected = torch.where(mask_l, probs_l.clamp(min=1e-9).log(), 0.0).requires_grad_()
    alpha = 0.5
    loss, _ = unlikelihood_loss(chosen, mask_w, rejected, mask_l, alpha)
    loss.backward()
    n_w, n_l = mask_w.sum(-1, keepdim=True), mask_l.sum(-1, keepdim=True)
    # ∂L/∂log π(y_l,t) = α p / ((1 − p) |y_l| P) > 0: a descent step lowers every log π(y_l,t)
    expected_l = torch.where(mask_l, alpha * probs_l / ((1 - probs_l) * n_l * 2), 0.0)
    torch.testing.assert_close(rejected.grad, expected_l)
    assert (rejected.grad[mask_l] > 0).all()
    torch.testing.assert_close(chosen.grad, torch.where(mask_w, -1 / (n_w * 2.0), 0.0).double())  # −1/(|y_w| P)


def test_an_unlikelihood_step_lowers_the_rejected_tokens_probabilities(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy = copy.deepcopy(ref)
    rows, _ = tokenize_pairs(tokenizer, _pairs(6, seed=1), max_length=48)

    def rejected_term():  # the α part alone (the chosen mask emptied); π(y_l,t) at the rejected tokens
        chosen, mask_w, rejected, mask_l = pair_token_logps(policy, tokenizer, rows)
        loss, _ = unlikelihood_loss(chosen, torch.zeros_like(mask_w), rejected, mask_l, 1.0)
        return loss, rejected.detach().exp() * mask_l

    loss, before = rejected_term()
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(policy.parameters(), grads):
            p -= 1e-2 * g / norm  # a small gradient-descent step
        loss_after, after = rejected_term()
    assert loss_after < loss
    # each token is pushed in proportion to p/(1 − p): every pair's Σ_t π(y_l,t) and its likeliest token fall
    assert (after.sum(-1) < before.sum(-1)).all(), (before.sum(-1), after.sum(-1))
    top = before.argmax(-1, keepdim=True)
    assert (after.gather(-1, top) < before.gather(-1, top)).all()


def test_log_one_minus_matches_float64_and_stays_finite_near_one():
    p = torch.tensor([1e-12, 1e-6, 0.1, 0.5, 0.7, 0.99, 1 - 1e-4], dtype=torch.float64)
    logp = p.log().float()
    exact = torch.log1p(-logp.double().exp())  # at the float32 log-probs themselves
    torch.testing.assert_close(log_one_minus(logp).double(), exact, rtol=1e-5, atol=1e-12)
    near = torch.tensor([0.0, -1e-9, -1e-7, -float("inf")], requires_grad=True)  # p = 1, 1 − 1e-9, …, p = 0
    values = log_one_minus(near)
    values.sum().backward()
    floor = math.log(baselines.ONE_MINUS_FLOOR)
    assert values[:3].tolist() == pytest.approx([floor] * 3, rel=1e-4) and values[3].item() == 0.0
    assert torch.isfinite(near.grad).all()


# --- both trainers --------------------------------------------------------------------------------------------------


def _loss_on(policy, tokenizer, rows, config):
    with torch.no_grad():
        if isinstance(config, UnlikelihoodConfig):
            return unlikelihood_loss(*pair_token_logps(policy, tokenizer, rows), config.alpha)[0].item()
        return preferred_ft_loss(*chosen_token_logps(policy, tokenizer, rows))[0].item()


@pytest.mark.parametrize("train, kind", [(train_preferred_ft, PreferredFTConfig),
                                         (train_unlikelihood, UnlikelihoodConfig)])
def test_trainers_change_every_parameter_and_lower_their_loss(tiny_lm, train, kind, one_thread):
    ref, tokenizer = tiny_lm
    pairs, config = _pairs(16), kind(**_settings(lr=1e-2, steps=8, batch_size=8))
    rows, _ = tokenize_pairs(tokenizer, pairs, config.max_length)
    before = _loss_on(ref, tokenizer, rows, config)
    policy, metrics = train(copy.deepcopy(ref), tokenizer, pairs, config)
    for (name, p), q in zip(policy.named_parameters(), ref.parameters()):
        assert not torch.equal(p, q), f"{name} did not change"
    assert _loss_on(policy, tokenizer, rows, config) < before - 0.1
    assert len(metrics) == 8 and {"loss", "logps/chosen", "grad_norm", "learning_rate"} <= set(metrics[0])


def test_configs_and_trainers_refuse_bad_input(tiny_lm):
    ref, tokenizer = tiny_lm
    for alpha in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="alpha must be a finite number ≥ 0"):
            UnlikelihoodConfig(alpha=alpha)
    assert UnlikelihoodConfig(alpha=0).alpha == 0
    with pytest.raises(ValueError, match="append_eos must be one of"):
        PreferredFTConfig(append_eos="sometimes")
    with pytest.raises(ValueError, match="max_length must be an int ≥ 2"):
        UnlikelihoodConfig(max_length=1)
    with pytest.raises(ValueError, match="lr must be"):  # TrainConfig's checks run too
        PreferredFTConfig(lr=0)
    with pytest.raises(ValueError, match="config must be a PreferredFTConfig, got UnlikelihoodConfig"):
        train_preferred_ft(ref, tokenizer, HAND_PAIRS, UnlikelihoodConfig())
    with pytest.raises(ValueError, match="config must be a UnlikelihoodConfig, got DPOConfig"):
        train_unlikelihood(ref, tokenizer, HAND_PAIRS, DPOConfig())
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        train_preferred_ft(ref, tokenizer, HAND_PAIRS, PreferredFTConfig(max_length=10_000, progress=False))


# --- Best-of-N ------------------------------------------------------------------------------------------------------


def test_best_of_1_takes_every_sample_at_no_kl():
    rng = np.random.default_rng(0)
    scores, rewards = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    result = best_of_n(scores, rewards, [1])[1]
    np.testing.assert_allclose(result.reward, rewards.mean(1))
    assert (result.kl == 0).all() and result.kl_bound == 0.0  # log 1 + 0 · log F̂


@pytest.mark.parametrize("n", [2, 4, 16])
def test_measured_kl_of_continuous_scores_is_the_formula(n):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=(16, 4096))  # i.i.d. continuous scores: log N − (N − 1)/N is then exact
    result = best_of_n(scores, rng.normal(size=scores.shape), [n])[n]
    assert result.kl_bound == pytest.approx(math.log(n) - (n - 1) / n)
    assert abs(result.kl.mean() - result.kl_bound) < 0.05


def test_best_of_n_picks_what_a_hand_loop_picks():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(3, 12)).astype(float)  # ties: the first top score of a group is picked
    rewards = rng.normal(size=(3, 12))
    ns = (1, 2, 3, 6)
    result = best_of_n(scores, rewards, ns)
    assert list(result) == list(ns)
    for n in ns:
        for i in range(3):
            picked, log_ratios = [], []
            for start in range(0, 12, n):
                best = start
                for j in range(start, start + n):
                    if scores[i, j] > scores[i, best]:
                        best = j
                picked.append(rewards[i, best])
                others = [s for j, s in enumerate(scores[i]) if not start <= j < start + n]  # outside the group
                f_hat = (sum(s <= scores[i, best] for s in others) + 1) / (len(others) + 1)
                log_ratios.append(math.log(n) + (n - 1) * math.log(f_hat))
            assert result[n].reward[i] == pytest.approx(sum(picked) / len(picked)), (n, i)
            assert result[n].kl[i] == pytest.approx(sum(log_ratios) / len(log_ratios)), (n, i)
    assert result[6].kl_bound == pytest.approx(math.log(6) - 5 / 6)
    torch_result = best_of_n(torch.tensor(scores), torch.tensor(rewards), [4])[4]  # tensors are accepted
    np.testing.assert_allclose(torch_result.reward, best_of_n(scores, rewards, [4])[4].reward)


def test_the_measured_kl_stays_under_the_bound_where_the_pooled_estimate_would_not():
    """M = 2N, the fewest samples allowed: the pick's CDF from the other group only. The pooled estimate (its own
    group counted) would read log N at M = N; this one stays near log N − (N − 1)/N on continuous scores."""
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(4000, 16))
    result = best_of_n(scores, scores, [8])[8]
    assert abs(result.kl.mean() - result.kl_bound) < 0.1 and result.kl.mean() < math.log(8) - 0.5


def test_best_of_n_refuses_bad_input():
    scores = np.zeros((2, 12))
    for ns, message in (([0], r"ns\[0\] must be an int ≥ 1, got 0"), ([2, -1], r"ns\[1\] must be an int ≥ 1"),
                        ([2.0], r"ns\[0\] must be an int ≥ 1, got 2.0"),
                        ([4, 5], r"ns\[1\] = 5 must divide the M = 12 samples"),
                        ([12], r"ns\[0\] = 12 must divide the M = 12 samples .* with M ≥ 2N"), ([], "ns is empty")):
        with pytest.raises(ValueError, match=message):
            best_of_n(scores, scores, ns)
    with pytest.raises(ValueError, match=r"rm_scores \(2, 12\) and rewards \(2, 6\) must have the same shape"):
        best_of_n(scores, np.zeros((2, 6)), [2])
    with pytest.raises(ValueError, match=r"rewards must be a non-empty \(prompts, samples\) array, got shape \(12,\)"):
        best_of_n(scores, np.zeros(12), [2])
    bad = scores.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"rm_scores has a non-finite value nan at index \(1, 3\)"):
        best_of_n(bad, scores, [2])
    assert set(best_of_n(scores, scores, np.array([2, 3]))) == {2, 3}  # NumPy integers are ints
