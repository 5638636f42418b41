"""Preference pairs as in the DPO paper (§6.1): k samples of π_ref per prefix, every pair labelled.

A record is ``{"prompt", "chosen", "rejected"}``, TRL's explicit-prompt format (y_w, y_l without
the prompt); extra fields travel with it. Four completions give C(4, 2) = 6 pairs per prefix,
the one the ground truth scores higher ``chosen``: exact labels, notebook 03's deterministic
preferences.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .data import Report, encode_text, train_eval_split
from .models import token_ids
from .sampling import Generation, check_prompts, generate
from .validate import check_int

PAIR_FIELDS = ("prompt", "chosen", "rejected")  # a record's texts (TRL's explicit-prompt format)
SIDES = ("chosen", "rejected")
ENDED_FIELDS = ("chosen_ended", "rejected_ended")  # whether π_ref emitted EOS after each response
EOS_RULES = ("auto", "ended", "always", "never")  # when a trainer scores an EOS after a response
# A fixed probe: its scores on these texts fingerprint any reward, a callable included.
PROBE_TEXTS = ("This movie was wonderful, I loved every minute.", "A dull, boring waste of time.",
               "The plot was fine but the acting", "I have seen better.", "", "Brilliant! 10/10")


@dataclass(frozen=True)
class PairsConfig:
    """How many preference pairs π_ref's samples make."""

    prompts: int = 128  # IMDb prefixes (of training reviews) that π_ref completes
    completions: int = 4  # samples per prefix, every pair of them labelled: 4 → 6 pairs (§6.1)
    eval_prompts: int = 32  # of those prefixes, held out with all their pairs (held-out accuracy)
    batch_size: int = 128  # rows (prefix copies) sampled together

    def __post_init__(self):
        for name, low in (("prompts", 2), ("completions", 2), ("eval_prompts", 1),
                          ("batch_size", 1)):
            check_int(name, getattr(self, name), low)
        if self.eval_prompts >= self.prompts:
            raise ValueError(f"eval_prompts ({self.eval_prompts}) must be "
                             f"< prompts ({self.prompts}): the training side needs prefixes too")


@dataclass
class PreferenceSummary:
    """What :func:`make_preference_data` made; ``print`` it in a notebook."""

    n_prompts: int  # prefixes sampled
    k: int  # completions per prefix
    n_candidate_pairs: int  # n_prompts · k(k − 1)/2
    n_pairs: int  # pairs kept: candidates minus skipped
    skipped: dict[str, int]  # reason -> pairs dropped (ties, empty completions)
    mean_reward: float  # mean ground truth of all n_prompts · k samples (the SFT policy's score)
    std_reward: float  # its standard deviation across samples
    mean_margin: float  # mean chosen_reward − rejected_reward over the kept pairs
    duplicates: int = 0  # kept pairs equal to an earlier one (same prompt, chosen, rejected)

    def __str__(self) -> str:
        lines = [f"preferences: {self.n_pairs:,} pairs from {self.n_prompts:,} prompts × {self.k} "
                 f"completions ({self.n_candidate_pairs:,} candidate pairs)",
                 f"  reward of the samples: mean {self.mean_reward:.3f}, "
                 f"std {self.std_reward:.3f}; "
                 f"mean margin chosen − rejected {self.mean_margin:.3f}"]
        lines += [f"  skipped {n:,}: {why}" for why, n in self.skipped.items()]
        if self.duplicates:
            lines.append(f"  duplicates {self.duplicates:,}: pairs equal to an earlier one (two "
                         "samples of a prompt alike), kept: each weighs as often as it occurs")
        return "\n".join(lines)


# --- pair records -------------------------------------------------------------------------------


def _pair_problem(row: Any, lengths: Callable[[str], int] | None, limit: int | None, unit: str):
    """(field, why) for the first problem of a preference row, or None when it is fine."""
    if not isinstance(row, dict):
        return None, f"is a {type(row).__name__}, not a dict"
    for name in PAIR_FIELDS:
        if name not in row:
            return name, "is missing"
        if not isinstance(row[name], str):
            return name, f"must be a str, got {type(row[name]).__name__}"
        if not row[name].strip():
            return name, "is empty"
    if row["chosen"] == row["rejected"]:
        return "rejected", "equals chosen (a pair must differ)"
    if lengths is not None:
        for name in ("chosen", "rejected"):
            size = lengths(row["prompt"] + row[name])
            if size > limit:
                return name, f"prompt + {name} is {size} {unit}, over the limit of {limit}"
    return None


def _length_rule(max_chars, tokenizer, max_tokens):
    if max_chars is not None and (tokenizer is not None or max_tokens is not None):
        raise ValueError("give max_chars or tokenizer + max_tokens, not both")
    if (tokenizer is None) != (max_tokens is None):
        raise ValueError("tokenizer and max_tokens go together: "
                         "the limit counts that tokenizer's tokens")
    if max_chars is not None:
        return len, max_chars, "characters"
    if tokenizer is not None:
        return (lambda s: len(encode_text(tokenizer, s))), max_tokens, "tokens"
    return None, None, ""


def validate_pairs(rows: Sequence[dict], max_chars: int | None = None, tokenizer: Any = None,
                   max_tokens: int | None = None) -> list[dict]:
    """Check preference records; raise a ValueError naming the first bad row index and field.

    Rows need non-empty strings ``prompt``, ``chosen`` != ``rejected``; with ``max_chars`` (or
    ``tokenizer`` + ``max_tokens``) prompt + each response must fit. Returns ``rows`` unchanged.
    """
    lengths, limit, unit = _length_rule(max_chars, tokenizer, max_tokens)
    for i, row in enumerate(rows):
        problem = _pair_problem(row, lengths, limit, unit)
        if problem is not None:
            name, why = problem
            where = f"row {i}" if name is None else f"row {i}, field {name!r}:"
            raise ValueError(f"{where} {why}")
    return list(rows)


def filter_pairs(rows: Sequence[dict], max_chars: int | None = None, tokenizer: Any = None,
                 max_tokens: int | None = None) -> tuple[list[dict], Report]:
    """Like :func:`validate_pairs`, but drop bad rows and report each drop's reason."""
    lengths, limit, unit = _length_rule(max_chars, tokenizer, max_tokens)
    report = Report("filter_pairs", total=len(rows))
    kept = []
    for i, row in enumerate(rows):
        problem = _pair_problem(row, lengths, limit, unit)
        if problem is None:
            kept.append(row)
        else:
            name, why = problem
            report.skip(i, f"row {why}" if name is None else f"{name} {why}")
    return kept, report


def make_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]],
               scores: Sequence[Sequence[float]], ended: Sequence[Sequence[bool]] | None = None
               ) -> tuple[list[dict], Report]:
    """Every pair of completions of a prompt, the higher-scored one ``chosen`` (paper §6.1: 4 → 6).

    Records carry ``chosen_reward``, ``rejected_reward``, ``prompt_id`` and, with ``ended``,
    ``chosen_ended`` / ``rejected_ended``. Equal scores or identical texts: skipped, reported.
    """
    ended = ended if ended is not None else [None] * len(prompts)
    if not len(prompts) == len(completions) == len(scores) == len(ended):
        raise ValueError(f"prompts, completions, scores and ended must have one entry per prompt, "
                         f"got {len(prompts)}, {len(completions)}, {len(scores)}, {len(ended)}")
    pairs: list[dict] = []
    report = Report("make_pairs")
    for p, (prompt, texts, values, stops) in enumerate(zip(prompts, completions, scores, ended)):
        if len(texts) != len(values) or (stops is not None and len(stops) != len(texts)):
            raise ValueError(f"prompt {p}: {len(texts)} completions but {len(values)} scores"
                             + ("" if stops is None else f" and {len(stops)} ended flags"))
        for a in range(len(texts)):
            for b in range(a + 1, len(texts)):
                report.total += 1
                if values[a] == values[b] or texts[a] == texts[b]:
                    report.skip(report.total - 1, "tie: equal scores or identical completions")
                    continue
                w, l = (a, b) if values[a] > values[b] else (b, a)
                pair = {"prompt": prompt, "chosen": texts[w], "rejected": texts[l],
                        "chosen_reward": float(values[w]), "rejected_reward": float(values[l]),
                        "prompt_id": p}
                if stops is not None:  # did π_ref emit EOS after it? (the EOS rule of dpo and RM)
                    pair.update(chosen_ended=bool(stops[w]), rejected_ended=bool(stops[l]))
                pairs.append(pair)
    return pairs, report


def eos_rule(pairs: Sequence[dict], append_eos: str) -> str:
    """``append_eos`` resolved: "auto" is "ended" when every record says whether its responses
    ended (``chosen_ended``, ``rejected_ended``), "always" (TRL's rule) when none does."""
    if append_eos not in EOS_RULES:
        raise ValueError(f"append_eos must be one of {EOS_RULES}, got {append_eos!r}")
    flagged = [all(f in pair for f in ENDED_FIELDS) for pair in pairs if isinstance(pair, dict)]
    if append_eos == "ended" and not all(flagged):
        raise ValueError(f"pairs[{flagged.index(False)}] does not say whether its responses ended "
                         f"({', '.join(ENDED_FIELDS)}): use append_eos='always' or 'never'")
    if append_eos != "auto":
        return append_eos
    if any(flagged) and not all(flagged):
        raise ValueError(f"pairs[{flagged.index(False)}] lacks {', '.join(ENDED_FIELDS)}, which "
                         "other records have: give every record the flags, or choose append_eos")
    return "ended" if flagged and all(flagged) else "always"


def pair_token_ids(tokenizer, pairs: Sequence[dict], append_eos: str = "auto"
                   ) -> list[tuple[list[int], list[int], list[int]]]:
    """``(prompt, chosen, rejected)`` token ids of each record, each response followed by EOS as
    :func:`eos_rule` says. Every trainer reads pairs through here, so every one refuses what
    :func:`validate_pairs` refuses (a missing, non-string or blank field, chosen == rejected),
    naming the row and the field."""
    validate_pairs(pairs)
    rule, eos = eos_rule(pairs, append_eos), [tokenizer.eos_token_id]
    out = []
    for i, pair in enumerate(pairs):
        prompt = token_ids(tokenizer, pair["prompt"])
        if not prompt:  # the first response token is predicted from the last prompt position
            raise ValueError(f"pairs[{i}]['prompt'] is empty: a prompt needs at least one token")
        ended = [rule == "always" or (rule == "ended" and pair[f"{side}_ended"]) for side in SIDES]
        out.append((prompt, *(token_ids(tokenizer, pair[side]) + eos * stop
                              for side, stop in zip(SIDES, ended))))
    return out


# --- sampling and labelling ----------------------------------------------------------------------


def _check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"k must be an int ≥ 2 (a pair needs two completions), got {k!r}")
    return k


def sample_completions(policy, tokenizer, prompts: Sequence[str], k: int = 4,
                       generation: Generation | None = None, seed: int = 0, batch_size: int = 64,
                       progress: bool | None = None) -> tuple[list[list[str]], list[list[bool]]]:
    """``(completions, ended)``: ``k`` independent samples of π(·|x) per prompt (texts without it),
    prompt i's at ``[i]``, and whether each ended with EOS; a seed fixes them for a batch_size."""
    prompts, k = check_prompts(prompts), _check_k(k)
    generation = generation if generation is not None else Generation()
    repeated = [prompt for prompt in prompts for _ in range(k)]  # [x0, x0, x0, x0, x1, ...]
    texts, ids, mask = generate(policy, tokenizer, repeated, generation.max_new_tokens,
                                generation.temperature, seed=seed, batch_size=batch_size,
                                return_ids=True, progress=progress)
    last = ids.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)  # last sampled
    stops = (last == tokenizer.eos_token_id).tolist()
    return ([texts[i * k:(i + 1) * k] for i in range(len(prompts))],
            [stops[i * k:(i + 1) * k] for i in range(len(prompts))])


def score_completions(prompts: Sequence[str], completions: Sequence[Sequence[str]],
                      reward: Callable[[list[str]], Any],
                      score_prompt: bool = True) -> list[list[float]]:
    """r(x, y) of every completion, shaped like ``completions``; ``reward``: texts → a number each.

    With ``score_prompt`` (the default) it reads x ⊕ y, as the paper's classifier reads the review;
    ``score_prompt=False`` scores y alone.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must match, "
                         f"got {len(prompts)} and {len(completions)}")
    texts = [(prompt + c) if score_prompt else c
             for prompt, group in zip(prompts, completions) for c in group]
    values = _rewards(reward, texts)
    out, start = [], 0
    for group in completions:
        out.append(values[start:start + len(group)])
        start += len(group)
    return out


def _rewards(reward: Callable, texts: list[str]) -> list[float]:
    """One finite float per text; a float32 score becomes the same Python float (JSON keeps it)."""
    if not callable(reward):
        raise ValueError(f"reward must be callable (texts -> scores), got {type(reward).__name__}")
    values = torch.as_tensor(reward(texts)).detach().cpu().reshape(-1)
    if values.numel() != len(texts):
        raise ValueError(f"reward returned {values.numel()} scores for {len(texts)} texts")
    values = values.tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"reward returned a non-finite score {v} "
                             f"for text {i}: {texts[i][:60]!r}")
    return values


def _label_scored(prompts, completions, scores, ended=None) -> tuple[list[dict], Report]:
    """make_pairs (every pair, ties skipped), then drop pairs with a blank side; one report."""
    pairs, ties = make_pairs(prompts, completions, scores, ended)
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

    Records add ``chosen_reward``, ``rejected_reward``, ``prompt_id`` (the prompt's index). Pairs
    with equal rewards, identical texts or an empty side are skipped, counted in the ``Report``.
    """
    check_prompts(prompts)
    return _label_scored(prompts, completions,
                         score_completions(prompts, completions, reward, score_prompt))


def split_by_prompt(pairs: Sequence[dict], eval_size: int | float,
                    seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` with all pairs of a prompt on one side; ``eval_size`` counts prompts.

    Grouped by the prompt *text*: reviews that open alike ("This movie") share a side too.
    """
    return train_eval_split(list(pairs), eval_size, seed=seed, group="prompt")


def make_preference_data(prompts: Sequence[str], completions: Sequence[Sequence[str]],
                         reward: Callable, score_prompt: bool = True,
                         ended: Sequence[Sequence[bool]] | None = None
                         ) -> tuple[list[dict], list[dict], PreferenceSummary]:
    """``(pairs, scored, summary)``: every pair of each prompt's completions labelled by ``reward``.

    ``scored`` holds each prompt's completions with their rewards (and ``ended`` flags).
    """
    prompts = check_prompts(prompts)
    scores = score_completions(prompts, completions, reward, score_prompt)
    pairs, report = _label_scored(prompts, completions, scores, ended)
    validate_pairs(pairs)  # never hand on a record a trainer would reject
    if not pairs:
        raise ValueError(f"no preference pair survived labelling: {report.total:,} candidates, "
                         f"skipped {dict(report.skipped)}; sample more completions or prompts")
    seen = {(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}
    flat = torch.tensor([v for group in scores for v in group], dtype=torch.float64)
    margins = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    summary = PreferenceSummary(
        n_prompts=len(prompts), k=len(completions[0]), n_candidate_pairs=report.total,
        n_pairs=len(pairs),
        skipped=dict(report.skipped), mean_reward=flat.mean().item(),
        std_reward=flat.std().item() if flat.numel() > 1 else 0.0,
        mean_margin=sum(margins) / len(margins), duplicates=len(pairs) - len(seen))
    scored = [{"prompt_id": i, "prompt": prompt, "completions": list(group), "rewards": values}
              for i, (prompt, group, values) in enumerate(zip(prompts, completions, scores))]
    if ended is not None:
        for row, stops in zip(scored, ended):
            row["ended"] = [bool(s) for s in stops]
    return pairs, scored, summary


def reward_fingerprint(reward: Callable) -> str:
    """A hash of the reward's scores on :data:`PROBE_TEXTS` (rounded to 1e-5), for any callable."""
    values = [round(v, 5) for v in _rewards(reward, list(PROBE_TEXTS))]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]
