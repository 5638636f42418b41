"""Preference pairs as in the DPO paper: k samples of the SFT policy per prefix, labelled by the true reward.

DPO paper §6.1 (controlled sentiment generation): "we generate preference pairs ... by sampling
four completions per prefix from the SFT model" and label them with the sentiment classifier, the
ground-truth reward. Four completions give C(4, 2) = 6 pairs per prefix; in each pair the completion
the reward scores higher is ``chosen`` (y_w), the other ``rejected`` (y_l). The labeller is exact and
deterministic, so these are the "deterministic preferences" of notebook 03 (cDPO / IPO territory).

    pairs, summary = build_preference_data(policy, tokenizer, prompts, reward, run_dir=run)
    train, held_out = split_by_prompt(pairs, eval_size=0.1)

Sampling is the slow step (minutes on a CPU), so the result is cached in ``run_dir/pairs/`` with the
settings that produced it; a rerun with the same settings reads it back, a changed setting
regenerates and says which. A changed reward alone relabels the cached samples without sampling.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import models
from .data import Report, filter_pairs, load_jsonl, make_pairs, save_jsonl, train_eval_split, validate_pairs

CACHE_DIR = "pairs"  # inside a run folder: pairs.jsonl, samples.jsonl, summary.json, settings.json
FORMAT = 1  # bump when the files' layout changes, so old caches are regenerated
# A fixed probe of the reward: its scores on these texts fingerprint any reward, a callable included.
PROBE_TEXTS = ("This movie was wonderful, I loved every minute.", "A dull, boring waste of time.",
               "The plot was fine but the acting", "I have seen better.", "", "Brilliant! 10/10")


@dataclass
class PreferenceSummary:
    """What :func:`build_preference_data` made (or read back); ``print`` it in a notebook."""

    n_prompts: int  # prefixes sampled
    k: int  # completions per prefix
    n_candidate_pairs: int  # n_prompts · k(k − 1)/2
    n_pairs: int  # pairs kept: candidates minus skipped
    skipped: dict[str, int]  # reason -> pairs dropped (ties, empty completions)
    mean_reward: float  # mean ground-truth reward of all n_prompts · k samples (the SFT policy's score)
    std_reward: float  # its standard deviation across samples
    mean_margin: float  # mean chosen_reward − rejected_reward over the kept pairs
    seconds: float  # sampling + labelling time of the run that made the files
    source: str = "generated"  # "generated", "relabelled" (cached samples, new reward) or "cache"
    reason: str = ""  # why: "no cache", "seed changed 0 → 1", "same settings", ...

    def __str__(self) -> str:
        lines = [f"preferences ({self.source}: {self.reason}): {self.n_pairs:,} pairs from {self.n_prompts:,} "
                 f"prompts × {self.k} completions ({self.n_candidate_pairs:,} candidate pairs)",
                 f"  reward of the samples: mean {self.mean_reward:.3f}, std {self.std_reward:.3f}; "
                 f"mean margin chosen − rejected {self.mean_margin:.3f}",
                 f"  made in {self.seconds:.1f} s ({self.n_pairs / max(self.seconds, 1e-9):.1f} pairs/s)"]
        lines += [f"  skipped {n:,}: {why}" for why, n in self.skipped.items()]
        return "\n".join(lines)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompts[{i}] must be a non-empty str, got {prompt!r}")
    return list(prompts)


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"k must be an int ≥ 2 (a pair needs two completions), got {k!r}")
    return k


def sample_completions(policy, tokenizer, prompts: Sequence[str], k: int = 4, max_new_tokens: int = 24,
                       temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                       progress: bool | None = None) -> list[list[str]]:
    """``k`` sampled completions per prompt (texts without the prompt): ``result[i]`` holds prompt i's.

    Each prompt is repeated k times and the n·k rows go through :func:`models.generate` in batches
    of ``batch_size`` (a progress bar per batch). The k copies are independent samples from π(·|x);
    a seed fixes them for a given ``batch_size`` (the batches share one random stream).
    """
    prompts, k = _check_prompts(prompts), _check_k(k)
    repeated = [prompt for prompt in prompts for _ in range(k)]  # [x0, x0, x0, x0, x1, ...]
    texts = models.generate(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=seed, batch_size=batch_size, progress=progress)
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def score_completions(prompts: Sequence[str], completions: Sequence[Sequence[str]],
                      reward: Callable[[list[str]], Any], score_prompt: bool = True) -> list[list[float]]:
    """r(x, y) of every completion, shaped like ``completions``.

    ``reward`` is a :class:`~dpo_edu.sentiment.SentimentReward` or any callable from a list of texts
    to one number each (a tensor, array or list). With ``score_prompt`` (the default) it reads the
    whole text x ⊕ y, as the paper's classifier reads the review: "This movie was not" + " bad" is
    judged as a sentence, not as the fragment " bad". ``score_prompt=False`` scores y alone.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must match, got {len(prompts)} and {len(completions)}")
    texts = [(prompt + c) if score_prompt else c for prompt, group in zip(prompts, completions) for c in group]
    values = _rewards(reward, texts)
    out, start = [], 0
    for group in completions:
        out.append(values[start:start + len(group)])
        start += len(group)
    return out


def _rewards(reward: Callable, texts: list[str]) -> list[float]:
    """One finite float per text; float32 scores become the exact same Python float (JSON keeps it)."""
    if not callable(reward):
        raise ValueError(f"reward must be callable (texts -> scores), got {type(reward).__name__}")
    values = torch.as_tensor(reward(texts)).detach().cpu().reshape(-1)
    if values.numel() != len(texts):
        raise ValueError(f"reward returned {values.numel()} scores for {len(texts)} texts")
    values = values.tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"reward returned a non-finite score {v} for text {i}: {texts[i][:60]!r}")
    return values


def _label_scored(prompts, completions, scores) -> tuple[list[dict], Report]:
    """make_pairs (every pair, ties skipped), then drop pairs with a blank side; one report of both."""
    pairs, ties = make_pairs(prompts, completions, scores)
    # A completion can be empty (the policy's first token was EOS): a record needs a non-empty
    # chosen and rejected, so such pairs are dropped by filter_pairs and reported, never silently.
    kept, blank = filter_pairs(pairs)
    report = Report("label_pairs", total=ties.total, skipped=dict(ties.skipped))
    for reason, n in blank.skipped.items():
        report.skipped[reason] = report.skipped.get(reason, 0) + n
    # Report rows as candidate-pair indices: make_pairs emits kept candidates in order, so the i-th
    # pair is the i-th candidate not skipped as a tie.
    candidates = sorted(set(range(ties.total)) - set(ties.skipped_rows))
    report.skipped_rows = sorted(ties.skipped_rows + [candidates[i] for i in blank.skipped_rows])
    return kept, report


def label_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]], reward: Callable,
                score_prompt: bool = True) -> tuple[list[dict], Report]:
    """All k(k − 1)/2 pairs of each prompt's completions, the one with higher reward ``chosen``.

    Records: ``{prompt, chosen, rejected, chosen_reward, rejected_reward, prompt_id}`` (prompt_id is
    the prompt's index). Pairs that carry no preference — equal rewards, identical texts — or that
    have an empty side are skipped and counted in the :class:`~dpo_edu.data.Report`.
    """
    _check_prompts(prompts)
    return _label_scored(prompts, completions, score_completions(prompts, completions, reward, score_prompt))


def split_by_prompt(pairs: Sequence[dict], eval_size: int | float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` with all pairs of a prompt on one side; ``eval_size`` counts prompts.

    Pairs of one prompt share its text, so a random split by pair would let an eval pair's prompt
    (and one of its completions) be trained on. Grouping by the prompt *text* also keeps two
    reviews that open with the same words ("This movie") on one side.
    """
    return train_eval_split(list(pairs), eval_size, seed=seed, group="prompt")


def preference_settings(preset) -> dict:
    """The sampling keyword arguments of :func:`build_preference_data` a preset names."""
    return dict(k=preset.completions_per_prompt, max_new_tokens=preset.max_new_tokens,
                temperature=preset.temperature, batch_size=preset.generation_batch_size)


# --- fingerprints and the cache -----------------------------------------------------------------------


def _sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()[:16]  # 64 bits: enough to tell runs apart, short enough to read


def policy_fingerprint(policy) -> str:
    """A hash of every weight (names, dtypes, shapes, bytes): any training step changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes of any dtype, bf16 too
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (a fast tokenizer's JSON), else of its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(text.encode(), f"{tokenizer.pad_token_id},{tokenizer.eos_token_id}".encode())


def reward_fingerprint(reward: Callable) -> str:
    """A hash of the reward's scores on :data:`PROBE_TEXTS` (rounded to 1e-5): works for any callable."""
    values = [round(v, 5) for v in _rewards(reward, list(PROBE_TEXTS))]
    return _sha(json.dumps(values).encode())


def _settings(policy, tokenizer, prompts, reward, k, max_new_tokens, temperature, seed, batch_size,
              score_prompt) -> dict:
    """Everything that decides the files: ``sampling`` (the samples) and ``labelling`` (the labels)."""
    device = policy.get_input_embeddings().weight.device.type
    return {
        "format": FORMAT,
        "sampling": {
            "n_prompts": len(prompts), "prompts": _sha(json.dumps(list(prompts)).encode()),
            "policy": policy_fingerprint(policy), "tokenizer": tokenizer_fingerprint(tokenizer),
            "k": k, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "batch_size": batch_size,  # the seed fixes the samples for a given batch size
            "device": device,  # a CPU and a GPU draw different samples from one seed
        },
        "labelling": {"reward": getattr(reward, "name", "") or getattr(reward, "__name__", type(reward).__name__),
                      "reward_scores": reward_fingerprint(reward), "score_prompt": score_prompt},
    }


def _changes(old: dict, new: dict) -> list[str]:
    """``"seed 0 → 1"`` for each setting that differs."""
    return [f"{key} {old.get(key)!r} → {value!r}" for key, value in new.items() if old.get(key) != value]


def _read_cache(folder: Path, settings: dict) -> tuple[str, str]:
    """(what to do, why): "load", "relabel" (same samples, new labelling) or "generate"."""
    files = ["settings.json", "samples.jsonl", "pairs.jsonl", "summary.json"]
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        return "generate", "no cache" if len(missing) == len(files) else f"cache incomplete (no {missing[0]})"
    try:
        old = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return "generate", "settings.json is not valid JSON"
    if old.get("format") != FORMAT:
        return "generate", f"cache format {old.get('format')!r} → {FORMAT}"
    sampling = _changes(old.get("sampling", {}), settings["sampling"])
    labelling = _changes(old.get("labelling", {}), settings["labelling"])
    if sampling or labelling:
        return "generate" if sampling else "relabel", "; ".join(sampling + labelling) + " changed"
    return "load", "same settings"


def build_preference_data(policy, tokenizer, prompts: Sequence[str], reward: Callable, *, k: int = 4,
                          max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                          score_prompt: bool = True, run_dir: str | Path | None = None, refresh: bool = False,
                          progress: bool | None = None, verbose: bool = True
                          ) -> tuple[list[dict], PreferenceSummary]:
    """Sample ``k`` completions per prompt from ``policy``, label every pair with ``reward``; cached.

    With ``run_dir``, the result lives in ``run_dir/pairs/``: ``pairs.jsonl`` (the records),
    ``samples.jsonl`` (each prompt's k completions and their rewards), ``summary.json`` and
    ``settings.json`` (seed, k, max_new_tokens, temperature, batch size, the number of prompts and
    hashes of the prompts, policy weights, tokenizer and reward). A call whose settings match reads
    the files and samples nothing; a changed sampling setting regenerates, a changed reward relabels
    the saved samples; ``summary.reason`` says which setting changed. ``refresh=True`` regenerates.
    """
    prompts, k = _check_prompts(prompts), _check_k(k)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    folder = Path(run_dir) / CACHE_DIR if run_dir is not None else None
    settings = _settings(policy, tokenizer, prompts, reward, k, max_new_tokens, temperature, seed, batch_size,
                         score_prompt)
    action, reason = ("generate", "no run_dir") if folder is None else _read_cache(folder, settings)
    if refresh and action != "generate":
        action, reason = "generate", "refresh=True"
    if action == "load":
        pairs = validate_pairs(load_jsonl(folder / "pairs.jsonl"))
        summary = PreferenceSummary(**json.loads((folder / "summary.json").read_text(encoding="utf-8")))
        summary.source, summary.reason = "cache", f"{reason}, read from {folder}"
        if verbose:
            print(summary)
        return pairs, summary
    if verbose and folder is not None:
        print(f"preferences: {reason}; {'relabelling the saved samples' if action == 'relabel' else 'sampling'}")

    start = time.perf_counter()
    if action == "relabel":
        rows = load_jsonl(folder / "samples.jsonl")
        completions = [row["completions"] for row in rows]
        seconds_before = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["seconds"]
    else:
        completions = sample_completions(policy, tokenizer, prompts, k, max_new_tokens, temperature, seed,
                                         batch_size, progress)
        seconds_before = 0.0
    scores = score_completions(prompts, completions, reward, score_prompt)
    pairs, report = _label_scored(prompts, completions, scores)
    validate_pairs(pairs)  # never save a record a trainer would reject
    flat = torch.tensor([v for group in scores for v in group], dtype=torch.float64)
    margins = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    summary = PreferenceSummary(
        n_prompts=len(prompts), k=k, n_candidate_pairs=report.total, n_pairs=len(pairs),
        skipped=dict(report.skipped), mean_reward=flat.mean().item(),
        std_reward=flat.std().item() if flat.numel() > 1 else 0.0,
        mean_margin=sum(margins) / len(margins) if margins else 0.0,
        seconds=round(seconds_before + time.perf_counter() - start, 3),
        source="relabelled" if action == "relabel" else "generated", reason=reason)

    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").unlink(missing_ok=True)  # written last: no settings, no valid cache
        save_jsonl([{"prompt_id": i, "prompt": prompt, "completions": group, "rewards": values}
                    for i, (prompt, group, values) in enumerate(zip(prompts, completions, scores))],
                   folder / "samples.jsonl")
        save_jsonl(pairs, folder / "pairs.jsonl")
        saved = {key: value for key, value in asdict(summary).items() if key not in ("source", "reason")}
        (folder / "summary.json").write_text(json.dumps(saved, indent=1), encoding="utf-8")
        (folder / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    if verbose:
        print(summary)
    return pairs, summary
