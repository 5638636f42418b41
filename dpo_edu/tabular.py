"""Tabular softmax policies on toy problems, trained two ways toward the same π*.

A tabular policy has one free logit θ(x, y) per prompt and response:
π_θ(y|x) = softmax(θ(x, ·))_y. Both trainers start at π_ref (θ = log π_ref) and use Adam on the
full batch:

(a) ``ascend_objective``: gradient ascent on J(π) = E_π[r] − β KL(π ‖ π_ref) with the true
    reward — what RLHF's policy optimisation solves (DPO paper, Eq. 3);
(b) ``train_dpo``: minimise a preference loss on sampled pairs, never seeing r (paper, §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import toy
from .bradley_terry import preference_probability
from .losses import dpo_gradient_weight, dpo_loss
from .validate import check_positive


@dataclass(frozen=True)
class PreferencePairs:
    """Toy preference data: in pair k, ``chosen[k]`` beat ``rejected[k]`` on ``prompt[k]``."""

    prompt: Tensor
    chosen: Tensor
    rejected: Tensor

    def __len__(self) -> int:
        return len(self.prompt)


@dataclass
class TrainingResult:
    """A trained tabular policy and what was logged along the way."""

    policy: Tensor  # (prompts, responses) probabilities, float64
    history: dict[str, list[float]] = field(default_factory=dict)


def sample_pairs(bandit: toy.Bandit, n_pairs: int, seed: int = 0,
                 deterministic: bool = False) -> PreferencePairs:
    """Pairs as in the paper: x uniform, two distinct responses y₁, y₂ ~ π_ref(·|x), then a label.

    The label is a Bradley–Terry coin flip, p(y₁ ≻ y₂) = σ(r(x, y₁) − r(x, y₂)); with
    ``deterministic=True`` the higher-reward response always wins (noise-free preferences).
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be ≥ 1, got {n_pairs}")
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(bandit.n_prompts, (n_pairs,), generator=generator)
    probs = bandit.ref[prompt]
    first = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    others = probs.scatter(1, first[:, None], 0.0)  # y₂ ≠ y₁: π_ref renormalised without y₁
    second = torch.multinomial(others, 1, generator=generator).squeeze(1)
    r_first, r_second = bandit.reward[prompt, first], bandit.reward[prompt, second]
    if deterministic:
        first_wins = r_first > r_second
    else:
        first_wins = (torch.rand(n_pairs, generator=generator, dtype=r_first.dtype)
                      < preference_probability(r_first, r_second))
    return PreferencePairs(
        prompt=prompt,
        chosen=torch.where(first_wins, first, second),
        rejected=torch.where(first_wins, second, first),
    )


def _adam_loop(ref: Tensor, loss_fn, steps: int, lr: float, log_fn,
               eps: float = 1e-8) -> TrainingResult:
    """Adam, step lr·m̂/(√v̂ + eps), on logits θ initialised at log π_ref; ``log_fn(π) -> dict`` is
    recorded every step."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    check_positive("lr", lr)
    logits = ref.log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr, eps=eps)
    history: dict[str, list[float]] = {}
    with toy.one_thread():
        for step in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, value in {"loss": loss.item(), **log_fn(logits.softmax(-1))}.items():
                    history.setdefault(name, []).append(value)
    return TrainingResult(policy=logits.detach().softmax(-1), history=history)


def ascend_objective(bandit: toy.Bandit, beta: float, steps: int = 2000,
                     lr: float = 0.05) -> TrainingResult:
    """Maximise J(π_θ) on every prompt by Adam; logs the prompt-mean J and max |π_θ − π*| each step.

    Adam's ε = lr/50 caps its step size lr/(√v̂ + ε) at 50: with ε = 1e-8 that step grows as the
    gradient vanishes near π*, until momentum overshoots (error 1e-5 → 1e-3 at step 1,380)."""
    beta = check_positive("beta", beta)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)

    def loss_fn(logits):  # Σ_x −J(x)/β = Σ_x KL(π_θ ‖ π*)(x) − log Z(x): near π*, curvature ≤ ½
        return -toy.objective(logits.softmax(-1), bandit.ref, bandit.reward, beta).sum() / beta

    def log_fn(policy):
        return {
            "objective": toy.objective(policy, bandit.ref, bandit.reward, beta).mean().item(),
            "max_abs_error": (policy - pi_star).abs().max().item(),
        }

    # Adam's momentum is stable while step size × curvature < 2(1 + β₁)/(1 − β₁) = 38: 50 · ½ = 25
    return _adam_loop(bandit.ref, loss_fn, steps, lr, log_fn, eps=lr / 50)


def pair_logps(logits: Tensor, pairs: PreferencePairs) -> tuple[Tensor, Tensor]:
    """log π(y_w|x) and log π(y_l|x) for every pair under tabular ``logits``."""
    logp = logits.log_softmax(-1)
    return logp[pairs.prompt, pairs.chosen], logp[pairs.prompt, pairs.rejected]


def train_dpo(
    bandit: toy.Bandit,
    pairs: PreferencePairs,
    beta: float,
    steps: int = 2000,
    lr: float = 0.05,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> TrainingResult:
    """Minimise a preference loss over all ``pairs`` (full batch); the true reward is never used.

    Logs the loss, the distance max |π_θ − π*| and the TRL-named metrics every step.
    """
    beta = check_positive("beta", beta)
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)
    ref_logits = bandit.ref.log()
    ref_chosen, ref_rejected = pair_logps(ref_logits, pairs)
    metrics: dict[str, float] = {}

    def loss_fn(logits):
        chosen, rejected = pair_logps(logits, pairs)
        loss, step_metrics = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta, loss_type=loss_type,
            label_smoothing=label_smoothing
        )
        metrics.update(step_metrics)
        return loss

    def log_fn(policy):
        return {**metrics, "max_abs_error": (policy - pi_star).abs().max().item()}

    return _adam_loop(bandit.ref, loss_fn, steps, lr, log_fn)


def dpo_gradient_formula(logits: Tensor, bandit: toy.Bandit, pairs: PreferencePairs, beta: float,
                         appendix_slip: bool = False) -> Tensor:
    """The sigmoid DPO loss's gradient w.r.t. tabular logits, by the paper's §4 formula:

        ∇_θ L = −β/N Σ_k σ(r̂_l − r̂_w) (∇_θ log π(y_w|x) − ∇_θ log π(y_l|x))

    ``appendix_slip=True`` uses σ(r̂_w − r̂_l) instead, as the appendix's Eq. 21 prints it.
    """
    beta = check_positive("beta", beta)
    with torch.no_grad():
        chosen, rejected = pair_logps(logits, pairs)
        ref_chosen, ref_rejected = pair_logps(bandit.ref.log(), pairs)
        implicit_chosen, implicit_rejected = (beta * (chosen - ref_chosen),
                                              beta * (rejected - ref_rejected))
        if appendix_slip:
            implicit_chosen, implicit_rejected = implicit_rejected, implicit_chosen
        weight = -beta * dpo_gradient_weight(implicit_chosen, implicit_rejected) / len(pairs)
        # ∇_θ log π(y|x) = e_y − π(·|x) in row x: the π terms cancel within a pair
        grad = torch.zeros_like(logits)
        grad.index_put_((pairs.prompt, pairs.chosen), weight, accumulate=True)
        grad.index_put_((pairs.prompt, pairs.rejected), -weight, accumulate=True)
    return grad
