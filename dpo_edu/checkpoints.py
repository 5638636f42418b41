"""Checkpoints that resume a run to the very numbers of an uninterrupted one; the metrics log.

A checkpoint is one folder, ``last``: the weights, the optimiser and its schedule, the RNG states,
the metrics so far and a trainer's own ``state``, saved under the settings that made them.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .data import write_atomically

STATE_FILE = "trainer_state.pt"  # written last: its presence marks a complete checkpoint
METRICS_FILE = "metrics.jsonl"


# --- metrics log ----------------------------------------------------------------------------------


def save_metrics(metrics: Sequence[dict], path) -> Path:
    """One JSON object per step; Python floats round-trip exactly (NaN is written as ``NaN``)."""
    return write_atomically(path, lambda f: f.writelines(json.dumps(row) + "\n" for row in metrics))


def load_metrics(path) -> list[dict]:
    """The rows written by :func:`save_metrics`."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- checkpoints ----------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(checkpoint_dir, model: nn.Module, optimizer, step: int, metrics: Sequence[dict],
                    settings: dict | None = None, state: dict | None = None) -> Path:
    """Weights, optimiser, RNG states, metrics and a trainer's ``state`` in ``checkpoint_dir/last``,
    written to ``last.tmp`` first, then renamed: an interrupted save leaves the previous one."""
    root = Path(checkpoint_dir)
    tmp, final = root / "last.tmp", root / "last"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_metrics(metrics, tmp / METRICS_FILE)
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "state": dict(state or {}), "rng": _rng_state(),
                "settings": settings}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def find_checkpoint(checkpoint_dir) -> Path | None:
    """The complete checkpoint in ``checkpoint_dir``, or None."""
    for name in ("last", "last.tmp"):  # a complete last.tmp alone: a crash before the rename
        path = Path(checkpoint_dir) / name
        if (path / STATE_FILE).is_file():
            return path
    return None


def load_checkpoint(path, model: nn.Module, optimizer, settings: dict | None = None,
                    state: dict | None = None) -> tuple[int, list[dict]]:
    """Restore a checkpoint in place (``state`` updated too); returns ``(step, metrics)``.
    With ``settings``, refuses one saved under other settings."""
    path = Path(path)
    # our own file (RNG states are Python objects); tensors move to their parameters when loaded.
    # Both files are read before anything is restored: a damaged one changes nothing.
    try:
        saved = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        metrics = load_metrics(path / METRICS_FILE)
    except Exception as error:  # truncated or corrupt: torch, zip, pickle and JSON errors alike
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read "
                                f"({type(error).__name__}: {error})") from error
    if len(metrics) != saved["step"]:  # one row a step: a metrics file cut at a line boundary
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({METRICS_FILE} holds "
                                f"{len(metrics)} rows for step {saved['step']})")
    then = saved["settings"]
    if settings is not None and then is not None:
        changed = sorted(k for k in set(settings) | set(then) if settings.get(k) != then.get(k))
        if changed:
            raise ValueError(f"checkpoint {path} was written with a different config "
                             f"({', '.join(changed)}); use a fresh checkpoint_dir, "
                             f"or delete this one")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if state is not None:
        state.update(saved["state"])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return saved["step"], metrics


class CorruptCheckpoint(Exception):
    """A checkpoint whose files cannot be read (a disk filled up, a copy cut short)."""


def resume(checkpoint_dir, model: nn.Module, optimizer, settings: dict | None = None,
           state: dict | None = None) -> tuple[int, list[dict], Path | None]:
    """``(step, metrics, path)`` of the checkpoint in ``checkpoint_dir``, restored in place;
    ``(0, [], None)`` when there is none. One that cannot be read is renamed ``NAME.corrupt``
    (kept for a look, never read again), said so, and the run starts afresh."""
    found = find_checkpoint(checkpoint_dir)
    if found is None:
        return 0, [], None
    try:
        step, metrics = load_checkpoint(found, model, optimizer, settings, state)
    except CorruptCheckpoint as error:
        aside = found.with_name(found.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        found.rename(aside)
        print(f"{error}; set aside as {aside}; training starts from step 0")
        return 0, [], None
    return step, metrics, found
