"""The reward–KL frontier as an experiment (DPO paper, Fig. 2; ``dpo-edu frontier``): every method
from one π_ref, one set of pairs and one reward model, each setting trained with several seeds (they
vary the training order and the sampling) and evaluated alike on two disjoint prompt sets; then
``frontier.frontier_table`` reads each method at matched KL, with 95 % intervals.

Each run is a stage of the run folder (``runs/<method>/<setting>/seed_<s>``), so an interrupted
study resumes where it stopped. Best-of-N trains nothing: N samples of π_ref, the reward model's
pick.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

from . import frontier, pipeline, runs
from .data import save_json
from .presets import Preset
from .progress import progress_bar
from .stages import changes, finished


@dataclass(frozen=True)
class Setting:
    """One point of a method's sweep: what it trains, and where its runs live."""

    method: str  # one of presets.METHODS
    name: str  # "β=0.1", "target KL 3", "N ≤ 64": the legend's words
    folder: str  # "dpo/beta_0.1": under run_dir/runs, one sub-folder a seed
    value: Any = None  # the swept value: β, target KL, α, or the N of Best-of-N


def settings(preset: Preset, methods=None) -> list[Setting]:
    """Every setting of the preset's frontier, for ``methods`` (default: the preset's)."""
    config = preset.frontier
    methods = tuple(methods or config.methods)
    sweeps = {"DPO": ("beta", config.dpo_betas), "IPO": ("beta", config.ipo_betas),
              "cDPO": ("beta", config.cdpo_betas), "PPO": ("target", config.ppo_targets),
              "PPO-GT": ("target", config.ppo_targets), "Preferred-FT": (None, (None,)),
              "Unlikelihood": ("alpha", config.unlikelihood_alphas),
              "RLOO": ("beta", config.rloo_betas), "GRPO": ("beta", config.grpo_betas),
              "Online DPO": ("beta", config.online_dpo_betas)}
    words = {"beta": "β={:g}", "target": "target KL {:g}", "alpha": "α={:g}"}
    out = []
    for method in methods:
        slug = method.lower().replace("-", "_").replace(" ", "_")
        if method == "Best-of-N":
            ns = config.best_of_n
            out.append(Setting(method, f"N ≤ {max(ns)}", f"{slug}/n_{max(ns)}", ns))
            continue
        name, values = sweeps[method]
        for value in values:
            label = "default" if name is None else f"{name}_{value:g}"
            out.append(Setting(method, "" if name is None else words[name].format(value),
                               f"{slug}/{label}", value))
    return out


SWEEPS = ("dpo_betas", "ipo_betas", "cdpo_betas", "ppo_targets", "unlikelihood_alphas",
          "rloo_betas", "grpo_betas", "online_dpo_betas")  # the frontier's swept settings


def middle_settings(config, keep: int = 2, largest_n: int = 16) -> dict:
    """Overrides that cut each sweep of a ``presets.Frontier`` to its middle ``keep`` values and
    Best-of-N to N ≤ ``largest_n``: a notebook's quick frontier, inside the shipped study's."""
    out = {}
    for name in SWEEPS:
        values = getattr(config, name)
        start = max(0, (len(values) - keep) // 2)
        out[f"frontier.{name}"] = list(values[start : start + keep])
    small = [n for n in config.best_of_n if n <= largest_n]
    out["frontier.best_of_n"] = small or [min(config.best_of_n)]
    return out


class Shared(NamedTuple):
    """The stages every run is built on, from ``prepare``."""

    ref: pipeline.Reference
    reward: Any  # the ground truth
    pairs: pipeline.Pairs
    reward_model: pipeline.Trained
    prompts: dict  # {"select": [...], "report": [...]}
    train_prompts: list  # the training prefixes, for the methods that sample (SAMPLING)
    reference: pipeline.Trained  # π_ref evaluated as every run is


def prepare(preset: Preset, run_dir, seed: int = 0, callback=None) -> Shared:
    """π_ref, the ground truth, the pairs, the reward model, π_ref's evaluation: built or read.
    Where notebook 04 has not built π_ref in ``run_dir``, a banner says what will be built, and
    roughly how long it takes."""
    if not finished(Path(run_dir) / "sft", pipeline.reference_settings(preset, seed)):
        print(stages_banner(preset, run_dir, seed))
    ref = pipeline.reference_policy(preset, run_dir, seed=seed)
    reward = pipeline.ground_truth_reward(preset, run_dir, seed=seed)
    pairs = pipeline.preference_pairs(preset, run_dir, ref=ref, reward=reward, seed=seed)
    rm = pipeline.reward_model(preset, run_dir, ref=ref, pairs=pairs, seed=seed, callback=callback)
    prompts = runs.eval_splits(preset, ref.tokenizer, seed=seed)
    reference = runs.reference_eval(preset, run_dir, ref=ref, reward=reward, prompts=prompts,
                                    seed=seed)
    held_out = {pair["prompt"] for pair in pairs.eval}  # PPO samples every other training prefix
    train_prompts = sorted({row["prompt"] for row in pairs.scored} - held_out)
    return Shared(ref, reward, pairs, rm, prompts, train_prompts, reference)


def train_config(preset: Preset, setting: Setting, seed: int, items: int):
    """The config of one run: the method's section of the preset, its swept value, the seed, and
    an evaluation every ⌈steps / frontier.evals⌉ steps."""
    base = {"DPO": preset.dpo, "IPO": preset.dpo, "cDPO": preset.dpo, "PPO": preset.ppo,
            "PPO-GT": preset.ppo, "Preferred-FT": preset.preferred_ft,
            "Unlikelihood": preset.unlikelihood, "RLOO": preset.rloo, "GRPO": preset.grpo,
            "Online DPO": preset.online_dpo}[setting.method]
    swept = {"DPO": dict(beta=setting.value),  # its loss as preset.dpo says: sigmoid unless set
             "IPO": dict(beta=setting.value, loss_type="ipo", label_smoothing=0.0),
             "cDPO": dict(beta=setting.value, loss_type="sigmoid",
                          label_smoothing=preset.frontier.cdpo_epsilon),
             "PPO": dict(target_kl=setting.value), "PPO-GT": dict(target_kl=setting.value),
             "Preferred-FT": {}, "Unlikelihood": dict(alpha=setting.value),
             "RLOO": dict(beta=setting.value), "GRPO": dict(beta=setting.value),
             "Online DPO": dict(beta=setting.value)}[setting.method]
    config = replace(base, **swept, seed=seed)
    every = runs.eval_every(config.total_steps(items), preset.frontier.evals)
    return replace(config, eval_every=every)


def stages_banner(preset: Preset, run_dir, seed: int = 0) -> str:
    """What a notebook after 04 says before it builds notebook 04's stages itself."""
    rule = "─" * 88
    return (f"{rule}\nNotebook 04's stages are not in {run_dir} (preset {preset.name}, seed "
            f"{seed}): building them first,\n{preset.stages_time}: π_ref (SFT), the ground-truth "
            f"classifier, the preference pairs and the reward model.\nRun notebook 04 first to "
            f"watch them train; every later notebook then reads them back.\n{rule}")


# the methods that train on their own samples (on the reward model's scores, but PPO-GT)
SAMPLING = ("PPO", "PPO-GT", "RLOO", "GRPO", "Online DPO")


def run_one(preset: Preset, run_dir, shared: Shared, setting: Setting, seed: int,
            callback=None) -> pipeline.Trained:
    """One run of ``setting`` at ``seed`` (trained, or read back when it is already there)."""
    folder = f"runs/{setting.folder}/seed_{seed}"
    label = f"{setting.method} {setting.name} seed {seed}".replace("  ", " ")
    if setting.method == "Best-of-N":
        return runs.best_of_n_run(preset, run_dir, shared.ref, shared.reward, shared.prompts,
                                  shared.reward_model, setting.value, seed, folder, label)
    if setting.method in SAMPLING:
        config = train_config(preset, setting, seed, len(shared.train_prompts))
        rm = None if setting.method == "PPO-GT" else shared.reward_model
        return runs.online_run(preset, run_dir, shared.ref, shared.reward, shared.prompts,
                               shared.train_prompts, config, folder, label, reward_model=rm,
                               callback=callback)
    config = train_config(preset, setting, seed, len(shared.pairs.train))
    return runs.offline_run(preset, run_dir, shared.ref, shared.pairs, shared.reward,
                            shared.prompts, config, folder, label, callback=callback)


def evals(run: pipeline.Trained) -> list[dict]:
    """A run's per-prompt evaluations, as ``frontier`` reads them: one row a step and set."""
    return [{"step": row["step"], "split": split, **values}
            for row in run.metrics if "eval/prompts" in row
            for split, values in row["eval/prompts"].items()]


class Study(NamedTuple):
    runs: list[dict]  # {"method", "setting", "seed", "evals", "metrics", "samples", "cost"}
    reference: dict  # π_ref's per-prompt evaluation on each set
    table: dict  # frontier.frontier_table's


def run_study(preset: Preset, run_dir, seed: int = 0, methods=None, workers: int = 1,
              callback: Callable[[str], Any] | None = None, progress: bool = True,
              shared: Shared | None = None) -> Study:
    """Every setting × seed of the frontier (seeds ``seed``, ``seed + 1``, …), run by run in
    ``workers`` processes of one thread each; each finished run is reused, so an interrupted study
    restarts where it stopped. A folder of another preset's or another π_ref's study is refused.
    ``shared``: what ``prepare`` returned for this folder, if a notebook has already called it."""
    _claim(preset, run_dir, seed)
    shared = shared or prepare(preset, run_dir, seed=seed)
    jobs = [(s, seed + k) for s in settings(preset, methods)
            for k in range(preset.frontier.seeds_of(s.method))]
    if workers > 1:  # fresh processes (spawn: torch's thread pools do not survive a fork)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(preset, str(run_dir), seed)) as pool:
            futures = [pool.submit(_work, setting, run_seed) for setting, run_seed in jobs]
            for future in progress_bar(as_completed(futures), total=len(futures),
                                       desc="frontier runs", disable=not progress):
                future.result()  # a worker's error stops the study, naming its run
    trained = []
    for setting, run_seed in progress_bar(jobs, desc="frontier runs",
                                          disable=not progress or workers > 1):
        run = run_one(preset, run_dir, shared, setting, run_seed,  # reads back what workers made
                      callback=callback(f"{setting.method} {setting.name}") if callback else None)
        trained.append({"method": setting.method, "setting": setting.name, "seed": run_seed,
                        "evals": evals(run), "metrics": run.metrics, "samples": run.samples,
                        "cost": run.cost})
    reference = {row["split"]: row for row in evals(shared.reference)}
    methods = [m for m in preset.frontier.methods if any(r["method"] == m for r in trained)]
    table = frontier.frontier_table(trained, reference, budgets=preset.frontier.budgets,
                                    methods=methods,  # differences from DPO, or the first method
                                    baseline="DPO" if "DPO" in methods else methods[0])
    return Study(trained, reference, table)


def _claim(preset: Preset, run_dir, seed: int) -> None:
    """Mark ``run_dir`` as this preset's and this π_ref's study; refuse one that is another's."""
    path = Path(run_dir) / "study.json"
    mine = json.loads(json.dumps({"preset": preset.name,
                                  "reference": pipeline.reference_settings(preset, seed)}))
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            changed = ", ".join(changes(theirs, mine))
            raise ValueError(f"{run_dir} holds another study ({changed} differ): "
                             "use another folder")
    save_json(mine, path)


_WORKER: dict = {}


def _start_worker(preset: Preset, run_dir: str, seed: int) -> None:
    import torch

    torch.set_num_threads(1)  # two processes of one thread: more than one of two on these sizes
    _WORKER.update(preset=preset, run_dir=run_dir, shared=prepare(preset, run_dir, seed=seed))


def _work(setting: Setting, seed: int) -> None:
    try:
        run_one(_WORKER["preset"], _WORKER["run_dir"], _WORKER["shared"], setting, seed)
    except Exception as error:  # the parent sees this message: say which run it was
        raise RuntimeError(f"{setting.method} {setting.name} seed {seed}: "
                           f"{type(error).__name__}: {error}") from None


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "frontier"  # in a repository checkout


def shipped_study(name: str = "cpu") -> dict | None:
    """The study shipped in ``data/frontier/<name>.json``; None where there is no repository (a
    package installed alone, as in Colab)."""
    path = SHIPPED / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def study_json(study: Study, preset: Preset, command: str = "") -> dict:
    """The shipped form (``frontier.json``): every evaluation point with its interval over prompts
    (seeds apart), π_ref's, the matched-KL table, and each method's mean cost a run."""
    points = []
    for run in study.runs:
        for row in run["evals"]:
            if row["split"] != "report":
                continue
            reward, low, high = frontier.mean_interval(row["reward"])
            points.append({"method": run["method"], "setting": run["setting"], "seed": run["seed"],
                           "step": row["step"], "reward": reward, "reward_low": low,
                           "reward_high": high, "kl": sum(row["kl"]) / len(row["kl"]),
                           "length": sum(row["length"]) / len(row["length"])})
    ref = study.reference["report"]
    reward, low, high = frontier.mean_interval(ref["reward"])
    return {"preset": preset.name, "command": command, "frontier": asdict(preset.frontier),
            "reference": {"reward": reward, "reward_low": low, "reward_high": high},
            "points": points, "table": study.table,
            "costs": cost_frame(study.runs).round(3).to_dict(orient="index")}


def save_study(study: Study, preset: Preset, path, command: str = "") -> Path:
    """``study_json`` written to ``path``."""
    return save_json(study_json(study, preset, command), path)



def value_text(row: dict) -> str:
    """A reading of the table without its method: "0.612 [0.583, 0.640]", or why there is none."""
    if row["value"] is None:
        return row["status"]
    if row["low"] is None:
        return f"{row['value']:.3f} ({row['status']})"
    return f"{row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def reading(row: dict) -> str:
    """One method's reading of the table: "DPO 0.612 [0.583, 0.640]", or why there is none."""
    return f"{row['method']} {value_text(row)}"


def table_lines(table: dict) -> list[str]:
    """The matched-KL table as text: a line a method and budget, its reward and 95 % interval,
    and its difference from the baseline with the verdict."""
    lines = [f"reward at matched KL, 95 % intervals; differences from {table['baseline']}:"]
    for row in table["rows"]:
        line = f"  KL {row['budget']:<4g} {reading(row)}"
        if row["difference"] is not None and row["verdict"] != "baseline":
            line += (f"; {row['difference']:+.3f} [{row['difference_low']:+.3f}, "
                     f"{row['difference_high']:+.3f}] {row['verdict']}" if row["difference_low"]
                     is not None else f"; {row['difference']:+.3f} ({row['verdict']})")
        lines.append(line)
    return lines



def markdown_table(table: dict) -> str:
    """The matched-KL table in Markdown: a row a method, a column a budget; each cell the reward
    with its 95 % interval and, in brackets, the difference from the baseline with its verdict."""
    budgets = table["budgets"]
    lines = ["| method | " + " | ".join(f"KL {b:g}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    methods = list(dict.fromkeys(row["method"] for row in table["rows"]))
    cells = {(row["method"], row["budget"]): row for row in table["rows"]}
    for method in methods:
        out = []
        for budget in budgets:
            row = cells[(method, budget)]
            text = value_text(row)
            if row["difference"] is not None and row["verdict"] != "baseline":
                low, high = row["difference_low"], row["difference_high"]
                spread = "" if low is None else f" [{low:+.3f}, {high:+.3f}]"
                text += f" ({row['difference']:+.3f}{spread}, {row['verdict']})"
            out.append(text)
        lines.append(f"| {method} | " + " | ".join(out) + " |")
    return "\n".join(lines)

# --- tables for the notebooks ---------------------------------------------------------------------


def table_frame(table: dict):
    """The matched-KL table as a DataFrame: a row a method, for each budget its reward with the 95 %
    interval, its difference from the baseline and the verdict."""
    import pandas as pd

    rows = [{"method": r["method"], "KL": r["budget"], "reward": value_text(r),
             f"− {table['baseline']}": "" if r["difference"] is None else f"{r['difference']:+.3f}",
             "verdict": r["verdict"]} for r in table["rows"]]
    return pd.DataFrame(rows).pivot(index="method", columns="KL")


def cost_frame(runs: list[dict], reward_model_cost: dict | None = None):
    """Each method's mean cost over its runs (seconds, token passes, peak memory), and the reward
    model's, which RLHF and every method that samples against r_φ pay once."""
    import pandas as pd

    costs = pd.DataFrame([{"method": r["method"], **r["cost"]} for r in runs])
    costs = costs.groupby("method").mean()
    if reward_model_cost is not None:
        costs.loc["reward model (once)"] = pd.Series(reward_model_cost)
    return costs


def samples_frame(reference_samples: list[dict], runs: list[dict], methods, n: int = 8):
    """The first ``n`` report prompts' completions of π_ref and of one setting of each method (its
    last evaluation), with their ground-truth rewards."""
    import pandas as pd

    def cells(samples):
        return [f"{s['completion']}  ({s['reward']:.2f})" for s in samples[:n]]

    frame = pd.DataFrame({"prompt": [s["prompt"] for s in reference_samples[:n]],
                          "π_ref": cells(reference_samples)})
    for method in methods:
        run = next((r for r in runs if r["method"] == method and r["samples"]), None)
        if run is not None:
            frame[f"{method} {run['setting']}"] = cells(run["samples"])
    return frame
