"""The DPO paper's baselines (§6): Preferred-FT, Unlikelihood and Best-of-N.

    Preferred-FT   L = −(1/N) Σ_i Σ_t log π_θ(y_w,t | x, y_w,<t)             N = chosen tokens
    Unlikelihood   L = mean_i [−(1/|y_w|) Σ_t log π_θ(y_w,t) − α (1/|y_l|) Σ_t log(1 − π_θ(y_l,t))]
    Best-of-N      the highest reward-model score of N samples of π_ref (no training)

Both trainers tokenize the pairs as DPO does (``dpo.tokenize_pairs``: its truncation and EOS rule)
and run on ``training.train_loop``. Best-of-N's KL from π_ref is measured beside its upper bound
log N − (N − 1)/N (Beirami et al., 2024). Unlikelihood: Welleck et al. (2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from .dpo import check_fits, collate_pairs, tokenize_pairs
from .models import encode_pairs, response_logps
from .preferences import EOS_RULES
from .training import TrainConfig, minimize, train_loop
from .validate import check_int

ONE_MINUS_FLOOR = 1e-5  # 1 − p is floored here: float32 log-probs cannot resolve a smaller 1 − p


@dataclass(frozen=True)
class PairTrainConfig(TrainConfig):
    """What both baseline trainers share with DPO: the pairs tokenized by DPO's rules."""

    lr: float = 1e-4  # peak AdamW learning rate (as DPOConfig's, for the tiny GPT-2)
    batch_size: int = 16  # preference pairs per step
    max_length: int = 64  # tokens per row, prompt + response + EOS; longer rows lose their end
    append_eos: str = "auto"  # EOS after a response: DPOConfig.append_eos's rule

    def __post_init__(self):
        super().__post_init__()
        check_int("max_length", self.max_length, 2)  # a prompt token and a response token at least
        if self.append_eos not in EOS_RULES:
            raise ValueError(f"append_eos must be one of {EOS_RULES}, got {self.append_eos!r}")


@dataclass(frozen=True)
class PreferredFTConfig(PairTrainConfig):
    """Preferred-FT: supervised fine-tuning on the chosen responses (PairTrainConfig's fields)."""


@dataclass(frozen=True)
class UnlikelihoodConfig(PairTrainConfig):
    """Unlikelihood: the chosen response's likelihood, the rejected one's unlikelihood."""

    alpha: float = 1.0  # α, weight of the unlikelihood term (DPO paper §6: α ∈ [0, 1]); 0: none

    def __post_init__(self):
        super().__post_init__()
        alpha = self.alpha
        if (not isinstance(alpha, (int, float)) or isinstance(alpha, bool)
                or not math.isfinite(alpha) or alpha < 0):
            raise ValueError(f"alpha must be a finite number ≥ 0, got {alpha!r}")


# --- token log-probs ------------------------------------------------------------------------------


def chosen_token_logps(policy, tokenizer, rows: Sequence[dict]) -> tuple[Tensor, Tensor]:
    """``(logps, mask)``, each (n, L − 1): log π(y_w,t | x, y_w,<t) of tokenized pairs (chosen)."""
    prompts, chosen = [r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows]
    batch = encode_pairs(tokenizer, prompts, chosen)  # left-padded prompts: no rejected row at all
    scores = response_logps(policy, batch)
    return scores.logps, scores.mask


def pair_token_logps(policy, tokenizer, rows: Sequence[dict]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(chosen logps, chosen mask, rejected logps, rejected mask)``, one forward pass (as DPO)."""
    scores = response_logps(policy, collate_pairs(rows, tokenizer.pad_token_id))
    n = len(rows)
    return scores.logps[:n], scores.mask[:n], scores.logps[n:], scores.mask[n:]


def log_one_minus(logp: Tensor, floor: float = ONE_MINUS_FLOOR) -> Tensor:
    """log(1 − p) from log p ≤ 0 (Mächler's log1mexp), 1 − p ≥ ``floor``: finite near p = 1."""
    x = logp.clamp(max=math.log1p(-floor))  # p ≤ 1 − floor; no gradient beyond (as Welleck's code)
    # log(−expm1(x)) is accurate for p near 1, log1p(−exp(x)) for p near 0 (both finite everywhere)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# --- the losses -----------------------------------------------------------------------------------


def preferred_ft_loss(logps: Tensor, mask: Tensor) -> tuple[Tensor, dict]:
    """−(1/N) Σ log π(y_w,t): the token-weighted mean over a batch's chosen tokens, and metrics."""
    logps, tokens = logps * mask, mask.sum()  # prompt and padding columns out
    loss = -logps.sum() / tokens.clamp(min=1)  # −(1/N) Σ_i Σ_t log π_θ(y_w,t | x, y_w,<t)
    return loss, {"logps/chosen": logps.detach().sum(-1).mean().item(), "tokens": int(tokens)}


def unlikelihood_loss(chosen_logps: Tensor, chosen_mask: Tensor, rejected_logps: Tensor,
                      rejected_mask: Tensor, alpha: float) -> tuple[Tensor, dict]:
    """Mean over pairs of −mean_t log π(y_w,t) − α mean_t log(1 − π(y_l,t)), and metrics.

    Per-response means: α weighs a token against a token, whatever the lengths; pairs count once.
    """
    chosen, rejected = chosen_logps * chosen_mask, rejected_logps * rejected_mask  # padding out
    n_w = chosen_mask.sum(-1).clamp(min=1)  # |y_w| (an empty response contributes 0)
    n_l = rejected_mask.sum(-1).clamp(min=1)  # |y_l|
    likelihood = -chosen.sum(-1) / n_w  # −(1/|y_w|) Σ_t log π(y_w,t)
    # −(1/|y_l|) Σ_t log(1 − π(y_l,t))
    unlikelihood = -(log_one_minus(rejected) * rejected_mask).sum(-1) / n_l
    loss = (likelihood + alpha * unlikelihood).mean()
    return loss, {"loss/likelihood": likelihood.detach().mean().item(),
                  "loss/unlikelihood": unlikelihood.detach().mean().item(),
                  "logps/chosen": chosen.detach().sum(-1).mean().item(),
                  "logps/rejected": rejected.detach().sum(-1).mean().item()}


# --- training -------------------------------------------------------------------------------------


def _rows(policy, tokenizer, pairs: Sequence[dict], config: PairTrainConfig) -> list[dict]:
    """The pairs tokenized as ``train_dpo`` would; pairs that cannot fit are left out, reported."""
    check_fits(policy, config)
    rows, report = tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
    if config.progress and (report.skipped or report.truncated):
        print(report)
    return rows


def _check_config(config, kind: type) -> PairTrainConfig:
    config = config if config is not None else kind()
    if not isinstance(config, kind):  # siblings: an UnlikelihoodConfig is no PreferredFTConfig
        raise ValueError(f"config must be a {kind.__name__}, got {type(config).__name__}")
    return config


def train_preferred_ft(policy, tokenizer, pairs: Sequence[dict],
                       config: PreferredFTConfig | None = None,
                       callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
                       eval_fn: Callable[[], dict] | None = None):
    """Optimise ``policy`` (in place) on the chosen responses only; returns ``(policy, metrics)``.

    Metrics: ``loss``, ``logps/chosen``, ``tokens``. Micro-batches are weighted by rows (as SFT's).
    """
    config = _check_config(config, PreferredFTConfig)
    rows = _rows(policy, tokenizer, pairs, config)

    def loss_fn(batch: list[dict]):
        return preferred_ft_loss(*chosen_token_logps(policy, tokenizer, batch))

    metrics = train_loop(policy, rows, minimize(loss_fn, config.grad_accum_steps), config,
                         callback=callback, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="Preferred-FT")
    return policy, metrics


def train_unlikelihood(policy, tokenizer, pairs: Sequence[dict],
                       config: UnlikelihoodConfig | None = None,
                       callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
                       eval_fn: Callable[[], dict] | None = None):
    """Optimise ``policy`` (in place) by Unlikelihood; returns ``(policy, metrics)``: ``loss``,
    ``loss/likelihood``, ``loss/unlikelihood`` (before α), ``logps/chosen``, ``logps/rejected``."""
    config = _check_config(config, UnlikelihoodConfig)
    rows = _rows(policy, tokenizer, pairs, config)

    def loss_fn(batch: list[dict]):
        return unlikelihood_loss(*pair_token_logps(policy, tokenizer, batch), config.alpha)

    metrics = train_loop(policy, rows, minimize(loss_fn, config.grad_accum_steps), config,
                         callback=callback, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="Unlikelihood")
    return policy, metrics


# --- Best-of-N ------------------------------------------------------------------------------------


class BestOfN(NamedTuple):
    reward: np.ndarray  # (P,) each prompt's mean ground-truth reward of the picked samples
    kl: np.ndarray  # (P,) each prompt's mean of log N + (N − 1) log F̂(score): KL(π_BoN ‖ π_ref)
    kl_bound: float  # log N − (N − 1)/N, an upper bound on that KL (Beirami et al., 2024)


def best_of_n(rm_scores, rewards, ns: Sequence[int]) -> dict[int, BestOfN]:
    """Per N: each prompt's M samples of π_ref (P × M arrays) in M/N groups, the top score of each
    picked; each prompt's picks' mean reward and measured KL, and log N − (N − 1)/N, the KL often
    quoted for Best-of-N, which is only an upper bound on it (Beirami et al., 2024)."""
    scores, rewards = _check_best_of_n(rm_scores, rewards)
    p, m = scores.shape
    ns = [ns] if isinstance(ns, (int, np.integer)) else list(ns)
    if not ns:
        raise ValueError("ns is empty: give at least one N")
    for i, n in enumerate(ns):
        n = check_int(f"ns[{i}]", int(n) if isinstance(n, np.integer) else n, 1)
        if m % n or m < 2 * n:
            raise ValueError(f"ns[{i}] = {n} must divide the M = {m} samples per prompt "
                             "(rm_scores.shape[1]), with M ≥ 2N: the groups are disjoint and "
                             "equal, "
                             "and the others give the pick's CDF")
    # Continuous scores: π_BoN(y) = N F(r(y))^(N−1) π_ref(y), F the CDF of the score under π_ref,
    # so KL = E_BoN[log N + (N − 1) log F(r(y))]. F is estimated at a pick from the M − N samples
    # outside its group, F̂ = (#{others ≤ score} + 1) / (M − N + 1): counting the pick's own group
    # would make the estimate run (N − 1)/M high (log N exactly at M = N).
    out = {}
    for n in map(int, ns):
        groups = scores.reshape(p, m // n, n)  # (P, M/N, N): group g holds samples gN … gN + N − 1
        best = groups.argmax(-1)[..., None]  # (P, M/N, 1) the first highest score of each group
        picked = np.take_along_axis(rewards.reshape(p, m // n, n), best, -1)[..., 0]
        top = np.take_along_axis(groups, best, -1)[..., 0]  # (P, M/N) the picks' scores
        at_or_below = (scores[:, None, :] <= top[..., None]).sum(-1)  # (P, M/N) of all M scores
        in_group = (groups <= top[..., None]).sum(-1)  # … of the pick's own group (all N of it)
        f_hat = (at_or_below - in_group + 1) / (m - n + 1)
        log_ratio = math.log(n) + (n - 1) * np.log(f_hat)  # log π_BoN/π_ref; F̂ > 0: finite
        out[n] = BestOfN(picked.mean(-1), log_ratio.mean(-1), math.log(n) - (n - 1) / n)
    return out


def _check_best_of_n(rm_scores, rewards) -> tuple[np.ndarray, np.ndarray]:
    arrays = {}
    for name, values in (("rm_scores", rm_scores), ("rewards", rewards)):
        if isinstance(values, Tensor):
            values = values.detach().cpu()
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(f"{name} must be a non-empty (prompts, samples) array, got shape "
                             f"{array.shape}")
        if not np.isfinite(array).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ValueError(f"{name} has a non-finite value {array[index]} at index {index}")
        arrays[name] = array
    if arrays["rm_scores"].shape != arrays["rewards"].shape:
        raise ValueError(f"rm_scores {arrays['rm_scores'].shape} and rewards "
                         f"{arrays['rewards'].shape} must have the same shape (prompts, samples)")
    return arrays["rm_scores"], arrays["rewards"]
