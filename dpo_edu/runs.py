"""The alignment runs of the reward–KL frontier, each one a stage of the run folder (``stages.py``):
trained from π_ref (``pipeline.Reference``) and evaluated alike, on two disjoint prompt sets with
several samples a prompt, their per-prompt means kept for ``frontier.py``'s intervals.

    offline_run   DPO, IPO, cDPO, Preferred-FT, Unlikelihood: trained on the pairs
    online_run    PPO, RLOO, GRPO, online DPO on the reward model, or PPO-GT on the ground truth:
                  trained on their own samples
    best_of_n_run N samples of π_ref a prompt, the reward model's pick: no training
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from . import baselines, critic_free, data, dpo, models, online_dpo, ppo, preferences
from .cost import CostMeter
from .evaluate import make_eval_fn
from .pipeline import Pairs, Reference, Trained, imdb_splits, pair_prompts, save_trained, trained
from .presets import Preset
from .reward_model import score as reward_model_score
from .sampling import generate
from .stages import CHECKPOINT, fingerprint, stage
from .training import result_settings


def _uncounted(evaluate, cost: CostMeter):
    """``evaluate`` as an ``eval_fn`` the cost meter leaves out: every method evaluates alike."""

    def eval_fn():
        with cost.paused():
            return evaluate()

    return eval_fn


def eval_every(total_steps: int, n_evals: int) -> int:
    """Evaluate ``n_evals`` times, the last after the final step: every ⌈steps / n⌉ steps
    (64 steps at n = 3 evaluate at 22, 44 and 64)."""
    return max(1, math.ceil(total_steps / n_evals))


def eval_splits(preset: Preset, tokenizer, seed: int = 0) -> dict[str, list[str]]:
    """Two disjoint sets of held-out prompts: "select" chooses each method's frontier points,
    "report" reports them (prefixes of reviews never used for SFT or pairs)."""
    config = preset.frontier
    _, held_out = imdb_splits(preset, seed)
    prompts = pair_prompts(tokenizer, held_out, config.select_prompts + config.report_prompts,
                           seed + 1)
    return {"select": prompts[: config.select_prompts], "report": prompts[config.select_prompts :]}


def evaluator(preset: Preset, policy, tokenizer, prompts: dict, reward, ref, seed: int,
               reward_model=None):
    """The ``eval_fn`` of every run: the frontier's samples per prompt on both sets, one batch."""
    rows = preset.frontier.samples_per_prompt * max(map(len, prompts.values()))
    return make_eval_fn(policy, tokenizer, prompts, reward, ref, preset.generation, seed=seed,
                        batch_size=rows, samples_per_prompt=preset.frontier.samples_per_prompt,
                        reward_model=reward_model)


def _evaluation_settings(preset: Preset, prompts: dict, reward) -> dict:
    """What every run is evaluated with."""
    return {"generation": asdict(preset.generation), "prompts": fingerprint(prompts),
            "samples_per_prompt": preset.frontier.samples_per_prompt,
            "reward": preferences.reward_fingerprint(reward)}


def reference_eval(preset: Preset, run_dir, ref: Reference, reward, prompts: dict,
                   seed: int = 0) -> Trained:
    """π_ref evaluated as every run is (its KL is 0): the frontier's origin, in ``reference/``."""
    settings = {"sft": ref.stage.settings, **_evaluation_settings(preset, prompts, reward),
                "seed": seed}

    def build(folder: Path) -> None:
        evaluate = evaluator(preset, ref.policy, ref.tokenizer, prompts, reward, ref.policy, seed)
        with CostMeter(ref.policy) as cost:
            row = {"step": 0, **evaluate()}
        save_trained(folder, [row], cost, evaluate.samples)

    return trained(stage(Path(run_dir) / "reference", settings, build, "π_ref's evaluation"))


def reference_logps(preset: Preset, run_dir, ref: Reference, pairs: Pairs,
                    config) -> tuple[list[dict], dict]:
    """``(pairs, cost)``: the training pairs with log π_ref of each response, tokenized as
    ``config`` says, computed once for every DPO-family run that shares them
    (``dpo.precompute_reference_logps``), in ``reference_logps/<key>``."""
    tokens = {"max_length": config.max_length, "append_eos": config.append_eos,  # what they hang on
              "batch_size": config.ref_batch_size or config.batch_size}
    settings = {"pairs": pairs.stage.settings, "tokens": tokens}

    def build(folder: Path) -> None:
        ref_model = models.load_policy(ref.stage.folder, ref.tokenizer, device=preset.model.device,
                                       dtype=preset.model.dtype)
        with CostMeter(ref_model) as cost:
            prepared, _ = dpo.precompute_reference_logps(ref_model, ref.tokenizer, pairs.train,
                                                         config)
        data.save_jsonl(prepared, folder / "pairs.jsonl")
        data.save_json(cost.summary(), folder / "cost.json", indent=None)

    done = stage(Path(run_dir) / "reference_logps" / fingerprint(settings)[:8], settings, build,
                 "π_ref's log-probs of the pairs")
    return (data.load_jsonl(done.folder / "pairs.jsonl"),
            json.loads((done.folder / "cost.json").read_text()))


def offline_run(preset: Preset, run_dir, ref: Reference, pairs: Pairs, reward, prompts: dict,
                config, folder: str, label: str, callback=None) -> Trained:
    """One run trained on the pairs, sampling nothing: DPO, IPO and cDPO (a ``DPOConfig``, on
    π_ref's log-probs computed once), Preferred-FT or Unlikelihood (theirs), evaluated every
    ``config.eval_every`` steps. Its cost counts training (and DPO's share of π_ref's pass over the
    pairs: all of it, as if alone), not the evaluations."""
    settings = {"pairs": pairs.stage.settings, "method": type(config).__name__,
                "config": result_settings(config), **_evaluation_settings(preset, prompts, reward)}
    precomputed = (reference_logps(preset, run_dir, ref, pairs, config)
                   if isinstance(config, dpo.DPOConfig) else None)

    def build(folder: Path) -> None:
        load = dict(tokenizer=ref.tokenizer, device=preset.model.device, dtype=preset.model.dtype)
        policy = models.load_policy(ref.stage.folder, **load)
        # π_ref is read from its folder at each evaluation: no second model in memory while training
        evaluate = evaluator(preset, policy, ref.tokenizer, prompts, reward, ref.stage.folder,
                              config.seed)
        with CostMeter(policy) as cost:
            train = dict(callback=callback, eval_fn=_uncounted(evaluate, cost),
                         checkpoint_dir=folder / CHECKPOINT)
            if precomputed is not None:  # DPO, IPO, cDPO: log π_ref of every pair, computed once
                _, metrics = dpo.train_dpo(policy, ref.tokenizer, precomputed[0], config, **train)
            else:
                trainer = {baselines.PreferredFTConfig: baselines.train_preferred_ft,
                           baselines.UnlikelihoodConfig: baselines.train_unlikelihood}[type(config)]
                _, metrics = trainer(policy, ref.tokenizer, pairs.train, config, **train)
        summary = cost.summary()
        if precomputed is not None:  # a DPO run costs its π_ref pass too, as it would alone
            summary = {key: (max if key == "peak_memory_mb" else sum)((value, precomputed[1][key]))
                       for key, value in summary.items()}
        save_trained(folder, metrics, summary, evaluate.samples)

    return trained(stage(Path(run_dir) / folder, settings, build, label))


# Methods that sample as they train: the key of their config in a run's settings, their trainer
ONLINE = {ppo.PPOConfig: ("ppo", ppo.train_ppo),
          critic_free.RLOOConfig: ("rloo", critic_free.train_critic_free),
          critic_free.GRPOConfig: ("grpo", critic_free.train_critic_free),
          online_dpo.OnlineDPOConfig: ("online_dpo", online_dpo.train_online_dpo)}


def online_run(preset: Preset, run_dir, ref: Reference, reward, prompts: dict,
               train_prompts: Sequence[str], config, folder: str, label: str,
               reward_model: Trained | None = None, callback=None) -> Trained:
    """One run that samples as it trains, from π_ref against ``reward_model`` or, without one, the
    true ``reward``: PPO (PPO-GT), RLOO, GRPO or online DPO, as ``config``'s type says (``ONLINE``);
    evaluated every ``config.eval_every`` steps, its evaluations also read r_φ (when there is one)
    on the samples. Its cost counts sampling and updates, not the evaluations."""
    ground_truth = reward_model is None
    key, trainer = ONLINE[type(config)]
    settings = {"sft": ref.stage.settings,
                "reward_model": None if ground_truth else reward_model.stage.settings,
                key: result_settings(config), "train_prompts": fingerprint(list(train_prompts)),
                **_evaluation_settings(preset, prompts, reward)}  # PPO-GT trains on the reward

    def build(folder: Path) -> None:
        load = dict(tokenizer=ref.tokenizer, device=preset.model.device, dtype=preset.model.dtype)
        policy, ref_model = (models.load_policy(ref.stage.folder, **load) for _ in range(2))
        score = reward if ground_truth else reward_model.model
        evaluate = evaluator(preset, policy, ref.tokenizer, prompts, reward, ref_model.eval(),
                              config.seed, None if ground_truth else reward_model.model)
        with CostMeter(policy, ref_model, *([] if ground_truth else [score])) as cost:
            _, metrics = trainer(policy, ref_model, ref.tokenizer, train_prompts, score, config,
                                 preset.generation, callback=callback,
                                 eval_fn=_uncounted(evaluate, cost),
                                 checkpoint_dir=folder / CHECKPOINT)
        save_trained(folder, metrics, cost, evaluate.samples)

    return trained(stage(Path(run_dir) / folder, settings, build, label))


def best_of_n_run(preset: Preset, run_dir, ref: Reference, reward, prompts: dict,
                  reward_model: Trained, ns, seed: int, folder: str, label: str) -> Trained:
    """Best-of-N, trained on nothing: max(N) samples of π_ref a prompt, the reward model's pick of
    each group of N (``baselines.best_of_n``); one evaluation row a N, its ``step``."""
    settings = {"sft": ref.stage.settings, "reward_model": reward_model.stage.settings,
                "ns": list(ns), "seed": seed, **_evaluation_settings(preset, prompts, reward)}

    def build(folder: Path) -> None:
        m, per_set = 2 * max(ns), {}  # M ≥ 2N: the picks' CDF from the other groups
        with CostMeter(ref.policy, reward_model.model) as cost:
            for name, split in prompts.items():
                repeated = [prompt for prompt in split for _ in range(m)]
                texts, ids, mask = generate(ref.policy, ref.tokenizer, repeated,
                                            preset.generation.max_new_tokens,
                                            preset.generation.temperature, seed=seed,
                                            batch_size=preset.pairs.batch_size, return_ids=True)
                responses = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
                shape = (len(split), m)  # (prompts, samples)
                scores = reward_model_score(reward_model.model, ref.tokenizer, repeated, responses)
                truth = torch.as_tensor(reward([p + t for p, t in zip(repeated, texts)]))
                lengths = mask.sum(-1).float()  # the picks' rewards, then (the same picks) lengths
                per_set[name] = [baselines.best_of_n(scores.reshape(shape),
                                                     values.reshape(shape), ns)
                                 for values in (truth, lengths)]
        rows = []
        for n in ns:
            per_prompt = {name: {"reward": picks[0][n].reward.tolist(),
                                 "kl": picks[0][n].kl.tolist(),
                                 "length": picks[1][n].reward.tolist()}
                          for name, picks in per_set.items()}
            report = per_prompt["report"]
            rows.append({"step": n, "eval/reward": sum(report["reward"]) / len(report["reward"]),
                         "eval/kl": sum(report["kl"]) / len(report["kl"]),
                         "eval/kl_bound": per_set["report"][0][n].kl_bound,
                         "eval/length": sum(report["length"]) / len(report["length"]),
                         "eval/prompts": per_prompt})
        save_trained(folder, rows, cost)

    return trained(stage(Path(run_dir) / folder, settings, build, label))
