"""Estimating KL(π ‖ π_ref) from samples y ~ π: Schulman's k1, k2, k3 ("Approximating KL
divergence", 2020), beside the exact per-token KL a language model can afford.

With r = π_ref(y) / π(y) at a sampled token y:

    k1 = −log r               unbiased; negative whenever π_ref(y) > π(y)   (PPO's reward penalty)
    k2 = ½ (log r)²           ≥ 0, biased (its mean is an f-divergence, ≈ KL when π ≈ π_ref)
    k3 = (r − 1) − log r      ≥ 0 and unbiased: E_π[r − 1] = 0              (GRPO's loss term)
    exact = Σ_v π(v) [log π(v) − log π_ref(v)]  at each prefix: no sampling noise at that token

Summed over a response, each unbiased one estimates the sequence KL (notebook 07, §6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .models import response_logps


def k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """log π(y) − log π_ref(y) = −log r, elementwise."""
    return logps - ref_logps


def k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """½ (log r)², elementwise."""
    return 0.5 * (ref_logps - logps) ** 2


def k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """(r − 1) − log r ≥ 0, elementwise: unbiased for KL(π ‖ π_ref) at y ~ π."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


class TokenKL(NamedTuple):
    """Per-token KL estimates of sampled responses; (B, L − 1), zeros off the response."""

    exact: Tensor  # Σ_v π(v | prefix) log π(v | prefix) / π_ref(v | prefix)
    k1: Tensor
    k2: Tensor
    k3: Tensor
    mask: Tensor  # bool: the columns that predict a response token

    def sequence(self, name: str) -> Tensor:
        """(B,) one estimator summed over each response."""
        return getattr(self, name).sum(-1)


@torch.no_grad()
def token_kl(policy, ref_model, batch: dict[str, Tensor], temperature: float = 1.0) -> TokenKL:
    """Every estimator at every response token of an ``encode_pairs`` batch, on the CPU."""
    p = response_logps(policy, batch, temperature, dists=True)
    q = response_logps(ref_model, batch, temperature, dists=True)
    exact = (p.dists.exp() * (p.dists - q.dists.to(p.dists.device))).sum(-1)  # (N,) masked tokens
    mask = p.mask.cpu()
    logps, ref_logps = p.logps.cpu(), q.logps.cpu()
    per_token = torch.zeros(mask.shape).masked_scatter(mask, exact.cpu())
    return TokenKL(per_token, *(torch.where(mask, f(logps, ref_logps), 0.0) for f in (k1, k2, k3)),
                   mask)
