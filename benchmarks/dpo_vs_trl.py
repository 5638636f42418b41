"""Throughput of our DPO trainer against TRL's DPOTrainer on the same model, pairs, batches and optimiser.

    python benchmarks/dpo_vs_trl.py                      # ci sizes, 3 alternating rounds (~3 minutes, 2 cores)
    python benchmarks/dpo_vs_trl.py --rounds 5 --steps 30 --threads 2

Setup: the tiny GPT-2 of a preset (default ``ci``: 4 layers × 128, a 2,000-token BPE trained here), random
weights, saved once; synthetic pairs from the bundled IMDb reviews (prompt: the first 2–8 words of a
review; chosen: its next words; rejected: words of another review; every completion starts with a space,
so TRL's joint tokenization and ours give the same tokens: checked). Both trainers see the same batches
in the same order (our seeded order of epoch 0, TRL with a sequential sampler over it), AdamW at a
constant learning rate, gradient clipping at 1, float32, no dropout, no gradient checkpointing.

Each run is a fresh subprocess (a fair peak RSS, no warm caches shared), and runs alternate
ours / TRL / TRL+precompute round by round, so a slow spell of the machine hits all of them. Timed: from
the reference log-probs (our precompute; TRL's dataset preparation, reference model and precompute) to the
end of the last step; model loading and imports are not timed. Reported: median pairs/s, the ratio, peak
RSS, and how far the loss curves are apart step by step (they start equal; float rounding then drifts).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("ours", "trl", "trl+precompute")


def prepare(folder: Path, preset_name: str, n_pairs: int, seed: int) -> None:
    """Model, tokenizer and pairs.jsonl in ``folder``."""
    from dpo_edu import data, models
    from dpo_edu.presets import get_preset

    preset = get_preset(preset_name, verbose=False)
    reviews = [r.text for r in data.load_imdb(n=max(preset.data.reviews, 2 * n_pairs), verbose=False)]
    tokenizer = models.train_tokenizer(reviews[: preset.data.reviews], preset.model.vocab_size,
                                       model_max_length=preset.model.n_positions)
    models.save_policy(models.build_model(preset.model, tokenizer, seed), tokenizer, folder)
    rng = random.Random(seed)
    pairs = []
    for i in range(n_pairs):
        words, other = reviews[i].split(), reviews[-1 - i].split()
        k = rng.randint(2, 8)
        pairs.append({"prompt": " ".join(words[:k]),
                      "chosen": " " + " ".join(words[k : k + rng.randint(4, 12)]),
                      "rejected": " " + " ".join(other[k : k + rng.randint(4, 12)])})
    data.save_jsonl(pairs, folder / "pairs.jsonl")
    (folder / "preset.json").write_text(json.dumps({"max_length": preset.dpo.max_length}))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime  # every thread of this process


def worker(kind: str, folder: Path, steps: int, batch_size: int, lr: float, beta: float, threads: int,
           buckets: int) -> dict:
    """One timed run in this process; returns its numbers."""
    import torch

    torch.set_num_threads(threads)
    from dpo_edu import data, models
    from dpo_edu.dpo import DPOConfig, precompute_reference_logps, tokenize_pairs, train_dpo
    from dpo_edu.training import batches_per_epoch

    pairs = data.load_jsonl(folder / "pairs.jsonl")
    max_length = json.loads((folder / "preset.json").read_text())["max_length"]
    config = DPOConfig(lr=lr, beta=beta, batch_size=batch_size, steps=steps, max_length=max_length, seed=0,
                       progress=False, warmup_steps=0, schedule="constant", grad_clip=1.0, length_buckets=buckets)
    if steps > batches_per_epoch(len(pairs), batch_size):
        raise SystemExit("--steps must fit in one epoch (the same order for both trainers)")
    policy, tokenizer = models.load_pretrained(folder)
    ref = models.load_policy(folder, tokenizer)
    rss_before = _rss_mb()
    losses = []
    if kind == "ours":
        start, cpu = time.perf_counter(), _cpu_s()
        prepared, _ = precompute_reference_logps(ref, tokenizer, pairs, config, verbose=False)
        del ref  # training holds one model
        _, metrics = train_dpo(policy, tokenizer, prepared, config)
        seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
        losses = [m["loss"] for m in metrics]
    else:
        from datasets import Dataset
        from trl import DPOConfig as TRLConfig
        from trl import DPOTrainer

        class Recording(DPOTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                losses.append(loss.item())
                return loss

        order = list(range(len(pairs)))
        random.Random(config.seed + 0).shuffle(order)  # training.iterate_batches' order of epoch 0
        precompute = kind == "trl+precompute"
        args = TRLConfig(output_dir=tempfile.mkdtemp(), report_to=[], per_device_train_batch_size=batch_size,
                         max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
                         weight_decay=0.0, max_grad_norm=1.0, beta=beta, max_length=max_length, use_cpu=True,
                         bf16=False, gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
                         logging_steps=10**6, train_sampling_strategy="sequential", dataloader_num_workers=0,
                         seed=0, precompute_ref_log_probs=precompute)
        start, cpu = time.perf_counter(), _cpu_s()
        trainer = Recording(model=policy, ref_model=None if precompute else ref, args=args,
                            train_dataset=Dataset.from_list([pairs[i] for i in order]), processing_class=tokenizer)
        if precompute:
            del ref
        trainer.train()
        seconds, cpu = time.perf_counter() - start, _cpu_s() - cpu
        rows, _ = tokenize_pairs(tokenizer, [pairs[i] for i in order[:64]], max_length)
        for ours, theirs in zip(rows, trainer.train_dataset):  # the same tokens went in
            assert (ours["prompt_ids"], ours["chosen_ids"]) == (theirs["prompt_ids"], theirs["chosen_ids"])
    return {"kind": kind, "seconds": seconds, "pairs_per_s": steps * batch_size / seconds,
            "cpu_seconds": cpu, "pairs_per_cpu_s": steps * batch_size / cpu, "losses": losses,
            "rss_before_mb": rss_before, "peak_rss_mb": _rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ci", help="sizes of the model and the rows (ci or cpu)")
    parser.add_argument("--pairs", type=int, default=320, help="pairs in the dataset")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run, at most one epoch")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every trainer")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (constant)")
    parser.add_argument("--beta", type=float, default=0.1, help="β of the DPO loss")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--buckets", type=int, default=3, help="our length_buckets (forward passes per step)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ", ".join(KINDS))
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, folder = args.worker
        result = worker(kind, Path(folder), args.steps, args.batch_size, args.lr, args.beta, args.threads,
                        args.buckets)
        print("RESULT " + json.dumps(result))
        return

    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.preset, args.pairs, seed=0)
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for round_ in range(args.rounds):
            for kind in kinds:
                cmd = [sys.executable, __file__, "--worker", kind, str(folder), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--beta", str(args.beta),
                       "--threads", str(args.threads), "--buckets", str(args.buckets)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
                if out.returncode or not lines:
                    raise SystemExit(f"{kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
                runs[kind].append(json.loads(lines[-1][len("RESULT "):]))
                r = runs[kind][-1]
                print(f"round {round_ + 1} {kind:>15}: {r['pairs_per_s']:7.1f} pairs/s ({r['seconds']:.1f} s wall, "
                      f"{r['cpu_seconds']:.1f} s CPU)",
                      flush=True)

    print(f"\npreset {args.preset}, {args.pairs} pairs, {args.steps} steps × {args.batch_size} pairs, "
          f"{args.threads} thread(s), our length_buckets={args.buckets}; median of {args.rounds} alternating rounds")
    print(f"{'trainer':>15} | {'pairs/s':>7} | {'vs TRL':>6} | {'pairs/CPU-s':>11} | {'vs TRL':>6} | "
          f"{'peak RSS MB':>11} | {'RSS at start MB':>15}")

    def median(kind, key):
        return statistics.median(r[key] for r in runs[kind])

    for kind in kinds:
        ratios = [f"{median(kind, key) / median('trl', key):5.2f}×" if "trl" in runs else "     -"
                  for key in ("pairs_per_s", "pairs_per_cpu_s")]
        print(f"{kind:>15} | {median(kind, 'pairs_per_s'):7.1f} | {ratios[0]:>6} | "
              f"{median(kind, 'pairs_per_cpu_s'):11.1f} | {ratios[1]:>6} | {median(kind, 'peak_rss_mb'):11.0f} | "
              f"{median(kind, 'rss_before_mb'):15.0f}")
    if "ours" in runs:
        ours = runs["ours"][0]["losses"]
        for kind in kinds:
            if kind != "ours":
                theirs = runs[kind][0]["losses"]
                diff = [abs(a - b) for a, b in zip(ours, theirs)]
                print(f"loss curves, ours vs {kind}: step 0 {ours[0]:.6f} vs {theirs[0]:.6f}, last "
                      f"{ours[-1]:.6f} vs {theirs[-1]:.6f}, max |Δloss| over {len(diff)} steps {max(diff):.1e}")


if __name__ == "__main__":
    main()
