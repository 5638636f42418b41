"""The run folder: each stage of the language-model pipeline, loaded when it is there, built when not.

The DPO paper's controlled-sentiment experiment (§6.1) in stages, each saved under ``run_dir``:

    sft/           π_ref: GPT-2 fine-tuned on IMDb reviews (tokenizer, weights, metrics)
    sentiment/     the ground-truth reward p(positive | text)
    pairs/         4 samples of π_ref per prefix, all 6 pairs labelled by the ground-truth reward
    reward_model/  a Bradley–Terry reward model trained on those pairs

A stage is reused only when the ``settings.json`` it was saved with equals the settings asked for
now (and written last, so an interrupted stage is never mistaken for a finished one); otherwise it is
rebuilt, and the reason is printed. Notebook 04 runs the stages one by one with live curves; notebook 05
calls the same functions and, on a run folder that 04 filled, only loads.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

from . import data, dpo, models, ppo, preferences
from .cost import CostMeter
from .presets import Preset
from .reward_model import RewardConfig, RewardModel, train_reward_model
from .sentiment import SentimentReward, make_reward
from .sft import SFTConfig, train_sft
from .training import RESUMABLE_CHANGES, load_metrics, save_metrics

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
COST = "cost.json"
SAMPLES = "samples.jsonl"
EVAL_FRACTION = 0.1  # of the reviews, held out: SFT perplexity and the held-out prompts of notebook 05


def _lm_settings(preset: Preset) -> dict:
    """The preset fields that shape the policy and its tokenizer."""
    names = ("model", "random_init", "n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_reviews", "dtype")
    return {name: getattr(preset, name) for name in names}


def _config_settings(config) -> dict:
    """A trainer config's fields that change results (not logging or checkpoint cadence)."""
    return {key: value for key, value in asdict(config).items() if key not in RESUMABLE_CHANGES}


def cached_stage(folder: Path, settings: dict, build: Callable[[Path], None], name: str) -> bool:
    """Run ``build(folder)`` unless ``folder`` holds a finished stage with these ``settings``.

    Returns True when the stage was loaded from disk. ``settings.json`` is written after ``build``
    returns, so a stage cut short is rebuilt next time.
    """
    saved = folder / SETTINGS
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old == settings:
            print(f"{name}: reusing {folder}")
            return True
        changed = sorted(key for key in settings.keys() | old.keys() if old.get(key) != settings.get(key))
        print(f"{name}: settings changed ({', '.join(changed)}); rebuilding {folder}")
        saved.unlink()
    else:
        print(f"{name}: building {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    build(folder)
    saved.write_text(json.dumps(settings, indent=1, sort_keys=True))
    return False


def imdb_splits(preset: Preset, seed: int = 0) -> tuple[list[data.Review], list[data.Review]]:
    """``preset.n_reviews`` bundled IMDb reviews, split (seeded) into train and held-out eval."""
    reviews = data.load_imdb(n=preset.n_reviews, seed=seed)
    return data.train_eval_split(reviews, EVAL_FRACTION, seed=seed)


def reference_policy(preset: Preset, run_dir, seed: int = 0, callback=None):
    """π_ref = the SFT policy: ``(policy, tokenizer, sft_metrics)`` from ``run_dir/sft``, trained if needed."""
    run_dir = Path(run_dir)
    config = SFTConfig.from_preset(preset, seed=seed)
    settings = {"lm": _lm_settings(preset), "sft": _config_settings(config), "seed": seed}

    def build(folder: Path) -> None:
        train, held_out = imdb_splits(preset, seed)
        policy, tokenizer = models.init_policy(preset, [r.text for r in train], run_dir / "init", seed=seed)
        _, metrics = train_sft(
            policy, tokenizer, [r.text for r in train], config, callback=callback,
            checkpoint_dir=run_dir / "checkpoints" / "sft", eval_texts=[r.text for r in held_out[:200]],
        )
        models.save_policy(policy, tokenizer, folder)
        save_metrics(metrics, folder / METRICS)
        shutil.rmtree(run_dir / "checkpoints" / "sft", ignore_errors=True)  # finished: the resume point is spent

    cached_stage(run_dir / "sft", settings, build, "SFT (π_ref)")
    policy, tokenizer = models.load_pretrained(run_dir / "sft", device=preset.device, dtype=preset.dtype)
    return policy.eval(), tokenizer, load_metrics(run_dir / "sft" / METRICS)


def ground_truth_reward(preset: Preset, run_dir, seed: int = 0) -> SentimentReward:
    """p(positive | text): the preset's classifier, trained on IMDb labels (``tfidf``) or from the Hub."""
    return make_reward(
        preset.reward_classifier, run_dir=run_dir, n_reviews=preset.classifier_reviews, seed=seed, device=preset.device
    )


def pair_prompts(preset: Preset, tokenizer, reviews: Sequence[data.Review], n: int, seed: int = 0) -> list[str]:
    """``n`` prompts: 2–8 token prefixes of ``reviews`` (paper §6.1); skipped texts are reported."""
    # 8 tokens never need more than the first 200 characters; longer texts only slow the tokenizer down
    prompts, report = data.make_prompts([r.text[:200] for r in reviews[: n * 2]], tokenizer, seed=seed)
    if report.skipped or report.truncated:
        print(report)
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} usable prompts for the {n} asked; raise preset.n_reviews")
    return prompts[:n]


def preference_pairs(preset: Preset, run_dir, policy, tokenizer, reward, seed: int = 0):
    """``(train_pairs, eval_pairs, summary)``: π_ref's samples of training-review prefixes, labelled; cached."""
    train, _ = imdb_splits(preset, seed)
    prompts = pair_prompts(preset, tokenizer, train, preset.pair_prompts, seed)
    pairs, summary = preferences.build_preference_data(
        policy, tokenizer, prompts, reward, run_dir=run_dir, seed=seed, **preferences.preference_settings(preset)
    )
    train_pairs, eval_pairs = preferences.split_by_prompt(pairs, preset.eval_pair_prompts, seed=seed)
    return train_pairs, eval_pairs, summary


def eval_prompts(preset: Preset, tokenizer, n: int, seed: int = 0) -> list[str]:
    """Held-out prompts for evaluating policies: prefixes of reviews never used for SFT or pairs."""
    _, held_out = imdb_splits(preset, seed)
    return pair_prompts(preset, tokenizer, held_out, n, seed + 1)


def reward_model(preset: Preset, run_dir, tokenizer, train_pairs, eval_pairs, seed: int = 0, callback=None):
    """``(reward_model, metrics)``: a Bradley–Terry model on π_ref's backbone, from ``run_dir/reward_model``."""
    run_dir = Path(run_dir)
    config = RewardConfig.from_preset(preset, seed=seed)
    settings = {
        "sft": json.loads((run_dir / "sft" / SETTINGS).read_text()),
        "pairs": json.loads((run_dir / preferences.CACHE_DIR / SETTINGS).read_text()),
        "reward_model": _config_settings(config),
        "eval_pair_prompts": preset.eval_pair_prompts,
    }

    def build(folder: Path) -> None:
        model = RewardModel.from_policy(run_dir / "sft", tokenizer, seed=seed).to(preset.device)  # built on the CPU
        with CostMeter(model) as cost:  # RLHF's cost: includes the held-out evaluations (forward only, small)
            _, metrics = train_reward_model(
                model, tokenizer, train_pairs, config, callback=callback, eval_pairs=eval_pairs,
                checkpoint_dir=run_dir / "checkpoints" / "reward_model",
            )
        model.save_pretrained(folder)
        save_metrics(metrics, folder / METRICS)
        (folder / COST).write_text(json.dumps(cost.summary()))
        shutil.rmtree(run_dir / "checkpoints" / "reward_model", ignore_errors=True)

    cached_stage(run_dir / "reward_model", settings, build, "reward model")
    model = RewardModel.from_pretrained(run_dir / "reward_model", device=preset.device)
    return model.eval(), load_metrics(run_dir / "reward_model" / METRICS)


def _stage_settings(run_dir: Path, *stages: str) -> dict:
    return {stage: json.loads((run_dir / stage / SETTINGS).read_text()) for stage in stages}


def stage_cost(folder) -> dict:
    """The cost (``cost.CostMeter.summary``) a trained stage saved: seconds, token passes, peak memory."""
    return json.loads((Path(folder) / COST).read_text())


def _load_run(folder: Path) -> dict:
    """What a finished alignment run left: its metrics, its last evaluation's samples and its cost."""
    return {"metrics": load_metrics(folder / METRICS), "samples": data.load_jsonl(folder / SAMPLES),
            "cost": stage_cost(folder)}


def _uncounted(evaluate, cost: CostMeter):
    """``evaluate`` as an ``eval_fn`` the cost meter leaves out: both pipelines evaluate alike."""

    def eval_fn():
        with cost.paused():
            return evaluate()

    return eval_fn


def _save_run(folder: Path, metrics, samples, cost: CostMeter, checkpoints: Path) -> None:
    """Write what ``_load_run`` reads; the finished run's resume point is spent."""
    save_metrics(metrics, folder / METRICS)
    data.save_jsonl(samples, folder / SAMPLES)
    (folder / COST).write_text(json.dumps(cost.summary()))
    shutil.rmtree(checkpoints, ignore_errors=True)


def _eval_every(total_steps: int, n_evals: int) -> int:
    """Evaluate ``n_evals`` times, the last after the final step (the loops always evaluate then): every
    ⌈steps / n⌉ steps, so that 64 steps at n = 3 evaluate at 22, 44 and 64, not at 21, 42, 63 and 64."""
    return max(1, math.ceil(total_steps / n_evals))


def dpo_run(preset: Preset, run_dir, beta: float, tokenizer, train_pairs, prompts, reward, seed: int = 0,
            n_evals: int = 3, callback=None) -> dict:
    """One DPO run from π_ref at ``beta``, evaluated ``n_evals`` times on ``prompts``; cached in ``dpo/beta_*``.

    Returns ``{"metrics", "samples", "cost"}``; the cost counts the reference precompute and training,
    not the evaluations (both pipelines share those). A run resumed from its checkpoint counts only what ran
    after the resume: delete its folder and run it again to measure it whole.
    """
    run_dir = Path(run_dir)
    config = dpo.DPOConfig.from_preset(preset, beta=beta, seed=seed, eval_batch_size=max(len(prompts), 1))
    config = replace(config, eval_every=_eval_every(config.total_steps(len(train_pairs)), n_evals))
    settings = {**_stage_settings(run_dir, "sft", preferences.CACHE_DIR), "dpo": _config_settings(config),
                "eval_prompts": len(prompts)}

    def build(folder: Path) -> None:
        policy = models.load_policy(run_dir / "sft", tokenizer, device=preset.device, dtype=preset.dtype)
        ref = models.load_policy(run_dir / "sft", tokenizer, device=preset.device, dtype=preset.dtype)
        # π_ref is read from its folder at each evaluation: no second model in memory while training
        evaluate = dpo.make_eval_fn(policy, tokenizer, config, prompts, reward, ref=run_dir / "sft")
        with CostMeter(policy, ref) as cost:
            pairs, report = dpo.precompute_reference_logps(ref, tokenizer, train_pairs, config)
            del ref  # log π_ref of every pair is stored: the reference model is no longer needed
            if report.skipped or report.truncated:
                print(report)
            _, metrics = dpo.train_dpo(policy, tokenizer, pairs, config, callback=callback,
                                       eval_fn=_uncounted(evaluate, cost),
                                       checkpoint_dir=run_dir / "checkpoints" / folder.name)
        _save_run(folder, metrics, evaluate.samples, cost, run_dir / "checkpoints" / folder.name)

    folder = run_dir / "dpo" / f"beta_{beta:g}"
    cached_stage(folder, settings, build, f"DPO β={beta:g}")
    return _load_run(folder)


def ppo_run(preset: Preset, run_dir, target_kl: float | None, tokenizer, train_prompts, prompts, reward,
            seed: int = 0, n_evals: int = 3, callback=None, ground_truth: bool = False) -> dict:
    """One PPO run from π_ref against the reward model (or, ``ground_truth=True``, the true reward: PPO-GT),
    steering the KL toward ``target_kl`` (None: the preset's fixed β); cached in ``ppo/...``.

    Returns ``{"metrics", "samples", "cost"}``; the cost counts the rollouts and updates, not the evaluations
    (and, like ``dpo_run``'s, only what ran after a resume).
    """
    run_dir = Path(run_dir)
    config = ppo.PPOConfig.from_preset(preset, target_kl=target_kl, seed=seed)
    config = replace(config, eval_every=_eval_every(config.steps, n_evals))
    stages = ("sft",) if ground_truth else ("sft", preferences.CACHE_DIR, "reward_model")
    settings = {**_stage_settings(run_dir, *stages), "ppo": _config_settings(config), "eval_prompts": len(prompts),
                "train_prompts": len(train_prompts), "ground_truth": ground_truth,
                "reward": preferences.reward_fingerprint(reward)}  # PPO-GT trains on it; every run is scored by it

    def build(folder: Path) -> None:
        policy = models.load_policy(run_dir / "sft", tokenizer, device=preset.device, dtype=preset.dtype)
        ref = models.load_policy(run_dir / "sft", tokenizer, device=preset.device, dtype=preset.dtype).eval()
        score = reward if ground_truth else RewardModel.from_pretrained(run_dir / "reward_model", preset.device)
        evaluate = ppo.make_eval_fn(policy, ref, tokenizer, prompts, reward, config, batch_size=max(len(prompts), 1))
        scored = (policy, ref) if ground_truth else (policy, ref, score)
        with CostMeter(*scored) as cost:
            _, metrics = ppo.train_ppo(policy, ref, tokenizer, train_prompts, score, config, callback=callback,
                                       eval_fn=_uncounted(evaluate, cost),
                                       checkpoint_dir=run_dir / "checkpoints" / folder.name)
        _save_run(folder, metrics, evaluate.samples, cost, run_dir / "checkpoints" / folder.name)

    name = ("ppo_gt" if ground_truth else "ppo") + (f"/target_{target_kl:g}" if target_kl is not None else "/fixed")
    cached_stage(run_dir / name, settings, build, f"PPO{'-GT' if ground_truth else ''} target KL={target_kl}")
    return _load_run(run_dir / name)
