"""Argument checks shared by every room of the library.

Each check raises a ``ValueError`` that names the argument and says what is wrong,
so a student who passes a bad tensor learns which one and why.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive(name: str, value: float) -> float:
    """``value`` must be a finite number > 0 (β, a temperature, a learning rate)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ≥ ``minimum``, else a ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return value


class NonFiniteError(ValueError):
    """A NaN or ±inf where a number was needed (a trainer names its step and batch)."""


def check_finite(name: str, tensor: Tensor, mask: Tensor | None = None) -> Tensor:
    """No NaN or ±inf in ``tensor`` (where ``mask`` is set); the error names the first bad index."""
    bad = ~torch.isfinite(tensor.detach())
    if mask is not None:
        bad = bad & mask.bool()
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(f"{name} has a non-finite value {tensor[index].item()} "
                             f"at index {index}")
    return tensor


def check_same_shape(**tensors: Tensor) -> None:
    """All tensors share one shape: ``check_same_shape(chosen=a, rejected=b)``."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match, got {listed}")


def check_distribution(name: str, probs: Tensor, atol: float = 1e-5) -> Tensor:
    """Each row of ``probs`` (last dim) is a probability distribution: finite, ≥ 0, sums to one."""
    check_finite(name, probs)
    if (probs < 0).any():
        index = tuple(int(i) for i in (probs < 0).nonzero()[0])
        raise ValueError(f"{name} has a negative probability {probs[index].item()} "
                         f"at index {index}")
    sums = probs.sum(-1)
    off = (sums - 1).abs() > atol
    if off.any():
        row = tuple(int(i) for i in off.nonzero()[0])
        raise ValueError(f"{name} row {row} sums to {sums[row].item():.6f}, not 1")
    return probs


def check_not_empty(**tensors: Tensor) -> None:
    """Every tensor holds at least one value: a mean over nothing is NaN, not a loss."""
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}): nothing to average")
