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
from pathlib import Path

from dpo_edu import evaluate, pipeline
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
    ref = pipeline.reference_policy(preset, args.out, seed=args.seed)
    reward = pipeline.ground_truth_reward(preset, args.out, seed=args.seed)
    pairs = pipeline.preference_pairs(preset, args.out, ref=ref, reward=reward, seed=args.seed)
    prompts = pipeline.eval_prompts(preset, ref.tokenizer, preset.frontier.eval_prompts, seed=args.seed)
    ref_eval, _ = evaluate.evaluate_policy(ref.policy, ref.policy, ref.tokenizer, prompts, reward, preset.generation,
                                           seed=args.seed, batch_size=len(prompts))

    bench_dir = args.out / "bench_dpo_epoch"  # a run folder of its own: notebook 05's cached runs stay as they are
    start = time.perf_counter()
    run = pipeline.dpo_run(preset, bench_dir, ref=ref, pairs=pairs, reward=reward, prompts=prompts, beta=args.beta,
                           seed=args.seed)
    wall = time.perf_counter() - start
    shutil.rmtree(bench_dir)

    cost, evals = run.cost, [row for row in run.metrics if "eval/reward" in row]
    steps = evals[-1]["step"]
    print(f"\npreset {args.preset}: {len(pairs.train):,} pairs, {args.epochs:g} epoch(s) = {steps} steps of "
          f"{preset.dpo.batch_size}, β = {args.beta:g}")
    print(f"DPO run: {cost['seconds']:.1f} s (reference precompute + training; {wall:.1f} s with "
          f"{len(evals)} evaluations), {cost['forward_tokens']:,} forward / {cost['backward_tokens']:,} "
          f"backward token passes, peak {cost['peak_memory_mb']:,.0f} MiB")
    print(f"held-out prompts: {len(prompts)}; π_ref's ground-truth reward {ref_eval['eval/reward']:.3f}")
    for row in evals:
        print(f"  step {row['step']:>5}: reward {row['eval/reward']:.3f}, KL(π‖π_ref) {row['eval/kl']:.2f}")


if __name__ == "__main__":
    main()
