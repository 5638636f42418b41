"""Tests for dpo_edu.toy: the exact optimum of the KL-regularised objective on finite bandits.

Reference values are computed independently in NumPy (brute force over the simplex, hand
formulas), never by re-running the library's own code path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_edu import toy


def _np_objective(pi: np.ndarray, ref: np.ndarray, reward: np.ndarray, beta: float) -> np.ndarray:
    """J(π) = Σ π r − β Σ π log(π/π_ref) with 0 log 0 = 0, in NumPy, over the last axis."""
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_terms = np.where(pi > 0, pi * (np.log(pi) - np.log(ref)), 0.0)
    return (pi * reward).sum(-1) - beta * kl_terms.sum(-1)


def _np_log_partition(ref: np.ndarray, reward: np.ndarray, beta: float) -> np.ndarray:
    """log Σ_y π_ref(y) exp(r(y)/β), with the max subtracted by hand for stability."""
    with np.errstate(divide="ignore"):
        a = np.log(ref) + reward / beta
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]


def _dirichlet(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    return torch.from_numpy(rng.dirichlet(np.ones(k), size=n))


# --------------------------------------------------------------------------- Bandit and random_bandit


def test_random_bandit_is_float64_valid_and_reproducible():
    """random_bandit gives float64 (prompts, responses) tensors, ref rows sum to 1, same seed → same problem."""
    a = toy.random_bandit(n_prompts=3, n_responses=5, seed=7)
    b = toy.random_bandit(n_prompts=3, n_responses=5, seed=7)
    c = toy.random_bandit(n_prompts=3, n_responses=5, seed=8)
    assert a.ref.dtype == torch.float64 and a.reward.dtype == torch.float64
    assert a.ref.shape == (3, 5) and a.reward.shape == (3, 5)
    assert (a.n_prompts, a.n_responses) == (3, 5)
    assert torch.all(a.ref > 0)
    np.testing.assert_allclose(a.ref.sum(-1).numpy(), np.ones(3), atol=1e-12)
    assert torch.equal(a.ref, b.ref) and torch.equal(a.reward, b.reward)
    assert not torch.equal(a.reward, c.reward)


def test_random_bandit_reward_scale_scales_only_the_reward():
    """reward_scale multiplies r (same seed) and leaves π_ref unchanged."""
    a = toy.random_bandit(2, 4, reward_scale=1.0, seed=3)
    b = toy.random_bandit(2, 4, reward_scale=2.5, seed=3)
    assert torch.equal(a.ref, b.ref)
    torch.testing.assert_close(b.reward, 2.5 * a.reward, rtol=1e-15, atol=0)


def test_bandit_rejects_bad_inputs_naming_the_argument():
    """Bandit validates: shape mismatch, ref rows not summing to one, NaN reward."""
    ref = torch.tensor([[0.5, 0.5], [0.3, 0.7]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shapes must match.*ref \(2, 2\).*reward \(2, 3\)"):
        toy.Bandit(ref=ref, reward=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ref row \(1,\) sums to 0\.9"):
        toy.Bandit(ref=torch.tensor([[0.5, 0.5], [0.3, 0.6]], dtype=torch.float64), reward=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"reward has a non-finite value nan at index \(0, 1\)"):
        toy.Bandit(ref=ref, reward=torch.tensor([[0.0, float("nan")], [0.0, 0.0]], dtype=torch.float64))


# --------------------------------------------------------------------------- optimal_policy vs brute force


@pytest.mark.parametrize("beta", [0.1, 0.7, 5.0])
def test_optimal_policy_matches_brute_force_two_responses(beta):
    """For 2 responses, π* is the argmax of J over a 2001-point grid of the simplex (to one grid step)."""
    bandit = toy.random_bandit(n_prompts=3, n_responses=2, reward_scale=1.5, seed=11)
    ref, reward = bandit.ref.numpy(), bandit.reward.numpy()
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta).numpy()
    p = np.linspace(0.0, 1.0, 2001)
    grid = np.stack([p, 1.0 - p], axis=-1)  # (2001, 2), includes both vertices
    h = p[1] - p[0]
    for x in range(3):
        values = _np_objective(grid, ref[x], reward[x], beta)
        best = grid[values.argmax()]
        # J is strictly concave in p, so its grid maximiser is one of the two points bracketing p*.
        assert abs(best[0] - pi_star[x, 0]) <= h + 1e-12
        # The grid never beats the closed-form maximum (Gibbs): max J = β log Z.
        assert values.max() <= beta * _np_log_partition(ref[x], reward[x], beta) + 1e-12


@pytest.mark.parametrize("beta", [0.3, 2.0])
def test_optimal_policy_matches_brute_force_three_responses(beta):
    """For 3 responses, π* is the argmax of J over a triangular grid (step 1/300) of the simplex."""
    n = 300
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    grid = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=-1) / n  # (45451, 3)
    h = 1.0 / n
    bandit = toy.random_bandit(n_prompts=3, n_responses=3, seed=5)
    ref, reward = bandit.ref.numpy(), bandit.reward.numpy()
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta).numpy()
    for x in range(3):
        values = _np_objective(grid, ref[x], reward[x], beta)
        best = grid[values.argmax()]
        # The grid maximiser minimises KL(π‖π*) over the grid; it lies within a couple of steps of π*.
        assert np.abs(best - pi_star[x]).max() <= 2 * h
        bound = beta * _np_log_partition(ref[x], reward[x], beta)
        assert values.max() <= bound + 1e-12
        # ...and comes within β χ²(rounded π* ‖ π*) ≤ β Σ h²/π*_y of it (KL ≤ χ², |δ_y| ≤ h when rounding).
        assert values.max() >= bound - beta * (h**2 / pi_star[x]).sum()


def test_optimal_policy_is_a_distribution_invariant_to_per_prompt_reward_shifts():
    """π* rows sum to 1, and adding any f(x) to r(x, ·) leaves π* unchanged (Z absorbs it)."""
    bandit = toy.random_bandit(4, 6, seed=2)
    shift = torch.tensor([[-3.0], [0.0], [1.5], [100.0]], dtype=torch.float64)
    a = toy.optimal_policy(bandit.ref, bandit.reward, 0.4)
    b = toy.optimal_policy(bandit.ref, bandit.reward + shift, 0.4)
    np.testing.assert_allclose(a.sum(-1).numpy(), np.ones(4), atol=1e-12)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_optimal_policy_hand_value():
    """π* = π_ref e^{r/β} / Z on a two-response example computed by hand."""
    ref = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    reward = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    beta = 0.5
    a, b = 0.25 * math.exp(2.0), 0.75
    expected = [a / (a + b), b / (a + b)]
    np.testing.assert_allclose(toy.optimal_policy(ref, reward, beta).numpy()[0], expected, rtol=1e-14)
    np.testing.assert_allclose(toy.log_partition(ref, reward, beta).numpy(), [math.log(a + b)], rtol=1e-14)


def test_log_partition_matches_numpy():
    """log Z(x) agrees with an independent NumPy log-sum-exp, including a zero-probability response."""
    bandit = toy.random_bandit(3, 5, seed=9)
    ref = bandit.ref.clone()
    ref[0] = torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    for beta in [0.05, 1.0, 20.0]:
        np.testing.assert_allclose(
            toy.log_partition(ref, bandit.reward, beta).numpy(),
            _np_log_partition(ref.numpy(), bandit.reward.numpy(), beta),
            rtol=1e-12,
            atol=1e-12,
        )


# --------------------------------------------------------------------------- objective and Gibbs


@pytest.mark.parametrize("beta", [0.05, 1.0, 10.0])
def test_objective_at_optimum_equals_beta_log_partition(beta):
    """J(π*) = β log Z(x) for every prompt (the maximum of the KL-regularised objective)."""
    bandit = toy.random_bandit(4, 6, reward_scale=2.0, seed=1)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)
    value = toy.objective(pi_star, bandit.ref, bandit.reward, beta)
    expected = beta * _np_log_partition(bandit.ref.numpy(), bandit.reward.numpy(), beta)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("beta", [0.2, 3.0])
def test_objective_gap_is_beta_kl_to_optimum(beta):
    """For random π (one with an exact zero), J(π) = β log Z − β KL(π ‖ π*), and J(π) ≤ J(π*)."""
    bandit = toy.random_bandit(5, 4, seed=4)
    rng = np.random.default_rng(0)
    policy = _dirichlet(rng, 5, 4)
    policy[2] = torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta).numpy()
    ref, reward, pi = bandit.ref.numpy(), bandit.reward.numpy(), policy.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_to_star = np.where(pi > 0, pi * (np.log(pi) - np.log(pi_star)), 0.0).sum(-1)
    value = toy.objective(policy, bandit.ref, bandit.reward, beta).numpy()
    np.testing.assert_allclose(value, beta * _np_log_partition(ref, reward, beta) - beta * kl_to_star, atol=1e-12)
    np.testing.assert_allclose(value, _np_objective(pi, ref, reward, beta), atol=1e-12)
    assert np.all(value < beta * _np_log_partition(ref, reward, beta))


def test_small_beta_gives_argmax_one_hot():
    """β → 0: π* puts all its mass on the highest-reward response of each prompt."""
    bandit = toy.random_bandit(4, 5, seed=6)
    sorted_r = bandit.reward.sort(-1).values
    gap = float((sorted_r[:, -1] - sorted_r[:, -2]).min())
    beta = gap / 60  # the runner-up is suppressed by at least e^-60 · (π_ref ratio)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)
    one_hot = torch.nn.functional.one_hot(bandit.reward.argmax(-1), 5).double()
    torch.testing.assert_close(pi_star, one_hot, rtol=0, atol=1e-20)


def test_large_beta_gives_reference():
    """β → ∞: π* → π_ref, with |π* − π_ref| of order |r|/β."""
    bandit = toy.random_bandit(4, 5, seed=6)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, 1e9)
    torch.testing.assert_close(pi_star, bandit.ref, rtol=0, atol=1e-8)


def test_optimal_policy_rejects_bad_beta_and_reference():
    """optimal_policy checks β > 0 and that π_ref rows are distributions."""
    bandit = toy.random_bandit(2, 3)
    for beta in [0.0, -1.0, float("inf"), float("nan")]:
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            toy.optimal_policy(bandit.ref, bandit.reward, beta)
    with pytest.raises(ValueError, match=r"ref has a negative probability"):
        toy.optimal_policy(torch.tensor([[1.5, -0.5]]), torch.zeros(1, 2), 1.0)
    with pytest.raises(ValueError, match="beta"):
        toy.log_partition(bandit.ref, bandit.reward, 0.0)


# --------------------------------------------------------------------------- KL, expected reward


def test_kl_divergence_hand_values_with_zero_probability():
    """KL against hand formulas, with 0 log 0 = 0 for a response the policy never takes."""
    policy = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.8, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.4, 0.1]], dtype=torch.float64)
    expected = [
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.5),
        0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.4),
    ]
    np.testing.assert_allclose(toy.kl_divergence(policy, ref).numpy(), expected, rtol=1e-14)


def test_kl_divergence_is_nonnegative_zero_at_equality_infinite_off_support():
    """Gibbs: KL ≥ 0 with equality iff π = π_ref; KL = +∞ when π puts mass where π_ref has none."""
    rng = np.random.default_rng(1)
    p, q = _dirichlet(rng, 200, 4), _dirichlet(rng, 200, 4)
    assert torch.all(toy.kl_divergence(p, q) > 0)
    torch.testing.assert_close(toy.kl_divergence(p, p), torch.zeros(200, dtype=torch.float64), rtol=0, atol=1e-15)
    inf = toy.kl_divergence(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isinf(inf).all() and (inf > 0).all()


def test_kl_divergence_gradient_is_finite_at_zero_probability():
    """Backprop through KL at a π with an exact zero stays finite and equals log(π/π_ref) + 1 on the support."""
    policy = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    toy.kl_divergence(policy, ref).backward()
    assert torch.isfinite(policy.grad).all()
    np.testing.assert_allclose(policy.grad[[0, 2]].numpy(), [math.log(2.0) + 1, 1.0], rtol=1e-14)
    # Through a softmax with a −∞ logit (a response π_ref never gives) as the tabular trainers do:
    logits = torch.tensor([0.0, -math.inf, 0.3], dtype=torch.float64, requires_grad=True)
    toy.kl_divergence(logits.softmax(-1), ref).backward()
    assert torch.isfinite(logits.grad).all()


def test_expected_reward_hand_value():
    """E_π[r] = Σ π r, per prompt."""
    policy = torch.tensor([[0.1, 0.9], [1.0, 0.0]], dtype=torch.float64)
    reward = torch.tensor([[2.0, -1.0], [3.0, 7.0]], dtype=torch.float64)
    np.testing.assert_allclose(toy.expected_reward(policy, reward).numpy(), [0.2 - 0.9, 3.0], rtol=1e-14)
    with pytest.raises(ValueError, match="shapes must match"):
        toy.expected_reward(policy, reward[:, :1])


# --------------------------------------------------------------------------- implicit reward, spread, frontier


@pytest.mark.parametrize("beta", [0.1, 1.0, 4.0])
def test_implicit_reward_of_optimum_is_reward_minus_beta_log_partition(beta):
    """β log π*/π_ref − r = −β log Z(x): the same constant for every response of a prompt (paper Eq. 5)."""
    bandit = toy.random_bandit(4, 6, seed=12)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)
    diff = toy.implicit_reward(pi_star, bandit.ref, beta) - bandit.reward
    expected = -beta * _np_log_partition(bandit.ref.numpy(), bandit.reward.numpy(), beta)
    np.testing.assert_allclose(diff.numpy(), np.repeat(expected[:, None], 6, axis=1), atol=1e-10)
    assert float(toy.spread_per_prompt(diff).max()) < 1e-10


def test_implicit_reward_hand_value():
    """r̂ = β (log π − log π_ref) on numbers computed by hand."""
    policy = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    ref = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    np.testing.assert_allclose(
        toy.implicit_reward(policy, ref, 0.5).numpy()[0], [0.5 * math.log(2.0), 0.5 * math.log(1 / 3)], rtol=1e-14
    )


def test_spread_per_prompt_hand_value():
    """spread = max − min per row, zero on a constant row."""
    values = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0], [-1.0, -4.0, 0.5]])
    assert toy.spread_per_prompt(values).tolist() == [2.0, 0.0, 4.5]


def test_reward_kl_curve_is_monotone_and_has_the_right_limits():
    """As β grows, KL(π*‖π_ref) and E_{π*}[r] both strictly decrease; small β → mean max r, large β → E_ref[r]."""
    bandit = toy.random_bandit(3, 5, seed=0)
    betas = torch.logspace(-2, 3, 25, dtype=torch.float64)
    kls, rewards = toy.reward_kl_curve(bandit, betas)
    assert kls.shape == rewards.shape == (25,)
    assert torch.all(kls[1:] < kls[:-1])
    assert torch.all(rewards[1:] < rewards[:-1])
    ref, reward = bandit.ref.numpy(), bandit.reward.numpy()
    assert rewards[0].item() == pytest.approx(reward.max(-1).mean(), abs=1e-3)
    assert rewards[-1].item() == pytest.approx((ref * reward).sum(-1).mean(), abs=1e-2)
    assert kls[-1].item() < 1e-5
    # One point against NumPy: π* by hand, then mean KL and mean reward.
    beta = float(betas[12])
    w = ref * np.exp(reward / beta)
    pi = w / w.sum(-1, keepdims=True)
    assert kls[12].item() == pytest.approx((pi * np.log(pi / ref)).sum(-1).mean(), rel=1e-10)
    assert rewards[12].item() == pytest.approx((pi * reward).sum(-1).mean(), rel=1e-10)


def test_the_exact_quantities_refuse_what_is_not_a_distribution():
    """Issue 15: KL = 1.05, nan and −inf came back from rows that do not sum to one."""
    ref = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    reward = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    off = torch.tensor([[0.7, 0.5]], dtype=torch.float64)  # sums to 1.2
    calls = [("policy", lambda: toy.kl_divergence(off, ref)),
             ("ref", lambda: toy.kl_divergence(ref, off)),
             ("policy", lambda: toy.expected_reward(off, reward)),
             ("policy", lambda: toy.objective(off, ref, reward, 1.0)),
             ("ref", lambda: toy.log_partition(off, reward, 1.0)),
             ("policy", lambda: toy.implicit_reward(off, ref, 1.0))]
    for argument, call in calls:  # the error names the argument and the row
        with pytest.raises(ValueError, match=rf"^{argument} row \(0,\) sums to 1.200000, not 1"):
            call()
    with pytest.raises(ValueError, match=r"reward has a non-finite value nan at index \(0, 1\)"):
        toy.expected_reward(ref, torch.tensor([[1.0, math.nan]], dtype=torch.float64))
    with pytest.raises(ValueError, match="shapes must match"):
        toy.log_partition(ref, reward[:, :1], 1.0)
    assert toy.kl_divergence(ref, ref).item() == 0.0  # a valid pair still works
