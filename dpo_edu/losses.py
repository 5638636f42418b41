"""Preference losses on sequence log-probabilities, each beside its equation (DPO paper, §4).

For a prompt x with chosen y_w and rejected y_l, the implicit rewards are
r̂ = β (log π_θ(y|x) − log π_ref(y|x)); h = r̂_w − r̂_l = β u, u the difference of log-ratios.

    sigmoid (DPO, Eq. 7)     −log σ(h)
    cDPO (label smoothing ε) −(1 − ε) log σ(h) − ε log σ(−h)      (Mitchell, 2023)
    IPO                      (u − 1/(2β))²                         (Azar et al., 2023, Eq. 17)
    hinge                    max(0, 1 − h)                          (SLiC, Zhao et al., 2023)

Metric names are TRL DPOTrainer's. PPO's clipped policy and value losses (Schulman et al., 2017),
per response token, close the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .validate import check_finite, check_not_empty, check_positive, check_same_shape

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _check_loss_arguments(beta: float, loss_type: str, label_smoothing: float,
                          **logps: Tensor) -> float:
    """β, once checked; one shape for every log-prob tensor, every value finite.

    The errors name the tensor.
    """
    check_same_shape(**logps)
    check_not_empty(**logps)
    for name, tensor in logps.items():
        check_finite(name, tensor)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {loss_type!r}")
    return check_positive("beta", beta)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Mean preference loss over a batch of pairs, and TRL-named metrics. Each log-prob tensor is
    (pairs,), summed over a response; ``label_smoothing`` ε turns the sigmoid loss into cDPO."""
    beta = _check_loss_arguments(beta, loss_type, label_smoothing,
                                 policy_chosen_logps=policy_chosen_logps,
                                 policy_rejected_logps=policy_rejected_logps,
                                 ref_chosen_logps=ref_chosen_logps,
                                 ref_rejected_logps=ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log π_θ(y_w|x) / π_ref(y_w|x)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log π_θ(y_l|x) / π_ref(y_l|x)
    u = chosen_logratios - rejected_logratios
    h = beta * u  # h = r̂_w − r̂_l, the implicit rewards' margin
    if loss_type == "sigmoid":  # −(1 − ε) log σ(h) − ε log σ(−h); ε = 0 is DPO's Eq. 7
        losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    elif loss_type == "ipo":  # (u − 1/(2β))²
        losses = (u - 1 / (2 * beta)) ** 2
    else:  # hinge: max(0, 1 − h)
        losses = torch.relu(1 - h)

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }
    return losses.mean(), metrics


def dpo_gradient_weight(implicit_chosen: Tensor, implicit_rejected: Tensor) -> Tensor:
    """The weight σ(r̂_l − r̂_w) in the DPO gradient (paper, §4):

        ∇_θ L = −β E[σ(r̂_l − r̂_w) (∇ log π(y_w|x) − ∇ log π(y_l|x))]

    large when the implicit reward orders the pair wrongly, small when it is already right.
    """
    check_same_shape(implicit_chosen=implicit_chosen, implicit_rejected=implicit_rejected)
    return torch.sigmoid(implicit_rejected - implicit_chosen)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Reward-model loss −E log σ(r_φ(x, y_w) − r_φ(x, y_l))  (DPO paper, Eq. 2)."""
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    check_not_empty(chosen_rewards=chosen_rewards)
    check_finite("chosen_rewards", chosen_rewards)
    check_finite("rejected_rewards", rejected_rewards)
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


# --- PPO (Schulman et al., 2017), per response token ----------------------------------------------
#
# Both losses are averaged over the response tokens of a minibatch (``mask`` = 1 there, 0 on the
# prompt's pads and after EOS), as TRL's PPO and lm-human-preferences do. Both take the pessimistic
# (larger) of an unclipped and a clipped term, so a step never gains by moving far from the
# rollout's π_old and V_old.


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ mask·x / Σ mask; masked-out entries (even NaN) are ignored."""
    mask = mask.bool()
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    cliprange: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al., 2017, Eq. 7) as a loss; ρ_t = π_θ(y_t)/π_old(y_t):

        L^CLIP = E_t[ max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)) ]
    Metrics: ``policy/clipfrac``, ``policy/approxkl`` (½ E_t[(log ρ_t)²]), ``val/ratio`` (E_t[ρ_t]).
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    for name, tensor in (("logprobs", logprobs), ("old_logprobs", old_logprobs),
                         ("advantages", advantages)):
        check_finite(name, tensor, mask)  # where it counts: masked-out entries are ignored
    check_positive("cliprange", cliprange)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # ρ_t
    unclipped = -advantages * ratio  # −A ρ
    # −A clip(ρ, 1 − ε, 1 + ε)
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)  # the pessimistic bound
    metrics = {
        "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
        "policy/approxkl": masked_mean(0.5 * log_ratio.detach() ** 2, mask).item(),
        "val/ratio": masked_mean(ratio.detach(), mask).item(),
    }
    return loss, metrics


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   cliprange_value: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (Huang et al., 2023; as TRL); R_t the rollout's returns, ε_v the clip:

        L^V = ½ E_t[ max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, ±ε_v) − R_t)²) ]
    Metrics: ``val/clipfrac``, ``val/vpred`` (E_t[V_t]), ``val/error`` (E_t[(V_t − R_t)²]).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    for name, tensor in (("values", values), ("old_values", old_values), ("returns", returns)):
        check_finite(name, tensor, mask)
    check_positive("cliprange_value", cliprange_value)
    # V^clip = V_old + clip(V − V_old, −ε_v, ε_v)
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2  # (V − R)²
    clipped_error = (clipped - returns) ** 2  # (V^clip − R)²
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    metrics = {
        "val/clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask).item(),
        "val/vpred": masked_mean(values.detach(), mask).item(),
        "val/error": masked_mean(unclipped_error.detach(), mask).item(),
    }
    return loss, metrics
