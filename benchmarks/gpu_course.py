"""Notebooks 04–07 with the ``gpt2`` preset on one GPU, then a timing table of every stage.

    python benchmarks/gpu_course.py                    # gpt2 from the Hub, the paper's classifier
    python benchmarks/gpu_course.py --offline          # no network: gpt2's shapes from random weights,
                                                       # a tokenizer and the TF-IDF reward trained here
    python benchmarks/gpu_course.py --preset ci --offline --out runs/gpu_dry   # a dry run on a CPU (~2 min)

The whole ``gpt2`` frontier: SFT, 24,000 pairs from 4,000 prefixes, the reward model, 4 DPO β and 4 PPO
target-KL runs (the preset's whole sweeps, not notebook 05's middle two), Best-of-N, notebook 06's RLOO,
GRPO and online DPO at one β each, and notebook 07's pitfalls, aimed at ≤ 30 minutes on one H100.
``--offline`` times the same shapes (124 M parameters, 50,257-token vocabulary, 256-token SFT
sequences, 48 sampled tokens) where the Hub is unreachable; its rewards mean nothing, its seconds do.
The run folder keeps every stage, so a second call only reloads; use a fresh ``--out`` to time again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dpo_edu.cli import run_course
from dpo_edu.presets import get_preset

NOTEBOOKS = ["04_gpt2_preferences", "05_rlhf_vs_dpo", "06_after_dpo", "07_what_goes_wrong"]
OFFLINE = {"model.random_init": True, "ground_truth.classifier": "tfidf"}


def whole_sweeps(preset: str) -> dict:
    """Overrides that give notebook 05 the preset's whole DPO and PPO sweeps and Best-of-N (its own
    SWEEP = False trains the middle two); notebook 06 reads them back."""
    frontier = get_preset(preset, verbose=False).frontier
    return {f"frontier.{name}": list(getattr(frontier, name))
            for name in ("dpo_betas", "ppo_targets", "best_of_n")}


def stage_rows(out: Path) -> list[dict]:
    """One row per notebook and per metered stage of the run folder (its ``cost.json``), in running order."""
    summary = json.loads((out / "summary.json").read_text())
    rows = [{"stage": f"notebook {name[:2]} (all of it)", "seconds": entry["seconds"]}
            for name, entry in summary["notebooks"].items()]
    stages = sorted(out.rglob("cost.json"), key=lambda path: _running_order(path.parent.relative_to(out)))
    for cost_file in stages:
        rows.append({"stage": cost_file.parent.relative_to(out).as_posix(), **json.loads(cost_file.read_text())})
    return rows


def _running_order(stage: Path) -> tuple:
    """Shallow stages first (reward_model/, reference/), then by each folder's name and number:
    runs/ppo/target_2 before runs/ppo/target_16."""
    def part(name: str) -> tuple:
        prefix, _, number = name.rpartition("_")
        return (prefix, float(number)) if number.replace(".", "", 1).isdigit() else (name, 0.0)

    return len(stage.parts), [part(name) for name in stage.parts]


def timing_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table: seconds, forward/backward token passes, peak memory."""
    lines = [f"{'stage':<34}{'seconds':>10}{'fwd tokens':>14}{'bwd tokens':>14}{'peak MiB':>10}"]
    for row in rows:
        tokens = [f"{row[key]:>14,}" if key in row else f"{'':>14}" for key in ("forward_tokens", "backward_tokens")]
        memory = f"{row['peak_memory_mb']:>10,.0f}" if "peak_memory_mb" in row else f"{'':>10}"
        lines.append(f"{row['stage']:<34}{row['seconds']:>10,.1f}{''.join(tokens)}{memory}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2", choices=["gpt2", "cpu", "ci"])
    parser.add_argument("--offline", action="store_true", help="random weights + local tokenizer and reward")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_course"))
    args = parser.parse_args(argv)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA GPU visible)"
    if args.preset == "gpt2" and not torch.cuda.is_available():
        sys.exit("the gpt2 preset wants a CUDA GPU; for a dry run on a CPU use --preset ci --offline")
    overrides = {**whole_sweeps(args.preset), **(OFFLINE if args.offline else {})}
    summary = run_course(args.preset, args.out, NOTEBOOKS, overrides=overrides)
    print(f"\n{args.preset}{' --offline (random init)' if args.offline else ''} on {device}, torch {torch.__version__}")
    rows = stage_rows(args.out)
    print(timing_table(rows))
    total = sum(entry["seconds"] for entry in summary["notebooks"].values())
    print(f"{'total (notebooks 04–07)':<34}{total:>10,.1f}   = {total / 60:.1f} min")


if __name__ == "__main__":
    main()
