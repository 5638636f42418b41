"""What a pipeline costs: wall-clock, forward and backward token passes, peak memory.

Token passes compare RLHF and DPO fairly across machines (≈ 2 × parameters FLOPs per token forward,
twice that backward). Peak memory is the CUDA allocator's peak on a GPU; on a CPU, the models'
weights plus the peak growth of resident memory above its level at entry (docs/notes.md, Cost).

    with CostMeter(policy, reward_model) as cost:
        ...train...
    cost.summary()   # {"seconds", "forward_tokens", "backward_tokens", "peak_memory_mb"}
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

_STATM = Path("/proc/self/statm")


def resident_mb() -> float:
    """The process's resident memory in MiB (Linux); 0 where /proc is missing."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``; else nothing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): reused memory may go unseen
        pass


class CostMeter:
    """Counts token passes through ``models`` and peak memory while the ``with`` block runs."""

    def __init__(self, *models: nn.Module):
        # Hook the transformer body (a Hugging Face model's ``base_model``): trainers may call it
        # directly (DPO runs the LM head only where a response token is predicted). Weak references:
        # a model deleted mid-run (DPO's π_ref after the precompute) is freed, not kept alive here.
        self._bodies = [weakref.ref(getattr(m, "base_model", m)) for m in models]
        self._cuda = any(p.is_cuda for m in models for p in m.parameters())
        self.weights_mb = sum(p.numel() * p.element_size()
                              for m in models for p in m.parameters()) / 2**20
        self.forward_tokens = self.backward_tokens = 0
        self.seconds = self.peak_memory_mb = 0.0
        self._hooks, self._paused = [], False

    @contextmanager
    def paused(self):
        """Leave out what runs inside (e.g. an evaluation both pipelines share): no tokens, no
        seconds, and on a GPU no memory peak."""
        start, self._paused = time.perf_counter(), True
        if self._cuda:
            self._record_cuda_peak()
        try:
            yield
        finally:
            if self._cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                release_free_memory()  # what the pause freed, or the run would reuse it unseen
            self._paused = False  # after the release: the sampler never sees the pause's memory
            self.seconds -= time.perf_counter() - start

    def _record_cuda_peak(self) -> None:
        self.peak_memory_mb = max(self.peak_memory_mb, torch.cuda.max_memory_allocated() / 2**20)

    def _count(self, module, args, kwargs):
        if self._paused:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            self.forward_tokens += ids.numel()
            if torch.is_grad_enabled():
                self.backward_tokens += ids.numel()

    def _record_resident_peak(self) -> None:
        # weights + growth above the entry level: what the run holds, not what the notebook held
        self.peak_memory_mb = max(self.peak_memory_mb,
                                  self.weights_mb + max(0.0, resident_mb() - self._entry_mb))

    def _sample_memory(self):
        while not self._stop.wait(0.02):
            if not self._paused:
                self._record_resident_peak()

    def __enter__(self) -> "CostMeter":
        bodies = [body for body in (ref() for ref in self._bodies) if body is not None]
        self._hooks = [body.register_forward_pre_hook(self._count, with_kwargs=True)
                       for body in bodies]
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            release_free_memory()
            self._entry_mb = resident_mb()
            self._record_resident_peak()
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample_memory, daemon=True)
            self._sampler.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start
        for hook in self._hooks:
            hook.remove()
        if self._cuda:
            self._record_cuda_peak()
        else:
            self._stop.set()
            self._sampler.join()
            self._record_resident_peak()

    def summary(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 2),
            "forward_tokens": self.forward_tokens,
            "backward_tokens": self.backward_tokens,
            "peak_memory_mb": round(self.peak_memory_mb, 1),
        }
