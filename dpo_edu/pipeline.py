"""The run folder: the DPO paper's sentiment experiment (§6.1) as stages, each one ``stages.stage``.

    sft/           π_ref: GPT-2 fine-tuned on IMDb reviews        → Reference
    sentiment/     the ground-truth reward p(positive | text)     → a SentimentReward
    samples/       k samples of π_ref per prefix                   (read by pairs/)
    pairs/         every pair of them, labelled by the ground truth → Pairs
    reward_model/  Bradley–Terry on the pairs (RLHF's first step)   → Trained
    reference/, runs/  π_ref's evaluation and the alignment runs   (runs.py, study.py)

Each function returns what later stages need, its ``Stage`` included; notebook 05 on a folder that
notebook 04 filled only loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence


from . import data, models, preferences
from .checkpoints import load_metrics, save_metrics
from .cost import CostMeter
from .presets import Preset
from .reward_model import RewardModel, train_reward_model
from .sentiment import TFIDF, SentimentReward, TfidfSentiment, make_reward
from .sft import train_sft
from .stages import CHECKPOINT, Stage, fingerprint, stage
from .training import result_settings

METRICS, COST, SAMPLES = "metrics.jsonl", "cost.json", "samples.jsonl"
SFT_EVAL_TEXTS = 200  # held-out reviews for SFT's perplexity


class Reference(NamedTuple):
    policy: Any  # π_ref, in eval mode
    tokenizer: Any
    metrics: list[dict]  # SFT's, one row per step
    stage: Stage


class Pairs(NamedTuple):
    train: list[dict]  # preference records of the training prefixes
    eval: list[dict]  # those of the held-out prefixes
    scored: list[dict]  # each prefix's completions with their ground-truth rewards
    summary: preferences.PreferenceSummary
    stage: Stage


class Trained(NamedTuple):
    model: Any  # the reward model; None for an alignment run (its policy is not kept)
    metrics: list[dict]  # one row per step, evaluations merged
    samples: list[dict]  # the last evaluation's samples ([] for the reward model)
    cost: dict  # cost.CostMeter.summary(): seconds, token passes, peak memory
    stage: Stage


def imdb_splits(preset: Preset, seed: int = 0) -> tuple[list[data.Review], list[data.Review]]:
    """The preset's bundled IMDb reviews, split (seeded) into train and held-out eval."""
    reviews = data.load_imdb(n=preset.data.reviews, seed=seed)
    return data.train_eval_split(reviews, preset.data.eval_fraction, seed=seed)


def reference_settings(preset: Preset, seed: int = 0) -> dict:
    """What makes π_ref: the key of its stage, and of every stage built on it."""
    return {"model": asdict(preset.model), "data": asdict(preset.data),
            "sft": result_settings(preset.sft), "seed": seed}


def reference_policy(preset: Preset, run_dir, seed: int = 0, callback=None) -> Reference:
    """π_ref = the SFT policy, from ``run_dir/sft``, trained there first if needed."""
    settings = reference_settings(preset, seed)

    def build(folder: Path) -> None:
        train, held_out = imdb_splits(preset, seed)
        policy, tokenizer = models.init_policy(preset.model, [r.text for r in train],
                                               folder / "init", seed=seed)
        _, metrics = train_sft(policy, tokenizer, [r.text for r in train],
                               replace(preset.sft, seed=seed),
                               callback=callback, checkpoint_dir=folder / CHECKPOINT,
                               eval_texts=[r.text for r in held_out[:SFT_EVAL_TEXTS]])
        models.save_policy(policy, tokenizer, folder)
        save_metrics(metrics, folder / METRICS)
        shutil.rmtree(folder / "init")  # the random start, read back once: SFT's result replaces it

    done = stage(Path(run_dir) / "sft", settings, build, "SFT (π_ref)")
    policy, tokenizer = models.load_pretrained(done.folder, preset.model.device, preset.model.dtype)
    return Reference(policy.eval(), tokenizer, load_metrics(done.folder / METRICS), done)


def ground_truth_reward(preset: Preset, run_dir, seed: int = 0) -> SentimentReward:
    """p(positive | text): a Hub classifier, or ``tfidf`` fit on IMDb in ``run_dir/sentiment``."""
    config = preset.ground_truth
    if config.classifier != TFIDF:
        return make_reward(config.classifier, device=preset.model.device)
    settings = {"ground_truth": asdict(config), "seed": seed}
    done = stage(Path(run_dir) / "sentiment", settings,
                 lambda folder: make_reward(TFIDF, n_reviews=config.reviews,
                                            seed=seed).save(folder),
                 "ground-truth reward")
    return TfidfSentiment.load(done.folder)


def pair_prompts(tokenizer, reviews: Sequence[data.Review], n: int, seed: int = 0) -> list[str]:
    """``n`` prompts: 2–8 token prefixes of ``reviews`` (paper §6.1); skipped texts are reported."""
    # 8 tokens never need more than the first 200 characters; longer texts only slow the tokenizer
    prompts, report = data.make_prompts([r.text[:200] for r in reviews[: n * 2]], tokenizer,
                                        seed=seed)
    if report.skipped or report.truncated:
        print(report)
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} usable prompts for the {n} asked; "
                         "raise data.reviews")
    return prompts[:n]


def eval_prompts(preset: Preset, tokenizer, n: int, seed: int = 0) -> list[str]:
    """Held-out prompts for evaluating policies: prefixes of reviews never used for SFT or pairs."""
    _, held_out = imdb_splits(preset, seed)
    return pair_prompts(tokenizer, held_out, n, seed + 1)


def preference_pairs(preset: Preset, run_dir, ref: Reference, reward: SentimentReward,
                     seed: int = 0) -> Pairs:
    """π_ref's samples of training prefixes (``samples/``), every pair labelled (``pairs/``)."""
    run_dir, config = Path(run_dir), preset.pairs
    train, _ = imdb_splits(preset, seed)
    prompts = pair_prompts(ref.tokenizer, train, config.prompts, seed)
    sampling = {"format": 2, "sft": ref.stage.settings, "prompts": fingerprint(prompts),
                "seed": seed,
                "completions": config.completions, "batch_size": config.batch_size,
                "generation": asdict(preset.generation)}

    def sample(folder: Path) -> None:
        completions, ended = preferences.sample_completions(
            ref.policy, ref.tokenizer, prompts, config.completions, preset.generation, seed,
            config.batch_size)  # ended: whether π_ref emitted EOS, kept with every completion
        data.save_jsonl([{"prompt": p, "completions": c, "ended": e}
                         for p, c, e in zip(prompts, completions, ended)], folder / SAMPLES)

    samples = stage(run_dir / "samples", sampling, sample, "π_ref's samples")
    labelling = {"samples": samples.settings, "reward": preferences.reward_fingerprint(reward),
                 "eval_prompts": config.eval_prompts}

    def label(folder: Path) -> None:
        rows = data.load_jsonl(samples.folder / SAMPLES)
        pairs, scored, summary = preferences.make_preference_data(
            [r["prompt"] for r in rows], [r["completions"] for r in rows], reward,
            ended=[r["ended"] for r in rows])
        data.save_jsonl(pairs, folder / "pairs.jsonl")
        data.save_jsonl(scored, folder / "scored.jsonl")
        data.save_json(asdict(summary), folder / "summary.json")

    done = stage(run_dir / "pairs", labelling, label, "preference pairs")
    pairs = preferences.validate_pairs(data.load_jsonl(done.folder / "pairs.jsonl"))
    summary = preferences.PreferenceSummary(
        **json.loads((done.folder / "summary.json").read_text()))
    print(summary)
    train_pairs, eval_pairs = preferences.split_by_prompt(pairs, config.eval_prompts, seed=seed)
    return Pairs(train_pairs, eval_pairs, data.load_jsonl(done.folder / "scored.jsonl"), summary,
                 done)


def trained(done: Stage, model=None) -> Trained:
    """What a finished training stage left: its metrics, last samples and cost."""
    samples = done.folder / SAMPLES
    return Trained(model, load_metrics(done.folder / METRICS),
                   data.load_jsonl(samples, allow_empty=True) if samples.is_file() else [],
                   json.loads((done.folder / COST).read_text()), done)


def save_trained(folder: Path, metrics, cost, samples=None) -> None:
    """Write what :func:`trained` reads: metrics, samples and cost (a meter or its summary)."""
    save_metrics(metrics, folder / METRICS)
    if samples is not None:
        data.save_jsonl(samples, folder / SAMPLES)
    summary = cost.summary() if isinstance(cost, CostMeter) else cost
    data.save_json(summary, folder / COST, indent=None)


def reward_model(preset: Preset, run_dir, ref: Reference, pairs: Pairs, seed: int = 0,
                 callback=None) -> Trained:
    """A Bradley–Terry reward model on π_ref's backbone, from ``run_dir/reward_model``."""
    config = replace(preset.reward_model, seed=seed)
    settings = {"pairs": pairs.stage.settings, "reward_model": result_settings(config)}

    def build(folder: Path) -> None:
        model = RewardModel.from_policy(ref.stage.folder, ref.tokenizer,
                                        seed=seed).to(preset.model.device)
        with CostMeter(model) as cost:  # RLHF's cost, with the small held-out pair check
            _, metrics = train_reward_model(model, ref.tokenizer, pairs.train, config,
                                            callback=callback, eval_pairs=pairs.eval,
                                            checkpoint_dir=folder / CHECKPOINT)
        model.save_pretrained(folder)
        save_trained(folder, metrics, cost)

    done = stage(Path(run_dir) / "reward_model", settings, build, "reward model")
    model = RewardModel.from_pretrained(done.folder, device=preset.model.device)
    return trained(done, model.eval())
