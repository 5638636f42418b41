"""One DPO epoch over the preference pairs of notebook 04, timed: the budget of a single DPO run.

    python benchmarks/dpo_epoch.py                          # cpu: notebook 04's run folder, then one epoch
    python benchmarks/dpo_epoch.py --preset ci --out runs/ci

Notebook 05 trains each β of its sweep for the preset's ``dpo.epochs`` (0.4 at ``cpu``, to fit the sweep
and PPO in its budget); this script trains one β for whole epochs, so the trainer's own speed is measured.
It reads (or builds) π_ref and the pairs in ``--out``, trains in a run folder of its own (notebook 05's
runs stay untouched), then prints the DPO run's seconds (reference precompute + training; evaluations
excluded, as in notebook 05's cost table), its token passes, and π_ref's and the policy's ground-truth
reward and sequence KL on the held-out prompts.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

from dpo_edu import runs, study
from dpo_edu.presets import get_preset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["ci", "cpu", "gpt2"])
    parser.add_argument("--out", type=Path, default=Path("runs/cpu"), help="notebook 04's run folder")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    preset = get_preset(args.preset, {"dpo.epochs": args.epochs})
    shared = study.prepare(preset, args.out, seed=args.seed)  # π_ref, the pairs, π_ref's evaluation
    pairs = shared.pairs
    config = replace(preset.dpo, beta=args.beta, seed=args.seed)
    config = replace(config, eval_every=runs.eval_every(config.total_steps(len(pairs.train)), 3))

    bench_dir = args.out / "bench_dpo_epoch"  # a run folder of its own: notebook 05's runs stay as they are
    start = time.perf_counter()
    run = runs.offline_run(preset, bench_dir, shared.ref, pairs, shared.reward, shared.prompts, config, "dpo",
                           f"DPO β={args.beta:g}")
    wall = time.perf_counter() - start
    shutil.rmtree(bench_dir)
    ref_eval = shared.reference.metrics[0]
    prompts = shared.prompts["report"]

    cost, evals = run.cost, [row for row in run.metrics if "eval/reward" in row]
    steps = evals[-1]["step"]
    print(f"\npreset {args.preset}: {len(pairs.train):,} pairs, {args.epochs:g} epoch(s) = {steps} steps of "
          f"{preset.dpo.batch_size}, β = {args.beta:g}")
    print(f"DPO run: {cost['seconds']:.1f} s (reference precompute + training; {wall:.1f} s with "
          f"{len(evals)} evaluations), {cost['forward_tokens']:,} forward / {cost['backward_tokens']:,} "
          f"backward token passes, peak {cost['peak_memory_mb']:,.0f} MiB")
    print(f"report prompts: {len(prompts)} × {preset.frontier.samples_per_prompt} samples; π_ref's ground-truth "
          f"reward {ref_eval['eval/reward']:.3f}")
    for row in evals:
        print(f"  step {row['step']:>5}: reward {row['eval/reward']:.3f}, KL(π‖π_ref) {row['eval/kl']:.2f}")


if __name__ == "__main__":
    main()
