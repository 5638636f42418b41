"""Preference losses on sequence log-probabilities, each beside its equation.

Notation (DPO paper, §4): for a prompt x with preferred response y_w ("chosen") and
dispreferred y_l ("rejected"), the implicit rewards are

    r̂_w = β (log π_θ(y_w|x) − log π_ref(y_w|x)),   r̂_l = β (log π_θ(y_l|x) − log π_ref(y_l|x)),

and h = r̂_w − r̂_l = β u, where u is the difference of log-ratios. The losses:

    sigmoid (DPO, Eq. 7)     −log σ(h)
    cDPO (label smoothing ε) −(1 − ε) log σ(h) − ε log σ(−h)      (Mitchell, 2023)
    IPO                      (u − 1/(2β))²                         (Azar et al., 2023, Eq. 17)
    hinge                    max(0, 1 − h)                          (SLiC, Zhao et al., 2023)

Metric names follow TRL's DPOTrainer so that what students learn here transfers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .validate import check_finite, check_positive, check_same_shape

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Mean preference loss over a batch of pairs, and TRL-named metrics.

    Every argument is a 1-D tensor of summed response log-probabilities, one entry per pair.
    ``label_smoothing`` ε ∈ [0, 0.5) turns the sigmoid loss into cDPO (the labels are
    assumed flipped with probability ε).
    """
    check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    for name, tensor in [
        ("policy_chosen_logps", policy_chosen_logps),
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ]:
        check_finite(name, tensor.detach())
    beta = check_positive("beta", beta)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {loss_type!r}")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    u = chosen_logratios - rejected_logratios
    h = beta * u
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    elif loss_type == "ipo":
        losses = (u - 1 / (2 * beta)) ** 2
    else:  # hinge
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
    return torch.sigmoid(implicit_rejected - implicit_chosen)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Reward-model loss −E log σ(r_φ(x, y_w) − r_φ(x, y_l))  (DPO paper, Eq. 2)."""
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
