"""Finite "bandit" problems: prompts x × responses y, a reference policy and a reward.

Everything in RLHF that is an expectation over responses becomes a finite sum here,
so the optimum of the KL-regularised objective (DPO paper, §4, Eq. 3–4)

    max_π  E_{y~π(·|x)}[r(x, y)] − β KL(π(·|x) ‖ π_ref(·|x))

can be computed exactly:  π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x).

Tensors are (prompts, responses); a row is one prompt. Computations run in float64.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .validate import check_distribution, check_finite, check_positive, check_same_shape


@contextmanager
def one_thread():
    """Run on one CPU thread: on toy-sized tensors, waking worker threads costs more than the
    arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Bandit:
    """A finite alignment problem: ``ref[x, y] = π_ref(y|x)`` and ``reward[x, y] = r(x, y)``."""

    ref: Tensor
    reward: Tensor

    def __post_init__(self):
        check_same_shape(ref=self.ref, reward=self.reward)
        check_distribution("ref", self.ref)
        check_finite("reward", self.reward)

    @property
    def n_prompts(self) -> int:
        return self.ref.shape[0]

    @property
    def n_responses(self) -> int:
        return self.ref.shape[1]


def random_bandit(
    n_prompts: int = 4,
    n_responses: int = 6,
    reward_scale: float = 1.0,
    seed: int = 0,
) -> Bandit:
    """A reproducible random problem: π_ref = softmax of N(0, 1) logits, r ~ N(0, reward_scale²)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_prompts, n_responses, generator=generator, dtype=torch.float64)
    reward = reward_scale * torch.randn(n_prompts, n_responses, generator=generator,
                                        dtype=torch.float64)
    return Bandit(ref=logits.softmax(-1), reward=reward)


def log_partition(ref: Tensor, reward: Tensor, beta: float) -> Tensor:
    """log Z(x) = log Σ_y π_ref(y|x) exp(r(x, y)/β), one value per prompt."""
    check_same_shape(ref=ref, reward=reward)
    check_distribution("ref", ref)
    check_finite("reward", reward)
    beta = check_positive("beta", beta)
    return torch.logsumexp(ref.log() + reward / beta, dim=-1)


def optimal_policy(ref: Tensor, reward: Tensor, beta: float) -> Tensor:
    """π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x)  (DPO paper, Eq. 4).

    Computed as a softmax of log π_ref + r/β: stable for any β > 0 unless r/β overflows float64.
    """
    check_same_shape(ref=ref, reward=reward)
    check_distribution("ref", ref)
    check_finite("reward", reward)
    beta = check_positive("beta", beta)
    return torch.softmax(ref.log() + reward / beta, dim=-1)


def kl_divergence(policy: Tensor, ref: Tensor) -> Tensor:
    """KL(π ‖ π_ref)(x) = Σ_y π(y|x) log π(y|x)/π_ref(y|x), 0 log 0 = 0; one value per prompt."""
    check_same_shape(policy=policy, ref=ref)
    check_distribution("policy", policy)
    check_distribution("ref", ref)
    support = policy > 0
    # Take logs of 1 off the support: masking NaN terms afterwards would still send NaN gradients.
    log_policy = torch.where(support, policy, torch.ones_like(policy)).log()
    log_ref = torch.where(support, ref, torch.ones_like(ref)).log()
    terms = policy * (log_policy - log_ref)
    return torch.where(support, terms, torch.zeros_like(terms)).sum(-1)


def expected_reward(policy: Tensor, reward: Tensor) -> Tensor:
    """E_{y~π(·|x)}[r(x, y)] = Σ_y π(y|x) r(x, y), one value per prompt."""
    check_same_shape(policy=policy, reward=reward)
    check_distribution("policy", policy)
    check_finite("reward", reward)
    return (policy * reward).sum(-1)


def objective(policy: Tensor, ref: Tensor, reward: Tensor, beta: float) -> Tensor:
    """The KL-regularised objective J(π)(x) = E_π[r] − β KL(π ‖ π_ref), one value per prompt.

    Its maximum is β log Z(x), reached at π* only (Gibbs' inequality):
    J(π) = β log Z − β KL(π ‖ π*).
    """
    beta = check_positive("beta", beta)
    return expected_reward(policy, reward) - beta * kl_divergence(policy, ref)


def reward_kl_curve(bandit: Bandit, betas: Tensor) -> tuple[Tensor, Tensor]:
    """The exact frontier: for each β, the prompt-mean KL(π* ‖ π_ref) and E_{π*}[r]."""
    kls, rewards = [], []
    for beta in betas.tolist():
        pi_star = optimal_policy(bandit.ref, bandit.reward, beta)
        kls.append(kl_divergence(pi_star, bandit.ref).mean())
        rewards.append(expected_reward(pi_star, bandit.reward).mean())
    return torch.stack(kls), torch.stack(rewards)


def implicit_reward(policy: Tensor, ref: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward r̂(x, y) = β log π(y|x)/π_ref(y|x) (paper, Eq. 5 without β log Z)."""
    check_same_shape(policy=policy, ref=ref)
    check_distribution("policy", policy)
    check_distribution("ref", ref)
    beta = check_positive("beta", beta)
    return beta * (policy.log() - ref.log())


def spread_per_prompt(values: Tensor) -> Tensor:
    """max_y − min_y of ``values`` in each row: zero exactly when a row is a constant shift."""
    return values.max(-1).values - values.min(-1).values
