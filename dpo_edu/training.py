"""The training loop every trainer shares: SFT, the reward model, and later DPO and PPO.

Each trainer supplies one function, ``step_fn(batch) -> (loss, metrics)``; ``train_loop`` does the rest
the same way for all of them: seeds, AdamW with a linear warmup (the DPO paper, Appendix B, warms its
learning rate up linearly over 150 steps), a seeded shuffle per epoch, a finite-loss check that names the
step and the batch, gradient accumulation, gradient clipping, a metrics log (one dict per step, TRL's
names), a callback for live plots, a progress bar, and checkpoints that resume to the very same numbers as
an uninterrupted run.

One optimiser step is θ ← AdamW(θ, ∇_θ L(batch), lr_t) with lr_t = lr · min(1, (t + 1) / warmup_steps),
after clipping ‖∇_θ L‖₂ to ``grad_clip``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .validate import check_int, check_positive

SCHEDULES = ("constant", "linear")
STATE_FILE = "trainer_state.pt"  # written last: its presence marks a complete checkpoint
METRICS_FILE = "metrics.jsonl"
# Fields that may change between an interrupted run and its resumption without changing any number.
RESUMABLE_CHANGES = {"log_every", "save_every", "progress"}


@dataclass
class TrainConfig:
    """Fields every trainer shares; ``SFTConfig`` and ``RewardConfig`` add their own."""

    lr: float = 1e-4  # peak AdamW learning rate, reached after the warmup
    batch_size: int = 16  # rows per optimiser step (reviews for SFT, pairs for the reward model)
    steps: int | None = None  # optimiser steps; None: as many as `epochs` passes over the data take
    epochs: float = 1.0  # passes over the data, used only when `steps` is None
    warmup_steps: int = 0  # steps of linear warmup from lr / warmup_steps to lr
    schedule: str = "constant"  # after the warmup: "constant" (the DPO paper) or "linear" decay to 0
    weight_decay: float = 0.0  # AdamW decoupled weight decay, on matrices only (not biases, LayerNorms)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None: no clipping
    grad_accum_steps: int = 1  # micro-batches per step, one backward each: the same gradient, less memory
    seed: int = 0  # seeds torch and random, and the shuffle of each epoch
    disable_dropout: bool = True  # set every dropout p to 0 (TRL's disable_dropout): deterministic steps
    log_every: int = 10  # call the callback every this many steps (metrics are logged at every step)
    save_every: int = 100  # steps between checkpoints when a checkpoint_dir is given (the last always saves)
    eval_every: int = 0  # steps between evaluations when there is eval data; 0: only after the last step
    progress: bool = True  # show a tqdm progress bar with the latest loss

    def __post_init__(self):
        check_positive("lr", self.lr)
        for name in ("batch_size", "log_every", "save_every", "grad_accum_steps"):
            check_int(name, getattr(self, name), 1)
        if self.grad_accum_steps > self.batch_size:
            raise ValueError(f"grad_accum_steps ({self.grad_accum_steps}) must be ≤ batch_size ({self.batch_size})")
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


# --- seeds, dropout, optimiser ---------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy (if present) and torch (CPU and CUDA).

    On a CPU with a fixed number of threads, the same seed then gives bit-identical runs. On a GPU some
    kernels are nondeterministic; ``torch.use_deterministic_algorithms(True)`` trades speed for that.
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        pass


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every ``nn.Dropout``'s p to 0, as TRL's ``disable_dropout_in_model``.

    With dropout, two forward passes of the same model disagree, so π_θ ≠ π_ref at step 0 (the DPO loss
    is not log 2) and the log-probs of a step are noisy; the Hub's gpt2 ships with p = 0.1.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def make_optimizer(model: nn.Module, lr: float, total_steps: int, warmup_steps: int = 0,
                   weight_decay: float = 0.0, schedule: str = "constant"):
    """``(AdamW, LambdaLR)`` over the trainable parameters; the schedule's factor multiplies ``lr``."""
    check_positive("lr", lr)
    check_int("total_steps", total_steps, 1)
    check_int("warmup_steps", warmup_steps, 0)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad is False everywhere)")
    # Decay matrices (weights of Linear/Embedding) only; decaying biases and LayerNorm gains only hurts.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)

    def factor(t: int) -> float:  # t = optimiser steps already taken
        warm = min(1.0, (t + 1) / warmup_steps) if warmup_steps else 1.0  # lr_t = lr · min(1, (t+1)/warmup)
        if schedule == "linear" and t >= warmup_steps:
            warm *= max(0.0, 1 - (t - warmup_steps) / max(1, total_steps - warmup_steps))
        return warm

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- batches, checks, clipping ---------------------------------------------------------------------------


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
    """Endless batches of ``items``, reshuffled each epoch with ``Random(seed + epoch)``.

    The order depends only on (seed, epoch), never on the random state: a run resumed at ``start_step``
    sees exactly the batches the uninterrupted run saw.
    """
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


def check_finite_loss(loss: Tensor | float, batch: Batch, name: str = "loss") -> None:
    """Raise ``FloatingPointError`` naming the step and the batch when ``loss`` is NaN or ±inf."""
    value = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
    if not torch.isfinite(value).all():
        rows = ", ".join(map(str, batch.rows[:8])) + (", …" if len(batch.rows) > 8 else "")
        raise FloatingPointError(
            f"{name} is {value.item()} at step {batch.step + 1} (epoch {batch.epoch}, batch {batch.index}, "
            f"rows [{rows}]): lower the learning rate, keep grad_clip on, or inspect those rows"
        )


def clip_gradients(model: nn.Module, max_norm: float | None) -> float:
    """The global gradient norm ‖g‖₂ before clipping; with ``max_norm``, g ← g · min(1, max_norm / ‖g‖₂)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])).item()
    return torch.nn.utils.clip_grad_norm_(params, max_norm).item()


def accumulate_gradients(step_fn: Callable[[list], tuple[Tensor, dict]], batch: Batch, micro_batches: int = 1
                         ) -> tuple[float, dict]:
    """Backward of ``batch`` in ``micro_batches`` consecutive parts; returns the batch's loss and metrics.

    With L_k the mean loss of part k (n_k of the n rows), Σ_k (n_k / n) ∇L_k = ∇L of the whole batch, so the
    gradient is the big batch's while only one part's activations are alive at a time. Exact for losses that
    average over rows (DPO, the reward model); a token-weighted mean (SFT) is then weighted by rows. The
    metrics are averaged likewise (exact for means). Adds to ``.grad``: zero the gradients before.
    """
    n, parts = len(batch.items), []
    for k in range(micro_batches):
        part = batch.items[k * n // micro_batches : (k + 1) * n // micro_batches]
        if part:
            parts.append(part)
    if len(parts) == 1:  # the plain step, bit for bit
        loss, metrics = step_fn(batch.items)
        check_finite_loss(loss, batch)
        loss.backward()
        return loss.item(), metrics
    total, metrics = 0.0, {}
    for part in parts:
        loss, part_metrics = step_fn(part)
        check_finite_loss(loss, batch)
        weight = len(part) / n
        (loss * weight).backward()  # the graph of this part is freed here
        total += loss.item() * weight
        for key, value in part_metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value * weight
    return total, metrics


# --- metrics log ------------------------------------------------------------------------------------------


def save_metrics(metrics: Sequence[dict], path) -> Path:
    """One JSON object per step; Python floats round-trip exactly (NaN is written as ``NaN``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in metrics), encoding="utf-8")
    return path


def load_metrics(path) -> list[dict]:
    """The rows written by :func:`save_metrics`."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --- checkpoints ------------------------------------------------------------------------------------------


def _config_dict(config) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def write_checkpoint(checkpoint_dir, model, metrics: Sequence[dict], state: dict, config=None) -> Path:
    """``model`` (``save_pretrained``), ``metrics`` and ``state`` with the RNG states and ``config``, in
    ``checkpoint_dir/last``. Written to a temporary folder first, then renamed, so an interrupted save never
    leaves a half checkpoint."""
    root = Path(checkpoint_dir)
    tmp, final = root / "last.tmp", root / "last"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    save_metrics(metrics, tmp / METRICS_FILE)
    config = None if config is None else _config_dict(config)
    torch.save({**state, "rng": _rng_state(), "config": config}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def read_checkpoint(path, model, config=None) -> tuple[dict, list[dict]]:
    """Restore ``model`` (in place: an optimiser keeps pointing at its tensors) and the RNG states from a
    checkpoint; returns its ``state`` and metrics. With ``config``, refuses (ValueError) a checkpoint written
    under a config whose numbers differ."""
    path = Path(path)
    # our own file (RNG states are Python objects); optimiser tensors move to their parameters when loaded
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    if config is not None and state["config"] is not None:
        now, then = _config_dict(config), state["config"]
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"checkpoint {path} was written with a different config ({', '.join(changed)}); "
                             "use a fresh checkpoint_dir, or delete this one to start over")
    model.load_state_dict(type(model).from_pretrained(path / "model").state_dict())
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state, load_metrics(path / METRICS_FILE)


def save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step: int, metrics: Sequence[dict],
                    config=None) -> Path:
    """Model, optimiser, scheduler, RNG state, metrics and step in ``checkpoint_dir/last``."""
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    return write_checkpoint(checkpoint_dir, model, metrics, state, config)


def find_checkpoint(checkpoint_dir) -> Path | None:
    """The complete checkpoint in ``checkpoint_dir``, or None."""
    for name in ("last", "last.tmp"):  # a complete last.tmp alone: a crash between removing last and the rename
        path = Path(checkpoint_dir) / name
        if (path / STATE_FILE).is_file():
            return path
    return None


def load_checkpoint(path, model, optimizer, scheduler, config=None) -> tuple[int, list[dict]]:
    """Restore a checkpoint into ``model``, ``optimizer`` and ``scheduler`` in place; returns ``(step, metrics)``."""
    state, metrics = read_checkpoint(path, model, config)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"], metrics


# --- the loop ---------------------------------------------------------------------------------------------


def train_loop(model: nn.Module, items: Sequence, step_fn: Callable[[list], tuple[Tensor, dict]], config: TrainConfig,
               callback: Callable[[int, dict], Any] | None = None, checkpoint_dir=None,
               eval_fn: Callable[[], dict] | None = None, desc: str = "train") -> list[dict]:
    """Train ``model`` on ``items`` and return the metrics, one dict per step.

    ``step_fn(batch_items)`` returns the loss to minimise and a dict of floats for the log. ``eval_fn()``
    returns eval metrics (``eval_*``), merged into the log every ``eval_every`` steps and after the last.
    ``callback(step, metrics)`` runs every ``log_every`` steps and after the last (live plots). With
    ``checkpoint_dir``, a checkpoint is saved every ``save_every`` steps, and a run finding one there
    resumes from it: the result is identical to a run never interrupted.
    """
    total = config.total_steps(len(items))
    per_epoch = batches_per_epoch(len(items), config.batch_size)
    seed_everything(config.seed)
    if config.disable_dropout:
        disable_dropout(model)
    optimizer, scheduler = make_optimizer(model, config.lr, total, config.warmup_steps, config.weight_decay,
                                          config.schedule)
    step, metrics = 0, []
    found = find_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is not None:
        step, metrics = load_checkpoint(found, model, optimizer, scheduler, config)
        if config.progress:
            print(f"{desc}: resuming from step {step} of {total} ({found})")
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not config.progress)
    batches = iterate_batches(items, config.batch_size, config.seed, start_step=step)
    try:
        while step < total:
            batch = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss, step_metrics = accumulate_gradients(step_fn, batch, config.grad_accum_steps)
            grad_norm = clip_gradients(model, config.grad_clip)
            check_finite_loss(grad_norm, batch, "the gradient norm")  # before the step spreads it to every weight
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            row = {"step": step, "epoch": step / per_epoch, "loss": loss, **step_metrics,
                   "grad_norm": grad_norm, "learning_rate": lr}
            if eval_fn is not None and ((config.eval_every and step % config.eval_every == 0) or step == total):
                row.update(eval_fn())
                model.train()
            metrics.append(row)
            if checkpoint_dir is not None and (step % config.save_every == 0 or step == total):
                save_checkpoint(checkpoint_dir, model, optimizer, scheduler, step, metrics, config)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)  # drawn at tqdm's own pace
            bar.update(1)
            if callback is not None and (step % config.log_every == 0 or step == total):
                callback(step, dict(row))  # a copy: a callback cannot alter the log
    finally:
        bar.close()
    model.eval()
    return metrics
