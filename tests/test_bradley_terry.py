"""Tests for dpo_edu.bradley_terry: sampling comparisons from a reward and fitting it back.

The fit is checked against scikit-learn's logistic regression (an independent solver of the
same convex problem), sampling against σ(r_i − r_j) with binomial standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dpo_edu import bradley_terry as bt


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# --------------------------------------------------------------------------- preference_probability


def test_preference_probability_is_the_bradley_terry_ratio():
    """p(a ≻ b) = e^{r_a} / (e^{r_a} + e^{r_b}) and p(a ≻ b) + p(b ≻ a) = 1."""
    a = torch.tensor([0.0, 1.0, -2.0, 3.5], dtype=torch.float64)
    b = torch.tensor([0.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    expected = [math.exp(x) / (math.exp(x) + math.exp(y)) for x, y in zip(a.tolist(), b.tolist())]
    np.testing.assert_allclose(bt.preference_probability(a, b).numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose((bt.preference_probability(a, b) + bt.preference_probability(b, a)).numpy(), 1.0)


# --------------------------------------------------------------------------- sample_comparisons


def test_sample_comparisons_win_frequencies_match_sigmoid_of_reward_gap():
    """Empirical p(i beats j) ≈ σ(r_i − r_j) within 5 binomial standard errors, for every pair."""
    reward = torch.tensor([0.0, 1.0, -0.5, 2.0], dtype=torch.float64)
    n = 60_000
    comps = bt.sample_comparisons(reward, n, seed=1)
    assert len(comps) == n
    assert torch.all(comps.winners != comps.losers)
    w, l = comps.winners.numpy(), comps.losers.numpy()
    for i in range(4):
        for j in range(i + 1, 4):
            wins_i = int(((w == i) & (l == j)).sum())
            wins_j = int(((w == j) & (l == i)).sum())
            n_ij = wins_i + wins_j
            p = _sigmoid(reward[i].item() - reward[j].item())
            se = math.sqrt(p * (1 - p) / n_ij)  # ≈ 0.004 with ~10,000 draws per pair
            assert abs(wins_i / n_ij - p) < 5 * se, (i, j, wins_i / n_ij, p)


def test_sample_comparisons_pairs_are_uniform_over_distinct_items():
    """Each unordered pair of distinct items is drawn with probability 1/C(k, 2) (5 binomial s.e.)."""
    reward = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    n = 40_000
    comps = bt.sample_comparisons(reward, n, seed=2)
    lo = torch.minimum(comps.winners, comps.losers).numpy()
    hi = torch.maximum(comps.winners, comps.losers).numpy()
    p = 1 / 10
    se = math.sqrt(n * p * (1 - p))
    for i in range(5):
        for j in range(i + 1, 5):
            assert abs(int(((lo == i) & (hi == j)).sum()) - n * p) < 5 * se


def test_sample_comparisons_is_reproducible_by_seed():
    """The same seed gives the same comparisons, another seed different ones."""
    reward = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    a, b, c = (bt.sample_comparisons(reward, 200, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.winners, b.winners) and torch.equal(a.losers, b.losers)
    assert not torch.equal(a.winners, c.winners)


def test_sample_comparisons_errors():
    """Bad reward shapes, NaN rewards and n < 1 raise ValueErrors naming the argument."""
    with pytest.raises(ValueError, match=r"reward must be a 1-D tensor.*\(2, 2\)"):
        bt.sample_comparisons(torch.zeros(2, 2), 10)
    with pytest.raises(ValueError, match=r"reward must be a 1-D tensor of at least 2 items.*\(1,\)"):
        bt.sample_comparisons(torch.zeros(1), 10)
    with pytest.raises(ValueError, match=r"n must be ≥ 1, got 0"):
        bt.sample_comparisons(torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"reward has a non-finite value nan at index \(1,\)"):
        bt.sample_comparisons(torch.tensor([0.0, float("nan"), 1.0]), 10)


# --------------------------------------------------------------------------- losses


def test_negative_log_likelihood_hand_value():
    """Mean −log σ(r_w − r_l) over the comparisons, by hand."""
    reward = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    comps = bt.Comparisons(winners=torch.tensor([2, 0]), losers=torch.tensor([1, 2]))
    expected = (-math.log(_sigmoid(1.0)) - math.log(_sigmoid(-2.0))) / 2
    assert bt.negative_log_likelihood(reward, comps).item() == pytest.approx(expected, rel=1e-14)


# --------------------------------------------------------------------------- fit_bradley_terry


def _sklearn_fit(comps: bt.Comparisons, n_items: int, l2: float) -> np.ndarray:
    """The same ridge MLE by scikit-learn.

    Ours:     Σ_k −log σ(r·x_k) + (l2/2)‖r‖²,  x_k = e_{w_k} − e_{l_k}.
    sklearn:  C Σ_rows logloss + ½‖r‖²  (no intercept).
    sklearn needs two classes, so each comparison appears twice: (x_k, 1) and (−x_k, 0). The
    mirrored row's log-loss is −log(1 − σ(−r·x_k)) = −log σ(r·x_k), so the data term doubles:
    C · 2 Σ_k −log σ(r·x_k) + ½‖r‖²  ∝  Σ_k −log σ(r·x_k) + ‖r‖²/(4C).  Equal to ours iff C = 1/(2·l2).
    """
    w, l = comps.winners.numpy(), comps.losers.numpy()
    x = np.zeros((len(w), n_items))
    x[np.arange(len(w)), w] += 1.0
    x[np.arange(len(w)), l] -= 1.0
    features = np.concatenate([x, -x])
    labels = np.concatenate([np.ones(len(w)), np.zeros(len(w))])
    model = LogisticRegression(C=1 / (2 * l2), fit_intercept=False, solver="lbfgs", tol=1e-12, max_iter=10_000)
    model.fit(features, labels)
    return model.coef_[0]


@pytest.mark.parametrize("l2", [1e-3, 0.5, 5.0])
def test_fit_bradley_terry_matches_sklearn_logistic_regression(l2):
    """fit_bradley_terry = scikit-learn's L2 logistic regression on e_w − e_l (C = 1/(2·l2) with mirrored rows)."""
    true = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3, 0.8], dtype=torch.float64)
    comps = bt.sample_comparisons(true, 600, seed=3)
    fitted = bt.fit_bradley_terry(comps, n_items=6, l2=l2)
    reference = _sklearn_fit(comps, 6, l2)
    # The ridge optimum is itself centred (the likelihood's gradient sums to zero over items),
    # so sklearn's un-centred coefficients must agree with our centred fit without any shift.
    assert abs(reference.sum()) < 1e-6
    np.testing.assert_allclose(fitted.numpy(), reference, atol=1e-6)  # measured ≤ 1e-7
    assert fitted.dtype == torch.float64
    assert abs(fitted.sum().item()) < 1e-12


def test_fit_bradley_terry_stays_finite_when_an_item_never_loses():
    """An item that wins every comparison gets a finite, largest reward (the ridge keeps the MLE finite)."""
    comps = bt.Comparisons(
        winners=torch.tensor([0, 0, 0, 1, 2, 1]),
        losers=torch.tensor([1, 2, 1, 2, 1, 2]),
    )
    fitted = bt.fit_bradley_terry(comps, n_items=3, l2=1e-2)
    assert torch.isfinite(fitted).all()
    assert fitted.argmax().item() == 0
    np.testing.assert_allclose(fitted.numpy(), _sklearn_fit(comps, 3, 1e-2), atol=1e-5)


def test_fit_bradley_terry_recovers_the_reward_with_many_comparisons():
    """With 20,000 comparisons of 5 items the fit is within 0.08 RMS of the centred true reward."""
    true = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5], dtype=torch.float64)
    fitted = bt.fit_bradley_terry(bt.sample_comparisons(true, 20_000, seed=4), n_items=5)
    # The inverse Fisher information Σ_ij (n/10) p_ij(1 − p_ij) (e_i − e_j)(e_i − e_j)ᵀ predicts an RMS
    # error of 0.025 here; over 20 seeds the largest seen was 0.042, so 0.08 is > 3 standard errors.
    assert bt.recovery_error(fitted, true) < 0.08


def test_fit_bradley_terry_errors():
    """Items beyond n_items, l2 ≤ 0 and mismatched winners/losers raise ValueErrors naming the argument."""
    comps = bt.Comparisons(winners=torch.tensor([0, 3]), losers=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"comparisons name item 3, but n_items is 3"):
        bt.fit_bradley_terry(comps, n_items=3)
    with pytest.raises(ValueError, match=r"l2 must be a finite number > 0"):
        bt.fit_bradley_terry(comps, n_items=4, l2=0.0)
    with pytest.raises(ValueError, match=r"shapes must match.*winners \(2,\).*losers \(3,\)"):
        bt.fit_bradley_terry(bt.Comparisons(torch.tensor([0, 1]), torch.tensor([1, 0, 1])), n_items=2)


# --------------------------------------------------------------------------- recovery


def test_recovery_error_ignores_shifts_and_is_rms():
    """recovery_error is the RMS after centring: 0 for a shifted copy, hand values otherwise."""
    true = torch.tensor([0.0, 1.0, 2.0, -3.0], dtype=torch.float64)
    assert bt.recovery_error(true + 5.0, true) == pytest.approx(0.0, abs=1e-15)
    # fitted − true = [1, −1, 1, −1] after centring both: RMS 1.
    off_by_one = true + torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    assert bt.recovery_error(off_by_one, true) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"fitted \(3,\).*true \(4,\)"):
        bt.recovery_error(torch.zeros(3), true)


def test_recovery_experiment_is_consistent():
    """recovery_experiment reports the error of its own fit on a hidden reward of the asked size."""
    result = bt.recovery_experiment(n_items=4, n_comparisons=300, reward_scale=2.0, seed=7)
    assert result.true.shape == result.fitted.shape == (4,)
    assert result.n_comparisons == 300
    assert result.error == pytest.approx(bt.recovery_error(result.fitted, result.true), rel=1e-14)
    with pytest.raises(ValueError, match="reward_scale"):
        bt.recovery_experiment(n_items=4, n_comparisons=10, reward_scale=0.0)


def test_error_curve_shrinks_like_one_over_root_n():
    """The median recovery error falls as comparisons grow: 100× the data cuts it by well over 3×."""
    errors = bt.error_curve(n_items=5, counts=[100, 1_000, 10_000], repeats=3, seed=0)
    assert errors.shape == (3,)
    assert torch.all(errors[1:] < errors[:-1])
    # Asymptotically error ∝ 1/√n, i.e. a 10× drop; ask for 3× to leave room for the median of 3.
    assert errors[-1] < errors[0] / 3
