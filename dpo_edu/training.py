"""The training loop every trainer shares: SFT, the reward model, DPO, PPO and those after them.

A trainer supplies one ``step(batch, optimizer) -> metrics``; ``train_loop`` seeds, batches,
checks, logs, evaluates, calls back and checkpoints the same way for all. One AdamW update (DPO
paper, App. B: linear warmup) is θ ← AdamW(θ, clip(∇L), lr_t), lr_t = lr · min(1, (t + 1) / warmup).
Design notes: docs/notes.md#training.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .checkpoints import resume, save_checkpoint
from .progress import progress_bar
from .validate import NonFiniteError, check_int, check_positive

SCHEDULES = ("constant", "linear")
COSMETIC = ("log_every", "save_every", "progress")  # config fields that change no number


@dataclass(frozen=True)
class TrainConfig:
    """Fields every trainer shares; each trainer's config adds its own."""

    lr: float = 1e-4  # peak AdamW learning rate, reached after the warmup
    batch_size: int = 16  # rows per step (reviews for SFT, pairs for DPO, prompts for PPO)
    steps: int | None = None  # optimiser steps; None: as many as `epochs` passes take
    epochs: float = 1.0  # passes over the data, used only when `steps` is None
    warmup_steps: int = 0  # steps of linear warmup from lr / warmup_steps to lr
    schedule: str = "constant"  # after the warmup: "constant" (DPO paper) or "linear" decay to 0
    weight_decay: float = 0.0  # AdamW's decoupled decay, on matrices only (not biases, LayerNorms)
    adam_eps: float = 1e-8  # AdamW's ε (Huang et al. use 1e-5 for PPO)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None: no clipping
    grad_accum_steps: int = 1  # micro-batches per step, one backward each: same gradient
    seed: int = 0  # seeds torch and random, and the shuffle of each epoch
    disable_dropout: bool = True  # every dropout p set to 0 (TRL's disable_dropout)
    log_every: int = 10  # call the callback every this many steps (every step is logged)
    save_every: int = 100  # steps between checkpoints when there is a checkpoint_dir
    eval_every: int = 0  # steps between evaluations; 0: only after the last step
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        check_positive("lr", self.lr)
        check_positive("adam_eps", self.adam_eps)
        for name in ("batch_size", "log_every", "save_every", "grad_accum_steps"):
            check_int(name, getattr(self, name), 1)
        if self.grad_accum_steps > self.batch_size:
            raise ValueError(f"grad_accum_steps ({self.grad_accum_steps}) must be ≤ batch_size "
                             f"({self.batch_size})")
        for name in ("warmup_steps", "eval_every", "seed"):
            check_int(name, getattr(self, name), 0)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        check_positive("epochs", self.epochs)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def total_steps(self, n_items: int) -> int:
        """``steps``, or the steps that ``epochs`` passes over ``n_items`` rows take."""
        if n_items < 1:
            raise ValueError("the training data is empty: nothing to train on")
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * batches_per_epoch(n_items, self.batch_size)))


def result_settings(config) -> dict:
    """A config's fields that change results: what a checkpoint or a cached stage must match."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in COSMETIC}


# --- seeds, dropout, optimiser --------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA): same seed, same CPU run."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        pass


def disable_dropout(model: nn.Module) -> nn.Module:
    """Every ``nn.Dropout``'s p set to 0: two passes agree, so π_θ = π_ref at step 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def make_optimizer(model: nn.Module, lr: float, total_steps: int, warmup_steps: int = 0,
                   weight_decay: float = 0.0, schedule: str = "constant", eps: float = 1e-8):
    """``(AdamW, LambdaLR)`` over the trainable parameters; the schedule's factor multiplies lr."""
    check_positive("lr", lr)
    check_int("total_steps", total_steps, 1)
    check_int("warmup_steps", warmup_steps, 0)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad is False everywhere)")
    # Decay matrices (Linear/Embedding weights) only; decaying biases and LayerNorm gains hurts.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, eps=eps)

    def factor(t: int) -> float:  # t = optimiser steps already taken
        warm = min(1.0, (t + 1) / warmup_steps) if warmup_steps else 1.0  # min(1, (t+1)/warmup)
        if schedule == "linear" and t >= warmup_steps:
            warm *= max(0.0, 1 - (t - warmup_steps) / max(1, total_steps - warmup_steps))
        return warm

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Optimizer:
    """AdamW, its schedule, clipping and the finite checks: what a trainer's step updates with."""

    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int):
        self.model, self.grad_clip = model, config.grad_clip
        self.adamw, self.schedule = make_optimizer(model, config.lr, total_steps,
                                                   config.warmup_steps, config.weight_decay,
                                                   config.schedule, config.adam_eps)

    @property
    def lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def zero_grad(self) -> None:
        self.adamw.zero_grad(set_to_none=True)

    def step(self, batch: Batch) -> float:
        """Clip ‖g‖ and take one AdamW step; returns ‖g‖ before clipping, refused if not finite."""
        grad_norm = clip_gradients(self.model, self.grad_clip)
        check_finite_loss(grad_norm, batch, "the gradient norm")  # before it reaches every weight
        self.adamw.step()
        return grad_norm

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.schedule.load_state_dict(state["schedule"])


# --- batches, checks, clipping --------------------------------------------------------------------


class Batch(NamedTuple):
    step: int  # optimiser steps done before this batch (0-based)
    epoch: int  # pass over the data this batch belongs to
    index: int  # position of the batch within its epoch
    rows: list[int]  # indices into the training list
    items: list  # the rows themselves


def batches_per_epoch(n_items: int, batch_size: int) -> int:
    """Batches in one pass; the last is smaller when ``batch_size`` does not divide ``n_items``."""
    return math.ceil(n_items / batch_size)


def iterate_batches(items: Sequence, batch_size: int, seed: int = 0, start_step: int = 0,
                    shuffle: bool = True) -> Iterator[Batch]:
    """Endless batches, reshuffled each epoch by ``Random(seed + epoch)``: a resumed run sees the
    batches the uninterrupted one saw, whatever the random state."""
    check_int("batch_size", batch_size, 1)
    check_int("start_step", start_step, 0)
    if not items:
        raise ValueError("items is empty: nothing to batch")
    per_epoch = batches_per_epoch(len(items), batch_size)
    step = start_step
    epoch, order = None, None
    while True:
        e, index = divmod(step, per_epoch)
        if e != epoch:
            epoch, order = e, list(range(len(items)))
            if shuffle:
                random.Random(seed + epoch).shuffle(order)
        rows = order[index * batch_size : (index + 1) * batch_size]
        yield Batch(step, epoch, index, rows, [items[r] for r in rows])
        step += 1


def _where(batch: Batch) -> str:
    rows = ", ".join(map(str, batch.rows[:8])) + (", …" if len(batch.rows) > 8 else "")
    return (f"at step {batch.step + 1} (epoch {batch.epoch}, batch {batch.index}, rows [{rows}]): "
            "lower the learning rate, keep grad_clip on, or inspect those rows")


def check_finite_loss(loss: Tensor | float, batch: Batch, name: str = "loss") -> None:
    """Raise ``FloatingPointError`` naming the step and the batch when ``loss`` is NaN or ±inf."""
    value = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"{name} is {value.item()} {_where(batch)}")


def finite_loss(loss_fn: Callable, rows, batch: Batch) -> tuple[Tensor, dict]:
    """``loss_fn(rows)``, its loss finite; else a ``FloatingPointError`` naming the step and the
    batch, also when a loss refused a non-finite input (the advantages of a diverged critic)."""
    try:
        loss, metrics = loss_fn(rows)
    except NonFiniteError as error:
        raise FloatingPointError(f"{error} {_where(batch)}") from error
    check_finite_loss(loss, batch)
    return loss, metrics


def check_finite_scores(scores: Tensor, batch: Batch, group: int = 1) -> None:
    """Raise ``FloatingPointError`` naming the step and the prompts (rows of ``batch``) whose
    samples scored NaN or ±inf (a prompt sampled ``group`` times owns ``group`` consecutive
    scores)."""
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        prompts = sorted({batch.rows[i // group] for i in bad})
        raise FloatingPointError(f"the reward gave a non-finite score at step {batch.step + 1} for "
                                 f"prompts {prompts[:8]}: inspect the reward")


def clip_gradients(model: nn.Module, max_norm: float | None) -> float:
    """‖g‖₂ before clipping; with ``max_norm``, g ← g · min(1, max_norm / ‖g‖₂)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in params])).item()
    return torch.nn.utils.clip_grad_norm_(params, max_norm).item()


def accumulate_gradients(loss_fn: Callable[[list], tuple[Tensor, dict]], batch: Batch,
                         micro_batches: int = 1) -> tuple[float, dict]:
    """Backward of ``batch`` in consecutive parts, each weighted by its share of the rows:
    Σ_k (n_k / n) ∇L_k = ∇L. Returns the batch's loss and metrics; adds to ``.grad``."""
    n, parts = len(batch.items), []
    for k in range(micro_batches):
        part = batch.items[k * n // micro_batches : (k + 1) * n // micro_batches]
        if part:
            parts.append(part)
    if len(parts) == 1:  # the plain step, bit for bit
        loss, metrics = finite_loss(loss_fn, batch.items, batch)
        loss.backward()
        return loss.item(), metrics
    total, metrics = 0.0, {}
    for part in parts:
        loss, part_metrics = finite_loss(loss_fn, part, batch)
        weight = len(part) / n
        (loss * weight).backward()  # the graph of this part is freed here
        total += loss.item() * weight
        for key, value in part_metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value * weight
    return total, metrics


def minimize(loss_fn: Callable[[list], tuple[Tensor, dict]], micro_batches: int = 1):
    """A supervised trainer's ``step``: one AdamW step on ``loss_fn(rows) -> (loss, metrics)``."""

    def step(batch: Batch, optimizer: Optimizer) -> dict:
        optimizer.zero_grad()
        loss, metrics = accumulate_gradients(loss_fn, batch, micro_batches)
        return {"loss": loss, **metrics, "grad_norm": optimizer.step(batch)}

    return step


def minibatch_updates(optimizer: Optimizer, loss_fn: Callable[[Tensor], tuple[Tensor, dict]],
                      rows: int, mini_batch_size: int, passes: int, batch: Batch, seed: int,
                      group: int = 1) -> dict:
    """An on-policy step's updates: ``passes`` over a rollout of ``rows`` samples, reshuffled each
    time, one AdamW step per minibatch on ``loss_fn(row_indices) -> (loss, metrics)``; the mean
    metrics. A non-finite loss names the step, the pass, the minibatch and its prompts (a prompt
    sampled ``group`` times owns ``group`` consecutive rows)."""
    generator = torch.Generator().manual_seed(seed)  # seeded per step: a resumed run shuffles alike
    stats = []
    for epoch in range(passes):
        order = torch.randperm(rows, generator=generator)
        for index, start in enumerate(range(0, rows, mini_batch_size)):
            picked = order[start : start + mini_batch_size]
            where = Batch(batch.step, epoch, index,
                          [batch.rows[i // group] for i in picked.tolist()], [])
            loss, metrics = finite_loss(loss_fn, picked, where)
            optimizer.zero_grad()
            loss.backward()
            stats.append({**metrics, "grad_norm": optimizer.step(where)})
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}


# --- the loop -------------------------------------------------------------------------------------


def train_loop(model: nn.Module, items: Sequence, step: Callable[[Batch, Optimizer], dict],
               config: TrainConfig, callback: Callable[[int, dict], Any] | None = None,
               checkpoint_dir=None, eval_fn: Callable[[], dict] | None = None, desc: str = "train",
               state: dict | None = None, settings: dict | None = None,
               show: Sequence[str] = ("loss",)) -> list[dict]:
    """Train ``model`` on ``items``; returns the metrics, one dict per step.

    ``step(batch, optimizer) -> metrics`` is one step; ``show`` names the progress bar's metrics.
    With ``checkpoint_dir`` it resumes; ``state``: resumable values; ``settings``: what must match.
    """
    total = config.total_steps(len(items))
    per_epoch = batches_per_epoch(len(items), config.batch_size)
    seed_everything(config.seed)
    if config.disable_dropout:
        disable_dropout(model)
    optimizer = Optimizer(model, config, total)
    key = {**result_settings(config), **(settings or {})}  # what a checkpoint must be made with
    done, metrics, found = (resume(checkpoint_dir, model, optimizer, key, state)
                            if checkpoint_dir is not None else (0, [], None))
    if found is not None and config.progress:
        print(f"{desc}: resuming from step {done} of {total} ({found})")
    model.train()
    bar = progress_bar(total=total, initial=done, desc=desc, disable=not config.progress)
    batches = iterate_batches(items, config.batch_size, config.seed, start_step=done)
    try:
        while done < total:
            lr = optimizer.lr
            row = step(next(batches), optimizer)
            optimizer.schedule.step()
            done += 1
            row = {"step": done, "epoch": done / per_epoch, **row, "learning_rate": lr}
            evaluate = eval_fn is not None and (
                done == total or (config.eval_every and done % config.eval_every == 0))
            if evaluate:
                row.update(eval_fn())
                model.train()
            metrics.append(row)
            if checkpoint_dir is not None and (done % config.save_every == 0 or done == total):
                save_checkpoint(checkpoint_dir, model, optimizer, done, metrics, key, state)
            bar.set_postfix({k.split("/")[-1]: f"{row[k]:.4g}" for k in show if k in row},
                            refresh=False)  # drawn at tqdm's own pace
            bar.update(1)
            if callback is not None and (done % config.log_every == 0 or done == total or evaluate):
                callback(done, dict(row))  # a copy: a callback cannot alter the log
    finally:
        bar.close()
    model.eval()
    return metrics
