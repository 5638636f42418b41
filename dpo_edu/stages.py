"""One rule for every stage of a run folder: built once, reused while its settings match.

A stage is a folder. ``settings.json``, written last, says what made it, and ``contents.json``
what it wrote (each file's bytes, SHA-256 and JSONL rows). A stage whose settings match and whose
files are still those is reused; one started with the same settings but cut short resumes (its
``checkpoint/``); any other is emptied and built again, with the reason printed (a file cut short
or edited is named), and logged in ``events.jsonl`` (``events_since``: what a notebook reused,
resumed or built). A stage names what it was built on by the ``settings`` of the stages it read,
never by reading their files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .data import write_atomically

SETTINGS = "settings.json"  # a finished stage
BUILDING = "building.json"  # a stage being built, with these settings
CONTENTS = "contents.json"  # a finished stage's files: bytes, SHA-256, JSONL rows
EVENTS = "events.jsonl"  # one line each time the stage is asked for: reused, resumed or built
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


def contents(folder: Path) -> dict:
    """Every file of a stage folder: its bytes, SHA-256 and, for JSONL, its rows."""
    out = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in (SETTINGS, BUILDING, CONTENTS, EVENTS):
            continue
        digest, rows = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                rows += block.count(b"\n")
        entry = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
        out[name] = {**entry, "rows": rows} if path.suffix == ".jsonl" else entry
    return out


def _altered(folder: Path, name: str) -> list[str]:
    """How the files recorded when the stage finished differ from those there now."""
    if not (folder / CONTENTS).exists():  # finished by a dpo_edu that did not record its files
        print(f"{name}: recording the files of {folder} (made before stages recorded them)")
        _write(folder / CONTENTS, contents(folder))
        return []
    recorded = _read(folder / CONTENTS)
    if recorded is None:
        return [f"{CONTENTS} is unreadable"]
    now, out = contents(folder), []
    for file, then in recorded.items():
        found = now.get(file)
        if found is None:
            out.append(f"{file} is missing")
        elif found.get("rows") != then.get("rows"):
            out.append(f"{file} holds {found['rows']} rows, {then['rows']} when built")
        elif found != then:
            out.append(f"{file} has changed ({found['bytes']:,} bytes, "
                       f"{then['bytes']:,} when built)")
    return out


def finished(folder, settings: dict) -> bool:
    """Whether ``folder`` holds a finished stage of ``settings`` (``stage`` checks its files)."""
    return _read(Path(folder) / SETTINGS) == json.loads(json.dumps(settings))


def stage(folder, settings: dict, build: Callable[[Path], None], name: str) -> Stage:
    """The stage in ``folder``: kept if its settings equal ``settings`` and its files are those it
    wrote, else ``build(folder)``; the reason is printed."""
    folder = Path(folder)
    settings = json.loads(json.dumps(settings))  # as JSON reads it back: tuples become lists
    done, started = _read(folder / SETTINGS), _read(folder / BUILDING)
    altered = _altered(folder, name) if done == settings else []
    if done == settings and not altered:
        print(f"{name}: reusing {folder}")
        _log(folder, "reused")
        return Stage(folder, settings)
    if done is None and started == settings:
        print(f"{name}: resuming {folder}")
        _log(folder, "resumed", "from its checkpoint" if (folder / CHECKPOINT).exists()
             else "cut short before its first checkpoint")
    else:
        before = done if done is not None else started
        why = ("; ".join(altered) if altered else "new" if before is None
               else f"settings changed ({', '.join(changes(before, settings))})")
        print(f"{name}: {why}; building {folder}")
        history = (folder / EVENTS).read_bytes() if (folder / EVENTS).is_file() else b""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / EVENTS).write_bytes(history)  # the log outlives the files
        _write(folder / BUILDING, settings)
        _log(folder, "built", why)
    build(folder)
    shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)  # finished: the resume point is spent
    _write(folder / CONTENTS, contents(folder))  # what a reuse checks
    _write(folder / SETTINGS, settings)
    (folder / BUILDING).unlink(missing_ok=True)
    return Stage(folder, settings)


def _log(folder: Path, outcome: str, why: str = "") -> None:
    with open(folder / EVENTS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.time(), "outcome": outcome, "why": why}) + "\n")


def events_since(run_dir, start: float) -> list[dict]:
    """What became of every stage under ``run_dir`` asked for since ``start`` (a ``time.time()``):
    ``{"stage": its folder, "outcome": "reused" | "resumed" | "built", "why": …}``, in order."""
    out = []
    for path in Path(run_dir).rglob(EVENTS):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: the log is only a log
                continue
            if event.get("time", 0) >= start:
                out.append({"stage": path.parent.relative_to(run_dir).as_posix(), **event})
    return sorted(out, key=lambda event: event["time"])
