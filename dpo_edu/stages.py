"""One rule for every stage of a run folder: built once, reused while its settings match.

A stage is a folder. ``settings.json``, written last, says what made it; a stage whose settings
match is reused, one started with the same settings but cut short resumes (its ``checkpoint/``),
and any other is emptied and built again, with the reason printed. A stage names what it was built
on by the ``settings`` of the stages it read, never by reading their files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .data import write_atomically

SETTINGS = "settings.json"  # a finished stage
BUILDING = "building.json"  # a stage being built, with these settings
CHECKPOINT = "checkpoint"  # a trainer's resume point, inside the stage's folder


@dataclass(frozen=True)
class Stage:
    folder: Path  # where its files are
    settings: dict  # what made it: the key of every stage built on it


def fingerprint(value) -> str:
    """A short hash of any JSON-able value (a list of prompts, say)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # none, or cut short: not a finished stage


def _write(path: Path, settings: dict) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(settings, indent=1, sort_keys=True)))


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(old: dict, new: dict) -> list[str]:
    """The dotted names of the settings that differ: ``["dpo.beta", "seed"]``."""
    old, new = _flat(old), _flat(new)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def stage(folder, settings: dict, build: Callable[[Path], None], name: str) -> Stage:
    """The stage in ``folder``: kept if its settings equal ``settings``, else ``build(folder)``."""
    folder = Path(folder)
    settings = json.loads(json.dumps(settings))  # as JSON reads it back: tuples become lists
    done, started = _read(folder / SETTINGS), _read(folder / BUILDING)
    if done == settings:
        print(f"{name}: reusing {folder}")
        return Stage(folder, settings)
    if done is None and started == settings:
        print(f"{name}: resuming {folder}")
    else:
        before = done if done is not None else started
        why = ("new" if before is None
               else f"settings changed ({', '.join(changes(before, settings))})")
        print(f"{name}: {why}; building {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        _write(folder / BUILDING, settings)
    build(folder)
    shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)  # finished: the resume point is spent
    _write(folder / SETTINGS, settings)
    (folder / BUILDING).unlink(missing_ok=True)
    return Stage(folder, settings)
