"""Reference trajectories at the ``ci`` preset: what a refactor must leave unchanged.

Notebooks 04 and 05 at ``ci`` fill a run folder; this script reads from it every number that does not
depend on the machine's speed (per-step metrics of SFT, the reward model, DPO β = 0.1 and PPO target 2,
their last evaluation's samples and token counts, and the notebooks' recorded values) and writes them to
``tests/trajectories/ci.json``. ``tests/test_trajectories.py`` compares a fresh run with that file.

    python scripts/pin_trajectories.py                 # run notebooks 04-05 at ci, then pin
    python scripts/pin_trajectories.py --from RUN_DIR  # pin an existing ci run folder

Re-pin only in a commit of its own whose message says which change moved the numbers, and why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = ROOT / "tests" / "trajectories" / "ci.json"
TOLERANCE = 1e-6  # relative and absolute, for floats; everything else must be equal
MACHINE_DEPENDENT = {"cost_ratio_seconds"}  # wall-clock: never the same twice
THREADS = 2  # torch's CPU sums depend on the thread count: the course's kernels run with this many to compare
# stage name -> its folder in a ci run folder (the first β and the target of ci's sweep, seed 0)
RUNS = {"sft": "sft", "reward_model": "reward_model", "dpo": "runs/dpo/beta_0.1/seed_0",
        "ppo": "runs/ppo/target_4/seed_0"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect(run_dir) -> dict:
    """The machine-independent numbers of a ``ci`` run folder of notebooks 04-05."""
    run_dir = Path(run_dir)
    pinned = {name: {"metrics": _jsonl(run_dir / folder / "metrics.jsonl")} for name, folder in RUNS.items()}
    for name in ("dpo", "ppo"):
        pinned[name]["samples"] = _jsonl(run_dir / RUNS[name] / "samples.jsonl")
        cost = json.loads((run_dir / RUNS[name] / "cost.json").read_text())
        pinned[name]["tokens"] = {key: cost[key] for key in ("forward_tokens", "backward_tokens")}
    summary = json.loads((run_dir / "summary.json").read_text())
    pinned["records"] = {notebook: {k: v for k, v in entry["records"].items() if k not in MACHINE_DEPENDENT}
                         for notebook, entry in summary["notebooks"].items()}
    return pinned


def environment() -> dict:
    """What else the numbers depend on: torch's build and the CPU's vector instructions."""
    import torch

    return {"torch": str(torch.__version__), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": THREADS}


def differences(pinned, now, path: str = "") -> list[str]:
    """Where ``now`` departs from ``pinned``: floats beyond TOLERANCE, anything else unequal, keys missing.

    Keys that ``now`` adds are allowed (a new metric); a key it lacks is a difference.
    """
    if isinstance(pinned, dict) and isinstance(now, dict):
        return [line for key in pinned for line in
                (differences(pinned[key], now[key], f"{path}/{key}") if key in now else [f"{path}/{key}: missing"])]
    if isinstance(pinned, list) and isinstance(now, list):
        if len(pinned) != len(now):
            return [f"{path}: {len(now)} entries, pinned {len(pinned)}"]
        return [line for i, (a, b) in enumerate(zip(pinned, now)) for line in differences(a, b, f"{path}[{i}]")]
    if isinstance(pinned, float) and isinstance(now, (int, float)) and not isinstance(now, bool):
        if math.isclose(pinned, now, rel_tol=TOLERANCE, abs_tol=TOLERANCE) or (math.isnan(pinned) and math.isnan(now)):
            return []
        return [f"{path}: {now!r}, pinned {pinned!r}"]
    return [] if pinned == now and type(pinned) is type(now) else [f"{path}: {now!r}, pinned {pinned!r}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--from", dest="run_dir", type=Path, help="an existing ci run folder of notebooks 04-05")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:
        from dpo_edu.cli import run_course

        run_dir = Path(tempfile.mkdtemp(prefix="pin_ci_"))
        os.environ["OMP_NUM_THREADS"] = str(THREADS)  # read by torch in each notebook's kernel
        run_course("ci", run_dir, ["04", "05"])
    pinned = {"environment": environment(), **collect(run_dir)}
    if PIN.exists():
        changed = differences(json.loads(PIN.read_text()), pinned)
        print(f"{len(changed)} difference(s) from the old pin" + (":" if changed else ""))
        for line in changed[:20]:
            print("  " + line)
    PIN.parent.mkdir(parents=True, exist_ok=True)
    PIN.write_text(json.dumps(pinned, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {PIN}")


if __name__ == "__main__":
    main()
