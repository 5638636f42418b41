"""Shared fixtures: a tiny GPT-2 with its locally trained tokenizer, and the ``ci`` run folder of
notebooks 04 and 05, each built once per test session."""

import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import re
from pathlib import Path

import pytest
import torch

from dpo_edu import data, models, pipeline, toy
from dpo_edu.cli import run_course
from dpo_edu.presets import get_preset
from dpo_edu.stages import Stage

ROOT = Path(__file__).resolve().parents[1]
# A tiny run folder: tiny_lm's GPT-2, 6 training-review prefixes (2 held out) × 4 completions of 6 tokens.
TINY_RUN = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.n_positions": 64,
            "model.vocab_size": 300, "data.reviews": 100, "generation.max_new_tokens": 6, "pairs.prompts": 6,
            "pairs.eval_prompts": 2, "pairs.batch_size": 8}


# What a student should not have to read in a cell's output (a progress bar's own HTML is theirs to show).
OUTPUT_NOISE = {
    "an object's repr": re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-f]+>"),
    "a raw JSON dump": re.compile(r'\{"'),
    "a text progress bar": re.compile(r"\d+%\|"),
    "transformers' loading or saving bars": re.compile(r"Loading weights|Writing model shards|Loading checkpoint"),
}


RICH_OUTPUTS = ("text/html", "text/markdown", "text/latex", "image/", "application/vnd.jupyter.widget-view+json")


def shown_text(output: dict) -> str:
    """What JupyterLab shows of an output as text: a stream's, or the plain text of a result without a richer form."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    if output["output_type"] == "error":
        return f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    if any(kind.startswith(RICH_OUTPUTS) for kind in data):
        return ""  # drawn instead of the plain text (a record's own MIME type is not: its text shows)
    text = data.get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def output_noise(cells: list[dict]) -> list[str]:
    """Every output of ``cells`` (nbformat's) that shows one of ``OUTPUT_NOISE``, named by cell and what it is."""
    return [f"cell {index}: {what}: {pattern.search(text).group(0)!r} in {text[:160]!r}"
            for index, cell in enumerate(cells) for output in cell.get("outputs", [])
            for text in [shown_text(output)] for what, pattern in OUTPUT_NOISE.items() if pattern.search(text)]


def load_script(relative: str):
    """A script of the repository (``benchmarks/…``, ``scripts/…``) imported as a module, for its functions."""
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_preset():
    """The ``ci`` preset shrunk to a 2-layer, 32-wide GPT-2 with a 300-token vocabulary."""
    return get_preset("ci", {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.n_positions": 64,
                             "model.vocab_size": 300}, verbose=False)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tiny_preset):
    """``(policy, tokenizer)`` through the preset's own code path (about a second); treat it as read-only."""
    texts = [review.text[:300] for review in data.load_imdb(n=200, verbose=False)]
    with toy.one_thread():
        policy, tokenizer = models.init_policy(tiny_preset.model, texts, tmp_path_factory.mktemp("tiny_lm"))
    return policy.eval(), tokenizer


@pytest.fixture
def one_thread():
    """Matrices this small run fastest on one CPU thread (two threads on a busy 2-core machine spin)."""
    with toy.one_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_per_module():
    """``one_thread`` for a whole test module, its module-scoped fixtures included."""
    with toy.one_thread():
        yield


@pytest.fixture(scope="session")
def short_reviews():
    """The first 100 reviews of the bundled IMDb CSV, cut to 150 characters: texts for a tiny tokenizer."""
    with open(data.bundled_csv_path(), newline="", encoding="utf-8") as f:
        return [row["text"][:150] for row in itertools.islice(csv.DictReader(f), 100)]


# A hang guard, not a timing test (timings are benchmarks'): the slowest cell of any notebook at ci takes about
# 40 s on 2 idle cores, and 20–30 times that on 2 cores that two other CPU-bound jobs share (torch's threads
# then wait on each other); a cell past an hour has hung.
CELL_TIMEOUT = 3600
# The kernels' OpenMP threads sleep while they wait instead of spinning: on 2 cores that two other CPU-bound jobs
# share, spinning threads wait on descheduled ones and notebook 04 took 9 minutes instead of 45 s (the sums, and
# so the pinned trajectories, do not depend on how a thread waits).
WAIT_POLICY = "PASSIVE"


@pytest.fixture(scope="session")
def ci_course_run(tmp_path_factory):
    """The run folder that notebooks 04–07 filled at the ``ci`` preset, as a student runs them (05–07 load what
    04 and 05 built), through ``dpo-edu run``'s code path: executed notebooks, summary.json and
    every cached stage, so a later run of 05 (the browser test's) only loads. About 3 minutes on 2 idle cores."""
    out = tmp_path_factory.mktemp("ci_course_run")
    with pytest.MonkeyPatch.context() as patch:  # the thread count of the pinned trajectories (test_trajectories)
        patch.setenv("OMP_NUM_THREADS", str(load_script("scripts/pin_trajectories.py").THREADS))
        patch.setenv("OMP_WAIT_POLICY", WAIT_POLICY)
        run_course("ci", out, ["04_gpt2_preferences", "05_rlhf_vs_dpo", "06_after_dpo", "07_what_goes_wrong"],
                   cell_timeout=CELL_TIMEOUT)
    return out


def hash_reward(texts):
    """A continuous fake reward in [0, 1): distinct texts practically never tie."""
    return torch.tensor([int(hashlib.sha256(t.encode()).hexdigest()[:12], 16) / 16**12 for t in texts])


def tiny_reference(tiny_lm, run_dir, policy=None, seed: int = 0) -> pipeline.Reference:
    """π_ref of a tiny run folder, made by hand: the policy saved in ``sft/``, its stage's settings."""
    tiny_policy, tokenizer = tiny_lm
    policy = policy if policy is not None else tiny_policy
    folder = models.save_policy(policy, tokenizer, run_dir / "sft")
    settings = {"model": dataclasses.asdict(get_preset("ci", TINY_RUN, verbose=False).model), "seed": seed}
    return pipeline.Reference(policy, tokenizer, [], Stage(folder, settings))
