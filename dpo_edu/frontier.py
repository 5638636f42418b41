"""The reward–KL frontier as an experiment: methods compared at matched KL, with intervals.

A method's frontier is the upper envelope of its (setting, step) points, chosen once on the
*select* prompts, then read on the disjoint *report* prompts at KL budgets (2, 5, 10 nats):
linear between (0, π_ref's reward) and the chosen points, sorted by KL, then flat as far as its
farthest checkpoint went. A 95 % percentile bootstrap redraws the report prompts (one draw shared
by every method and π_ref: paired differences) and each setting's seeds. A difference is a win
only when its interval excludes 0. Pure numpy; a run is ``{"method", "setting", "seed", "evals":
[{"step", "split", "reward", "kl", "length"}]}``, each list one value a prompt (its samples'
mean), the same prompts in every run.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SPLITS = ("select", "report")
LEVEL = 0.95  # the intervals' coverage; an interval needs this share of replicates to reach


def upper_envelope(kl, reward) -> np.ndarray:
    """Indices of the upper-left frontier, by increasing KL: each point has a higher reward
    than every point of lower or equal KL (ties go to the lower KL)."""
    kl, reward = _pair("kl", kl, "reward", reward)
    order = np.lexsort((-reward, kl))  # by KL; at equal KL the highest reward first
    r = reward[order]
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(r)[:-1]])  # max r_j, j before
    return order[r > best_before]


def read_at(kl, reward, budget: float, origin_reward: float) -> float:
    """The frontier through (0, origin_reward) and the points, linear in KL, read at ``budget``;
    NaN when no point reaches that KL."""
    kl, reward = _pair("kl", kl, "reward", reward)
    budgets = _budgets("budget", [budget])
    origin = _finite("origin_reward", np.array([float(origin_reward)]))
    return float(_read(kl[None], reward[None], origin, budgets)[0, 0])


def mean_interval(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): a per-prompt mean and its 95 % percentile bootstrap interval."""
    values = _finite("values", np.asarray(values, dtype=float))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty list of numbers, got shape {values.shape}")
    weights = _draw_weights(np.random.default_rng(seed), _count("n_boot", n_boot), values.size)
    low, high = _percentiles(weights @ values)  # each replicate: Σ_i w_i v_i, w = counts / P
    return float(values.mean()), low, high


def select_points(runs: Sequence[dict], reference: dict | None = None) -> dict[str, list]:
    """Each method's frontier points, chosen on the select split: ``{method: [(setting, step)]}``
    by increasing KL (reward and KL: means over prompts, then over seeds)."""
    grid = _collect(runs, reference)
    return {method: _select(settings) for method, settings in grid.items()}


def frontier_table(runs: Sequence[dict], reference: dict, budgets=(2.0, 5.0, 10.0),
                   baseline: str = "DPO", n_boot: int = 1000, seed: int = 0,
                   methods: Sequence[str] | None = None) -> dict:
    """Every method's report reward at each KL budget, with its interval and its difference to
    ``baseline`` (paired over prompts); ``{"rows", "selected", ...}``, None where not reached."""
    budgets, n_boot = _budgets("budgets", budgets), _count("n_boot", n_boot)
    if not isinstance(reference, dict):
        raise ValueError(f"reference must be a dict of splits, got {type(reference).__name__}")
    grid = _collect(runs, reference)
    methods = list(grid) if methods is None else list(methods)
    for method in methods:
        if method not in grid:
            raise ValueError(f"methods: {method!r} has no runs; runs hold {sorted(grid)}")
    if baseline not in methods:
        raise ValueError(f"baseline {baseline!r} is not among the methods {methods}")
    ref_reward = np.asarray(reference["report"]["reward"], dtype=float)
    n_prompts = ref_reward.size
    selected = {method: _select(grid[method]) for method in methods}
    farthest = {method: _farthest(grid[method]) for method in methods}

    # The point estimate: every prompt and every seed once (weights 1/P and 1/S).
    uniform = np.full((1, n_prompts), 1 / n_prompts)
    estimate = {m: _reads(grid[m], selected[m], farthest[m], uniform, uniform @ ref_reward,
                          budgets, None) for m in methods}
    # B replicates: the prompts drawn once for all (paired), each setting's seeds drawn apart.
    rng = np.random.default_rng(seed)
    prompt_w = _draw_weights(rng, n_boot, n_prompts)  # (B, P), rows sum to 1
    origin = prompt_w @ ref_reward  # (B,): π_ref's reward on each replicate's prompts
    boot = {m: _reads(grid[m], selected[m], farthest[m], prompt_w, origin, budgets, rng)
            for m in methods}

    rows = []
    for method in methods:
        for k, budget in enumerate(budgets):
            row = {"method": method, "budget": float(budget),
                   **_summary(estimate[method][0, k], boot[method][:, k])}
            if method == baseline:  # the paired difference: r_method − r_baseline, per replicate
                diff = dict.fromkeys(("value", "low", "high", "reach_share", "status"))
            else:
                diff = _summary(estimate[method][0, k] - estimate[baseline][0, k],
                                boot[method][:, k] - boot[baseline][:, k])
            rows.append({**row, "baseline": baseline, "verdict": _verdict(diff, method == baseline),
                         **{("difference" if key == "value" else f"difference_{key}"): v
                            for key, v in diff.items()}})
    points = {m: [_point_summary(grid[m], setting, step) for setting, step in selected[m]]
              for m in methods}
    return {"baseline": baseline, "budgets": [float(b) for b in budgets], "n_boot": n_boot,
            "seed": seed, "level": LEVEL, "rows": rows, "selected": points}


# --- the frontier, read on B replicates at once --------------------------------------------

def _read(kl: np.ndarray, reward: np.ndarray, origin: np.ndarray,
          budgets: np.ndarray) -> np.ndarray:
    """(B, K) points and (B,) origins -> (B, len(budgets)) readings; NaN where not reached."""
    x = np.concatenate([np.zeros((len(kl), 1)), kl], axis=1)  # the origin (0, r_ref) first
    y = np.concatenate([origin[:, None], reward], axis=1)
    order = np.argsort(x, axis=1, kind="stable")
    x, y = np.take_along_axis(x, order, 1), np.take_along_axis(y, order, 1)
    rows, last = np.arange(len(x)), x.shape[1] - 1
    out = np.full((len(x), len(budgets)), np.nan)
    for k, b in enumerate(budgets):
        j = (x <= b).sum(axis=1) - 1  # the last point at or below the budget (the origin: 0 ≤ b)
        inside = j < last  # a next point with x > b exists
        nxt = np.minimum(j + 1, last)
        x0, x1, y0, y1 = x[rows, j], x[rows, nxt], y[rows, j], y[rows, nxt]
        t = np.where(inside, (b - x0) / np.where(inside, x1 - x0, 1.0), 0.0)  # share of the way
        # Past the last point only on an exact hit (to rounding: a mean of 4.4s may be 4.3999…).
        reached = inside | np.isclose(x0, b, rtol=1e-9, atol=1e-12)
        out[:, k] = np.where(reached, y0 + t * (y1 - y0), np.nan)  # r = r_j + t (r_{j+1} − r_j)
    return out


def _reads(settings: dict, selected: list, farthest: tuple, prompt_w: np.ndarray,
           origin: np.ndarray, budgets: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """A method's frontier read at every budget, one row per replicate (B, len(budgets)).

    A point = Σ_s c_s Σ_i w_i v_si: prompt-weighted means, averaged over the drawn seeds. Past its
    last point the frontier stays flat up to the KL of the method's ``farthest`` checkpoint: a
    policy that far away exists, and none of them beat the last point's reward."""
    seed_w = {}
    for setting, data in settings.items():  # one seed draw per setting, shared by its steps
        n_seeds = len(data["seeds"])
        seed_w[setting] = (np.full((1, n_seeds), 1 / n_seeds) if rng is None
                           else _draw_weights(rng, len(prompt_w), n_seeds))
    kl = np.empty((len(prompt_w), len(selected) + 1))
    reward = np.empty_like(kl)
    for p, (setting, step) in enumerate([*selected, farthest]):
        data = settings[setting]
        t = data["steps"].index(step)
        for name, out in (("kl", kl), ("reward", reward)):
            per_seed = prompt_w @ data["report"][name][:, t].T  # (B, S): each seed's mean
            out[:, p] = (per_seed * seed_w[setting]).sum(axis=1)
    last = kl[:, :-1].argmax(axis=1)  # the flat stretch: the last chosen point's reward, up to
    rows = np.arange(len(kl))  # the farthest checkpoint's KL (no further than where it lies)
    kl[:, -1] = np.maximum(kl[:, -1], kl[rows, last])
    reward[:, -1] = reward[rows, last]
    return _read(kl, reward, origin, budgets)


def _summary(estimate: float, replicates: np.ndarray) -> dict:
    """The estimate, the share of replicates that reach the budget, and the interval over them
    when at least LEVEL of them do; ``status`` says which (no NaN: None where no number)."""
    share = float(np.mean(~np.isnan(replicates)))
    out = {"value": None, "low": None, "high": None, "reach_share": share}
    if math.isnan(estimate):
        return {**out, "status": "not reached"}
    if share < LEVEL:
        return {**out, "value": float(estimate), "status": "interval undetermined"}
    low, high = _percentiles(replicates[~np.isnan(replicates)])
    return {**out, "value": float(estimate), "low": low, "high": high, "status": "ok"}


def _verdict(diff: dict, is_baseline: bool) -> str:
    """better / worse when the difference's interval excludes 0, else within noise."""
    if is_baseline:
        return "baseline"
    if diff["status"] != "ok":
        return "not reached" if diff["status"] == "not reached" else "undetermined"
    if diff["low"] > 0:
        return "better"
    return "worse" if diff["high"] < 0 else "within noise"


def _point_summary(settings: dict, setting: str, step: int) -> dict:
    """A chosen point's seed-mean reward and KL on both splits (for plots and the table)."""
    data, out = settings[setting], {"setting": setting, "step": step}
    t = data["steps"].index(step)
    for split in SPLITS:
        for name in ("kl", "reward"):
            out[f"{split}_{name}"] = float(data[split][name][:, t].mean())
    return out


# --- selection and the data's shape --------------------------------------------------------

def _farthest(settings: dict) -> tuple[str, int]:
    """The (setting, step) whose seed-mean KL on the select split is the largest."""
    keys = [(setting, step) for setting, data in settings.items() for step in data["steps"]]
    kl = [data["select"]["kl"][:, t].mean() for data in settings.values()
          for t in range(len(data["steps"]))]
    return keys[int(np.argmax(kl))]


def _select(settings: dict) -> list[tuple[str, int]]:
    """The upper envelope of the (setting, step) seed means on the select split."""
    keys, kl, reward = [], [], []
    for setting, data in settings.items():
        for t, step in enumerate(data["steps"]):
            keys.append((setting, step))
            kl.append(data["select"]["kl"][:, t].mean())  # mean over prompts, then seeds
            reward.append(data["select"]["reward"][:, t].mean())
    return [keys[i] for i in upper_envelope(kl, reward)]


def _collect(runs: Sequence[dict], reference: dict | None) -> dict:
    """``{method: {setting: {"seeds", "steps", split: {name: (S, T, P)}}}}``, checked."""
    if not runs:
        raise ValueError("runs is empty: the frontier needs at least one run")
    n_prompts, source = {}, "the first run"  # how many prompts each split must have
    if reference is not None:
        source = "the reference"
        for split in SPLITS:
            if split not in reference or "reward" not in reference[split]:
                raise ValueError(f"reference must hold {split!r}: {{'reward': [...]}}")
            ref = _finite(f"reference {split} reward",
                          np.asarray(reference[split]["reward"], dtype=float))
            n_prompts[split] = ref.size
    grid: dict = {}
    for run in runs:
        name = f"run {run.get('method')} {run.get('setting')} seed {run.get('seed')}"
        missing = [key for key in ("method", "setting", "seed", "evals") if key not in run]
        if missing:
            raise ValueError(f"{name}: a run needs the keys {missing}")
        rows = {}
        for row in run.get("evals", []):
            if row.get("split") not in SPLITS:
                raise ValueError(f"{name}: split must be one of {SPLITS}, got {row.get('split')!r}")
            key = (row["split"], row["step"])
            if key in rows:
                raise ValueError(f"{name}: step {row['step']} appears twice in {row['split']!r}")
            reward, kl = (np.asarray(row[k], dtype=float) for k in ("reward", "kl"))
            for what, values in (("reward", reward), ("kl", kl),
                                 ("length", np.asarray(row.get("length", []), dtype=float))):
                if not np.isfinite(values).all():
                    raise ValueError(f"{name}: step {row['step']} ({row['split']}) has a "
                                     f"non-finite {what} (NaN or inf)")
            expected = n_prompts.setdefault(row["split"], reward.size)  # else the first run's
            if reward.size != expected or kl.size != expected:
                raise ValueError(f"{name}: step {row['step']} ({row['split']}) has {reward.size} "
                                 f"rewards and {kl.size} KLs, {source} has {expected} prompts")
            rows[key] = {"reward": reward, "kl": kl}
        steps = sorted(step for split, step in rows if split == "select")
        if not steps or steps != sorted(step for split, step in rows if split == "report"):
            raise ValueError(f"{name}: needs the same steps, at least one, in 'select' and "
                             f"'report', got {sorted(rows)}")
        setting = grid.setdefault(run["method"], {}).setdefault(
            run["setting"], {"seeds": [], "steps": steps, "runs": []})
        if run["seed"] in setting["seeds"]:
            raise ValueError(f"{name}: this seed appears twice")
        if steps != setting["steps"]:
            raise ValueError(f"{name}: steps {steps} differ from its other seeds' "
                             f"{setting['steps']}")
        setting["seeds"].append(run["seed"])
        setting["runs"].append(rows)
    for settings in grid.values():
        for data in settings.values():
            for split in SPLITS:  # (S seeds, T steps, P prompts)
                data[split] = {k: np.array([[rows[split, step][k] for step in data["steps"]]
                                            for rows in data["runs"]]) for k in ("reward", "kl")}
            del data["runs"]
    return grid


# --- small helpers -------------------------------------------------------------------------

def _draw_weights(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) bootstrap weights: how often each unit is drawn in n draws, over n."""
    draws = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]  # row b: b·n + i
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n) / n  # counts / n


def _percentiles(replicates: np.ndarray) -> tuple[float, float]:
    """The central LEVEL interval of the replicates (percentile bootstrap)."""
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def _finite(name: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has a non-finite value (NaN or inf)")
    return values


def _pair(name_x: str, x, name_y: str, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{name_x} and {name_y} must be 1-D of one length, got {x.shape} "
                         f"and {y.shape}")
    return _finite(name_x, x), _finite(name_y, y)


def _budgets(name: str, budgets) -> np.ndarray:
    budgets = np.asarray(budgets, dtype=float).reshape(-1)
    if budgets.size == 0 or not np.isfinite(budgets).all() or (budgets < 0).any():
        raise ValueError(f"{name} must be finite KL values ≥ 0 (nats), got {budgets.tolist()}")
    return budgets


def _count(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
    return value
