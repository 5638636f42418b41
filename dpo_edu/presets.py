"""Presets: one code path, three sizes.

A preset changes sizes and names only, never which functions run:

- ``ci``:   the tiny GPT-2, a few hundred reviews; seconds per notebook on a CPU, offline.
- ``cpu``:  the same tiny GPT-2 trained further on thousands of reviews; minutes on a laptop.
- ``gpt2``: GPT-2 (124 M) from the Hugging Face Hub; tens of minutes on one GPU.
- ``auto``: ``gpt2`` where a GPU and the Hub are reachable, else ``cpu``; it says which and why.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Preset:
    name: str  # "ci", "cpu" or "gpt2"
    description: str  # one line shown when the preset is chosen
    # --- toy problems (notebooks 01–03) ---
    toy_steps: int  # optimiser steps for tabular policies (gradient ascent, DPO)
    toy_pairs: int  # preference pairs sampled for tabular DPO
    bt_max_comparisons: int  # the largest number of comparisons in the Bradley–Terry error curve
    bt_repeats: int  # seeds averaged (median) per point of that curve


PRESETS = {
    "ci": Preset(
        name="ci",
        description="tiny GPT-2 on a few hundred reviews: seconds per notebook, CPU, offline",
        toy_steps=1500,
        toy_pairs=20_000,
        bt_max_comparisons=20_000,
        bt_repeats=3,
    ),
    "cpu": Preset(
        name="cpu",
        description="tiny GPT-2 on thousands of reviews: minutes per notebook, CPU, offline",
        toy_steps=3000,
        toy_pairs=100_000,
        bt_max_comparisons=100_000,
        bt_repeats=7,
    ),
    "gpt2": Preset(
        name="gpt2",
        description="GPT-2 (124 M) from the Hugging Face Hub: tens of minutes on one GPU",
        toy_steps=3000,
        toy_pairs=100_000,
        bt_max_comparisons=100_000,
        bt_repeats=7,
    ),
}


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers on port 443 and HF_HUB_OFFLINE is not set."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def choose_auto() -> tuple[str, str]:
    """The preset ``auto`` stands for, and why."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "no CUDA GPU is visible"
    if not hub_reachable():
        return "cpu", f"a GPU is visible but {HUB_HOST} cannot be reached (or HF_HUB_OFFLINE is set)"
    return "gpt2", f"a GPU ({torch.cuda.get_device_name()}) and {HUB_HOST} are both reachable"


def get_preset(name: str, verbose: bool = True, **overrides) -> Preset:
    """The preset called ``name`` (``auto`` resolved), with any field replaced by ``overrides``."""
    if name == "auto":
        name, why = choose_auto()
        if verbose:
            print(f"PRESET 'auto' → '{name}': {why}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or 'auto'")
    preset = PRESETS[name]
    unknown = set(overrides) - set(Preset.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown preset field(s) {sorted(unknown)} for preset {name!r}")
    preset = replace(preset, **overrides)
    if verbose:
        print(f"preset {preset.name}: {preset.description}")
    return preset
