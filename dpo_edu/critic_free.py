"""Critic-free RL from a reward: RLOO and GRPO. Neither trains a value head (PPO's critic, a second
network the size of the policy): each prompt is sampled k times, and the group is its own baseline.

One step: B prompts, k samples of each from π_old = π_θ; s_i = s(x, y_i) from the reward; the
advantages below; ``iterations`` passes of shuffled minibatches of the clipped loss.

RLOO (Ahmadian et al., 2024, §3.3; as TRL 1.16's ``RLOOTrainer``):

    R_i = s_i − β Σ_t [log π_old(y_i,t) − log π_ref(y_i,t)]        the KL penalty in the reward
    A_i = R_i − 1/(k − 1) Σ_{j≠i} R_j                              the leave-one-out baseline
    L   = −1/n Σ_i min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε) A_i),   ρ_i = π_θ(y_i|x) / π_old(y_i|x)

one ratio a sequence; on the first pass ρ = 1 and ∇L = −1/n Σ_i A_i ∇log π_θ(y_i|x): REINFORCE.

GRPO (Shao et al., 2024, DeepSeekMath, Eq. 3; as TRL 1.16's ``GRPOTrainer`` with
``use_bias_correction_kl=False``: by default TRL weighs each token's k3 by its ratio ρ_i,t):

    A_i    = (s_i − mean_j s_j) / (std_j s_j + 1e-4)               every token of y_i shares it
    ℓ_i,t  = −min(ρ_i,t A_i, clip(ρ_i,t, 1 − ε, 1 + ε) A_i) + β k3_i,t,   ρ_i,t = π_θ/π_old at y_i,t
    k3_i,t = π_ref/π_θ − log(π_ref/π_θ) − 1 at y_i,t               ≥ 0, unbiased for KL (Schulman)

and ``loss_type`` sums ℓ over tokens and samples (``GRPO_LOSSES``). TRL 1.16 defaults to "dapo";
the paper's is "grpo", which weighs a long response's tokens less than a short one's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .kl import k3
from .losses import masked_mean
from .models import chunked_logps, response_logps
from .reward_model import score_samples
from .sampling import Generation, check_prompts, sample
from .training import (Batch, Optimizer, TrainConfig, check_finite_scores, disable_dropout,
                       minibatch_updates, train_loop)
from .validate import check_int, check_positive

# How GRPO's per-token losses ℓ_i,t become one number, TRL 1.16's names; n rows in the minibatch
GRPO_LOSSES = {
    "grpo": "1/n Σ_i 1/|y_i| Σ_t ℓ_i,t: each response weighs alike (the paper's)",
    "bnpo": "Σ_i,t ℓ_i,t / Σ_i |y_i|: each token of the minibatch weighs alike",
    "dapo": "Σ_i,t ℓ_i,t / (tokens in the rollout / minibatches): each token of the rollout "
            "weighs alike (Yu et al., 2025; TRL 1.16's default)",
    "dr_grpo": "Σ_i,t ℓ_i,t / (n × max_new_tokens): no length bias (Liu et al., 2025)",
}
SCALES = ("group", "batch", "none")  # GRPO's std in A_i: the group's (paper), the rollout's, none


@dataclass(frozen=True)
class GroupConfig(TrainConfig):
    """What RLOO and GRPO share: groups of samples, the KL weight, the clipped ratio."""

    lr: float = 1e-5  # AdamW learning rate, constant
    batch_size: int = 8  # prompts per step, each sampled group_size times
    steps: int | None = 20  # steps, each one rollout and its passes
    group_size: int = 4  # k: samples of each prompt (TRL's num_generations)
    beta: float = 0.05  # β, the weight of the KL to π_ref
    cliprange: float = 0.2  # ε: the ratio is clipped to [1 − ε, 1 + ε]
    iterations: int = 1  # passes over each rollout (GRPO's μ; TRL's num_iterations)
    mini_batch_size: int = 32  # samples per optimiser step within a pass
    log_every: int = 1  # call the callback every this many steps
    save_every: int = 10  # steps between checkpoints

    def __post_init__(self):
        super().__post_init__()
        check_int("group_size", self.group_size, 2)  # a baseline needs another sample
        for name in ("iterations", "mini_batch_size"):
            check_int(name, getattr(self, name), 1)
        check_positive("cliprange", self.cliprange)
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta < float("inf")):
            raise ValueError(f"beta must be a finite number ≥ 0, got {self.beta!r}")
        if self.grad_accum_steps != 1:
            raise ValueError("grad_accum_steps must be 1: mini_batch_size plays that role")


@dataclass(frozen=True)
class RLOOConfig(GroupConfig):
    """RLOO; defaults as TRL 1.16's RLOOConfig where they apply (its β is 0.05)."""

    normalize_advantages: bool = False  # A ← (A − mean A) / (std A + 1e-4) over the rollout


@dataclass(frozen=True)
class GRPOConfig(GroupConfig):
    """GRPO; the paper's loss by default (TRL 1.16's: loss_type "dapo", β 0)."""

    loss_type: str = "grpo"  # one of GRPO_LOSSES
    scale_rewards: str = "group"  # one of SCALES ("none" with loss_type "dr_grpo": Dr. GRPO)

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in GRPO_LOSSES:
            raise ValueError(f"loss_type must be one of {tuple(GRPO_LOSSES)}, got "
                             f"{self.loss_type!r}")
        if self.scale_rewards not in SCALES:
            raise ValueError(f"scale_rewards must be one of {SCALES}, got {self.scale_rewards!r}")


# --- advantages -----------------------------------------------------------------------------------


def _groups(x: Tensor, k: int) -> Tensor:
    """(n,) → (n / k, k): a prompt's k samples are consecutive rows."""
    if x.ndim != 1 or len(x) % k:
        raise ValueError(f"expected a flat tensor of groups of {k}, got shape {tuple(x.shape)}")
    return x.reshape(-1, k)


def rloo_advantages(scores: Tensor, kl: Tensor, beta: float, k: int,
                    normalize: bool = False) -> Tensor:
    """A_i = R_i − mean_{j≠i} R_j with R = s − β KL, over groups of k consecutive samples."""
    rewards = _groups(scores - beta * kl, k)  # R_i
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)  # 1/(k − 1) Σ_{j≠i} R_j
    advantages = (rewards - baseline).reshape(-1)
    if normalize:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return advantages


def grpo_advantages(scores: Tensor, k: int, scale: str = "group") -> Tensor:
    """A_i = (s_i − mean of its group) / (std + 1e-4): the group's std, the rollout's, or none.
    The std is the sample one (÷ (k − 1)), as TRL's."""
    grouped = _groups(scores, k)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    std = grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1) if scale == "group" \
        else scores.std().expand_as(scores)
    return centred / (std + 1e-4)


# --- losses ---------------------------------------------------------------------------------------


def rloo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
              cliprange: float) -> tuple[Tensor, dict]:
    """−1/n Σ_i min(ρ_i A_i, clip(ρ_i, 1 ± ε) A_i), one ρ_i = exp(Σ_t log π_θ − log π_old) a row."""
    mask = mask.bool()
    ratio = torch.exp(torch.where(mask, logps - old_logps, 0.0).sum(1))  # ρ_i
    clipped = torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = -torch.minimum(ratio * advantages, clipped * advantages).mean()
    return loss, {"policy/clipfrac": (clipped * advantages < ratio * advantages).float()
                  .mean().item()}


def grpo_loss(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, advantages: Tensor,
              mask: Tensor, config: GRPOConfig, rollout_tokens: int | None = None,
              minibatches: int = 1, max_new_tokens: int | None = None) -> tuple[Tensor, dict]:
    """GRPO's clipped per-token loss with β k3, summed as ``config.loss_type`` says.

    ``rollout_tokens`` and ``minibatches`` ("dapo": the tokens of the whole rollout and the
    minibatches it is cut in), ``max_new_tokens`` ("dr_grpo"): the other normalisers' counts.
    """
    mask = mask.bool()
    ratio = torch.exp(logps - old_logps)  # ρ_i,t
    a = advantages[:, None]  # (n, 1): every token of y_i shares A_i
    clipped = torch.clamp(ratio, 1 - config.cliprange, 1 + config.cliprange)
    per_token = -torch.minimum(ratio * a, clipped * a)
    kl = k3(logps, ref_logps)
    if config.beta:
        per_token = per_token + config.beta * kl
    per_token = torch.where(mask, per_token, 0.0)
    if config.loss_type == "grpo":  # 1/n Σ_i 1/|y_i| Σ_t ℓ_i,t
        loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif config.loss_type == "bnpo":  # Σ ℓ / Σ|y_i| of the minibatch
        loss = per_token.sum() / mask.sum().clamp(min=1)
    elif config.loss_type == "dapo":  # Σ ℓ / (rollout tokens / minibatches)
        tokens = mask.sum().item() if rollout_tokens is None else rollout_tokens
        loss = per_token.sum() / max(tokens / minibatches, 1.0)
    else:  # dr_grpo: Σ ℓ / (n × max_new_tokens)
        if max_new_tokens is None:
            raise ValueError("loss_type 'dr_grpo' needs max_new_tokens")
        loss = per_token.sum() / (len(per_token) * max_new_tokens)
    return loss, {"policy/clipfrac": masked_mean((clipped * a < ratio * a).float(), mask).item(),
                  "policy/k3": masked_mean(kl.detach(), mask).item()}


# --- training -------------------------------------------------------------------------------------


def train_critic_free(policy, ref_model, tokenizer, prompts: Sequence[str], score_fn,
                      config: GroupConfig | None = None, generation: Generation | None = None,
                      callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
                      eval_fn: Callable[[], dict] | None = None):
    """Optimise ``policy`` (in place) by RLOO (an ``RLOOConfig``) or GRPO (a ``GRPOConfig``)
    against ``score_fn`` (a ``RewardModel``, or texts → rewards); returns ``(policy, metrics)``.
    ``ref_model`` is π_ref, frozen."""
    config = config if config is not None else RLOOConfig()
    generation = generation if generation is not None else Generation()
    if not isinstance(config, (RLOOConfig, GRPOConfig)):
        raise ValueError(f"config must be an RLOOConfig or a GRPOConfig, got "
                         f"{type(config).__name__}")
    prompts = check_prompts(prompts)
    disable_dropout(ref_model.eval())  # π_ref's log-probs: deterministic
    grpo = isinstance(config, GRPOConfig)
    k, temperature = config.group_size, generation.temperature

    def step(batch: Batch, optimizer: Optimizer) -> dict:
        seed = config.seed * 1_000_003 + batch.step  # samples and shuffles depend on (seed, step)
        group = [p for p in batch.items for _ in range(k)]  # a prompt's k samples, consecutive
        samples = sample(policy, tokenizer, group, generation, seed)
        with torch.no_grad():
            old = chunked_logps(policy, samples.batch, temperature, config.mini_batch_size,
                                entropy=True)
            ref = chunked_logps(ref_model, samples.batch, temperature,
                                config.mini_batch_size).logps
        scores = score_samples(score_fn, tokenizer, samples)
        check_finite_scores(scores, batch, k)
        kl = torch.where(old.mask, old.logps - ref, 0.0).sum(1)  # Σ_t log π_old − log π_ref
        advantages = (grpo_advantages(scores, k, config.scale_rewards) if grpo else
                      rloo_advantages(scores, kl, config.beta, k, config.normalize_advantages))
        rows, minibatches = len(group), -(-len(group) // config.mini_batch_size)

        def loss_fn(picked: Tensor) -> tuple[Tensor, dict]:
            picked = picked.to(scores.device)
            now = response_logps(policy, {key: v[picked] for key, v in samples.batch.items()},
                                 temperature).logps
            mask = old.mask[picked]
            if grpo:
                loss, stats = grpo_loss(now, old.logps[picked], ref[picked], advantages[picked],
                                        mask, config, int(old.mask.sum()), minibatches,
                                        generation.max_new_tokens)
            else:
                loss, stats = rloo_loss(now, old.logps[picked], advantages[picked], mask,
                                        config.cliprange)
            return loss, {"loss": loss.item(), **stats}

        stats = minibatch_updates(optimizer, loss_fn, rows, config.mini_batch_size,
                                  config.iterations, batch, seed, group=k)
        return {"objective/kl": kl.mean().item(),
                "objective/entropy": old.entropy.sum(1).mean().item(),
                "objective/scores": scores.mean().item(),  # E[s], in the reward's own units
                "objective/advantage_std": advantages.std().item(), **stats,
                "val/num_eos_tokens": int(samples.ended.sum()),
                "val/response_length": old.mask.sum(1).float().mean().item()}

    metrics = train_loop(policy, prompts, step, config, callback=callback,
                         checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="GRPO" if grpo else "RLOO",
                         settings={"generation": asdict(generation)},
                         show=("objective/scores", "objective/kl"))
    return policy, metrics
