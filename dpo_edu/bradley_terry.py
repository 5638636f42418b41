"""Bradley–Terry preferences: from a hidden reward to comparisons, and back by maximum likelihood.

The model (Bradley & Terry, 1952; DPO paper, Eq. 1):

    p(i ≻ j) = exp(r_i) / (exp(r_i) + exp(r_j)) = σ(r_i − r_j)

depends only on differences of rewards, so r is identifiable only up to a constant shift.
Fitting r is logistic regression on the features e_i − e_j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .losses import bradley_terry_loss
from .toy import one_thread
from .validate import check_finite, check_positive, check_same_shape


@dataclass(frozen=True)
class Comparisons:
    """Outcomes of pairwise comparisons: item ``winners[k]`` was preferred to ``losers[k]``."""

    winners: Tensor
    losers: Tensor

    def __len__(self) -> int:
        return len(self.winners)


def preference_probability(reward_a: Tensor, reward_b: Tensor) -> Tensor:
    """p(a ≻ b) = σ(r_a − r_b)."""
    return torch.sigmoid(reward_a - reward_b)


def sample_comparisons(reward: Tensor, n: int, seed: int = 0) -> Comparisons:
    """Draw ``n`` comparisons: a uniform pair of distinct items, then a Bradley–Terry coin flip."""
    check_finite("reward", reward)
    if reward.dim() != 1 or len(reward) < 2:
        raise ValueError(f"reward must be a 1-D tensor of at least 2 items, "
                         f"got shape {tuple(reward.shape)}")
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    k = len(reward)
    first = torch.randint(k, (n,), generator=generator)
    second = (first + torch.randint(1, k, (n,), generator=generator)) % k  # uniform, ≠ first
    first_wins = torch.rand(n, generator=generator, dtype=reward.dtype) < preference_probability(
        reward[first], reward[second]
    )
    return Comparisons(
        winners=torch.where(first_wins, first, second),
        losers=torch.where(first_wins, second, first),
    )


def negative_log_likelihood(reward: Tensor, comparisons: Comparisons) -> Tensor:
    """Mean −log σ(r_winner − r_loser) over the comparisons (the Bradley–Terry loss)."""
    return bradley_terry_loss(reward[comparisons.winners], reward[comparisons.losers])


def fit_bradley_terry(
    comparisons: Comparisons,
    n_items: int,
    l2: float = 1e-4,
    max_iter: int = 200,
) -> Tensor:
    """Maximum-likelihood rewards, centred to mean zero.

    Minimises  Σ_k −log σ(r_{w_k} − r_{l_k}) + (l2/2) ‖r‖²  with L-BFGS in float64; the small
    ridge keeps the fit finite when an item never loses (or never wins).
    """
    check_same_shape(winners=comparisons.winners, losers=comparisons.losers)
    check_positive("l2", l2)
    top = int(torch.cat([comparisons.winners, comparisons.losers]).max())
    if top >= n_items:
        raise ValueError(f"comparisons name item {top}, but n_items is {n_items}")
    reward = torch.zeros(n_items, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [reward], max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
        line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = (len(comparisons) * negative_log_likelihood(reward, comparisons)
                + 0.5 * l2 * reward.pow(2).sum())
        loss.backward()
        return loss

    with one_thread():
        optimizer.step(closure)
    fitted = reward.detach()
    return fitted - fitted.mean()


def recovery_error(fitted: Tensor, true: Tensor) -> float:
    """RMS error between rewards after centring both (the shift is not identifiable)."""
    check_same_shape(fitted=fitted, true=true)
    return float(((fitted - fitted.mean()) - (true - true.mean())).pow(2).mean().sqrt())


@dataclass(frozen=True)
class Recovery:
    """One experiment: a hidden reward, comparisons sampled from it, and the fit."""

    true: Tensor
    fitted: Tensor
    n_comparisons: int
    error: float


def recovery_experiment(n_items: int, n_comparisons: int, reward_scale: float = 1.0,
                        seed: int = 0) -> Recovery:
    """Hidden reward r ~ N(0, reward_scale²) on ``n_items``, ``n_comparisons`` samples, MLE fit."""
    check_positive("reward_scale", reward_scale)
    generator = torch.Generator().manual_seed(seed)
    true = reward_scale * torch.randn(n_items, generator=generator, dtype=torch.float64)
    comparisons = sample_comparisons(true, n_comparisons, seed=seed + 1)
    fitted = fit_bradley_terry(comparisons, n_items)
    return Recovery(true=true, fitted=fitted, n_comparisons=n_comparisons,
                    error=recovery_error(fitted, true))


def error_curve(n_items: int, counts: list[int], reward_scale: float = 1.0, repeats: int = 5,
                seed: int = 0) -> Tensor:
    """Median recovery error over ``repeats`` seeds for each number of comparisons in ``counts``."""
    errors = [
        [recovery_experiment(n_items, n, reward_scale, seed=seed + 100 * r).error
         for r in range(repeats)]
        for n in counts
    ]
    return torch.tensor(errors, dtype=torch.float64).median(dim=1).values
