"""Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI Feedback"):
DPO's loss on pairs the current policy has just sampled, labelled by the reward model.

Offline DPO learns from π_ref's samples; as π_θ moves away from π_ref, they stop being what π_θ
would write, and the pairs go stale. Online DPO samples afresh at every step:

    y_1, y_2 ~ π_θ(·|x)            two samples of each prompt, the current policy's
    (y_w, y_l) = (y_1, y_2) if s(x, y_1) ≥ s(x, y_2) else (y_2, y_1)       the reward model's label
    L = −log σ(β [log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)])       DPO's Eq. 7

(or another of ``losses.LOSS_TYPES``), one AdamW step a batch, the samples treated as data (no
gradient through the sampling). Two equal samples give u = 0 whatever θ: no gradient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from .dpo import preference_loss
from .losses import LOSS_TYPES
from .models import chunked_logps, response_logps
from .reward_model import score_samples
from .sampling import Generation, check_prompts, sample
from .training import (Batch, Optimizer, TrainConfig, check_finite_scores, finite_loss,
                       disable_dropout, train_loop)
from .validate import check_positive


@dataclass(frozen=True)
class OnlineDPOConfig(TrainConfig):
    """Online DPO; β and the loss as ``DPOConfig``'s."""

    lr: float = 1e-5  # AdamW learning rate, constant
    batch_size: int = 16  # prompts per step, two samples of each: one pair a prompt
    steps: int | None = 20  # steps, each one batch of fresh pairs
    beta: float = 0.1  # β of the implicit reward β log π_θ/π_ref
    loss_type: str = "sigmoid"  # one of losses.LOSS_TYPES
    label_smoothing: float = 0.0  # cDPO's ε (sigmoid only)
    log_every: int = 1  # call the callback every this many steps
    save_every: int = 10  # steps between checkpoints

    def __post_init__(self):
        super().__post_init__()
        check_positive("beta", self.beta)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.grad_accum_steps != 1:
            raise ValueError("grad_accum_steps must be 1 for online DPO: lower batch_size")


def label_pairs(logps: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` of consecutive pairs of rows: the one the reward scores higher (the
    first on a tie) is chosen. ``logps`` (2n, …) → two (n, …)."""
    if len(logps) != len(scores) or len(scores) % 2:
        raise ValueError(f"expected pairs of rows, got {len(logps)} log-probs and {len(scores)} "
                         "scores")
    first_wins = scores[0::2] >= scores[1::2]
    shape = (-1,) + (1,) * (logps.ndim - 1)
    first, second = logps[0::2], logps[1::2]
    wins = first_wins.reshape(shape)
    return torch.where(wins, first, second), torch.where(wins, second, first)


def train_online_dpo(policy, ref_model, tokenizer, prompts: Sequence[str], score_fn,
                     config: OnlineDPOConfig | None = None, generation: Generation | None = None,
                     callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
                     eval_fn: Callable[[], dict] | None = None):
    """Optimise ``policy`` (in place) by online DPO, pairs labelled by ``score_fn`` (a
    ``RewardModel``, or texts → rewards); returns ``(policy, metrics)``, TRL's DPO names."""
    config = config if config is not None else OnlineDPOConfig()
    generation = generation if generation is not None else Generation()
    if not isinstance(config, OnlineDPOConfig):
        raise ValueError(f"config must be an OnlineDPOConfig, got {type(config).__name__}")
    prompts = check_prompts(prompts)
    disable_dropout(ref_model.eval())
    temperature = generation.temperature

    def step(batch: Batch, optimizer: Optimizer) -> dict:
        seed = config.seed * 1_000_003 + batch.step  # the samples depend on (seed, step)
        samples = sample(policy, tokenizer, [p for p in batch.items for _ in range(2)],
                         generation, seed)
        scores = score_samples(score_fn, tokenizer, samples)
        check_finite_scores(scores, batch, 2)
        with torch.no_grad():
            ref = chunked_logps(ref_model, samples.batch, temperature, len(scores)).logps.sum(1)
        now = response_logps(policy, samples.batch, temperature)
        tokens = now.mask.sum(1)
        chosen, rejected = label_pairs(now.sequence_logps, scores)
        ref_chosen, ref_rejected = label_pairs(ref, scores)
        n_w, n_l = label_pairs(tokens, scores)
        loss, metrics = finite_loss(  # a NaN log-prob the loss refuses names this step and batch
            lambda logps: preference_loss(*logps, n_w, n_l, config),
            (chosen, rejected, ref_chosen, ref_rejected), batch)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = optimizer.step(batch)
        kl = torch.where(now.mask, now.logps.detach(), 0.0).sum(1) - ref  # log π_θ/π_ref of y
        return {"loss": loss.item(), **metrics, "grad_norm": grad_norm,
                "objective/kl": kl.mean().item(), "objective/scores": scores.mean().item(),
                "val/num_eos_tokens": int(samples.ended.sum()),
                "val/response_length": tokens.float().mean().item()}

    metrics = train_loop(policy, prompts, step, config, callback=callback,
                         checkpoint_dir=checkpoint_dir, eval_fn=eval_fn, desc="online DPO",
                         settings={"generation": asdict(generation)},
                         show=("objective/scores", "objective/kl"))
    return policy, metrics
