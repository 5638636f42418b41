"""The reward–KL frontier's statistics: the envelope and the reading against hand-made frontiers,
the bootstrap's coverage, paired differences, seed resampling, selection on the select split only,
budgets not reached and the input errors."""

import math

import numpy as np
import pytest

from dpo_edu import frontier

SELECT, REPORT = 40, 60  # prompts in each split (disjoint sets: they may differ in size)


def make_run(method, setting, seed, points, length=20.0):
    """A run from ``{step: {split: (reward, kl)}}``; a scalar is the same value for every prompt."""
    evals = []
    for step, splits in points.items():
        for split, (reward, kl) in splits.items():
            n = SELECT if split == "select" else REPORT
            evals.append({"step": step, "split": split,
                          "reward": np.broadcast_to(np.asarray(reward, float), (n,)).tolist(),
                          "kl": np.broadcast_to(np.asarray(kl, float), (n,)).tolist(),
                          "length": [length] * n})
    return {"method": method, "setting": setting, "seed": seed, "evals": evals}


def both(reward, kl):
    """The same point on both splits."""
    return {"select": (reward, kl), "report": (reward, kl)}


def make_reference(select=0.5, report=0.5):
    return {"select": {"reward": np.broadcast_to(select, (SELECT,)).tolist(), "kl": [0.0] * SELECT},
            "report": {"reward": np.broadcast_to(report, (REPORT,)).tolist(), "kl": [0.0] * REPORT}}


def row(table, method, budget):
    (found,) = [r for r in table["rows"] if r["method"] == method and r["budget"] == budget]
    return found


def has_nan(obj):
    if isinstance(obj, float):
        return math.isnan(obj)
    if isinstance(obj, dict):
        return any(has_nan(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_nan(v) for v in obj)
    return False


# --- the envelope and the reading ----------------------------------------------------------

def test_envelope_drops_dominated_points_and_breaks_ties_to_the_lower_kl():
    kl = [3.0, 1.0, 2.0, 2.0, 4.0, 0.5]
    reward = [0.7, 0.5, 0.4, 0.7, 0.9, 0.5]
    # By KL: 0.5 (0.5) kept; 1.0 (0.5) no higher than at 0.5; 2.0: 0.7 kept, 0.4 not; 3.0 (0.7) ties
    # 2.0's 0.7 at a higher KL; 4.0 (0.9) kept.
    assert frontier.upper_envelope(kl, reward).tolist() == [5, 3, 4]
    assert frontier.upper_envelope([1.0, 1.0], [0.3, 0.3]).tolist() == [0]  # a duplicate: one


def test_envelope_matches_its_definition_on_random_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        kl, reward = rng.random(12), rng.random(12)  # distinct values: no ties
        by_definition = [i for i in range(12)
                         if all(reward[j] < reward[i] for j in range(12) if j != i and kl[j] <= kl[i])]
        assert frontier.upper_envelope(kl, reward).tolist() == sorted(by_definition, key=lambda i: kl[i])


def test_read_at_interpolates_from_the_origin_and_says_not_reached_past_the_last_point():
    kl, reward = [3.0, 1.0], [0.8, 0.6]  # unsorted on purpose; the frontier: (0, .5), (1, .6), (3, .8)
    assert frontier.read_at(kl, reward, 0.0, 0.5) == pytest.approx(0.5)  # the origin
    assert frontier.read_at(kl, reward, 0.5, 0.5) == pytest.approx(0.55)  # halfway to (1, .6)
    assert frontier.read_at(kl, reward, 1.0, 0.5) == pytest.approx(0.6)  # an exact hit
    assert frontier.read_at(kl, reward, 2.5, 0.5) == pytest.approx(0.6 + 0.75 * 0.2)
    assert frontier.read_at(kl, reward, 3.0, 0.5) == pytest.approx(0.8)  # the last point: reached
    assert math.isnan(frontier.read_at(kl, reward, 3.001, 0.5))  # beyond it: not reached
    # A mean that rounds to just under the budget still hits it (3 − 4e-16 for 3).
    assert frontier.read_at([np.nextafter(3.0, 0)], [0.8], 3.0, 0.5) == pytest.approx(0.8)
    assert math.isnan(frontier.read_at([], [], 1.0, 0.5))  # only the origin
    for budget in np.linspace(0, 3, 13):  # np.interp on the same frontier, written out
        assert frontier.read_at(kl, reward, budget, 0.5) == pytest.approx(
            np.interp(budget, [0, 1, 3], [0.5, 0.6, 0.8]))
    with pytest.raises(ValueError, match="budget must be finite KL values ≥ 0"):
        frontier.read_at(kl, reward, -1.0, 0.5)
    with pytest.raises(ValueError, match="kl and reward"):
        frontier.read_at([1.0, 2.0], [0.5], 1.0, 0.5)


# --- the bootstrap intervals -----------------------------------------------------------------

def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(300):
        values = rng.normal(0.3, 1.0, size=100)  # the true mean is 0.3
        mean, low, high = frontier.mean_interval(values, n_boot=1000, seed=trial)
        assert mean == pytest.approx(values.mean()) and low < mean < high
        covered += low <= 0.3 <= high
    assert 0.90 <= covered / 300 <= 0.99


def test_frontier_interval_covers_the_true_reading_about_95_percent_of_the_time():
    # One seed, noisy prompts: the point's population reward 0.8 at KL 4, π_ref's 0.4. Read at KL 2:
    # 0.4 + (2 / 4)(0.8 − 0.4) = 0.6, the truth the intervals should cover.
    rng = np.random.default_rng(2)
    covered = 0
    for trial in range(300):
        point = {"select": (0.8, 4.0),
                 "report": (rng.normal(0.8, 0.3, REPORT), rng.normal(4.0, 0.5, REPORT))}
        reference = make_reference(report=rng.normal(0.4, 0.3, REPORT))
        table = frontier.frontier_table([make_run("DPO", "β=0.1", 0, {1: point})], reference,
                                        budgets=[2.0], n_boot=500, seed=trial)
        r = row(table, "DPO", 2.0)
        covered += r["low"] <= 0.6 <= r["high"]
    assert 0.90 <= covered / 300 <= 0.99


def test_identical_methods_are_within_noise_and_a_shifted_method_is_better_or_worse():
    rng = np.random.default_rng(3)
    runs = []
    for seed in range(3):
        noise = {step: rng.normal(0, 0.1, REPORT) for step in (1, 2)}
        for method, shift in (("DPO", 0.0), ("Copy", 0.0), ("Up", 0.5), ("Down", -0.5)):
            points = {step: {"select": (0.6 + 0.1 * step + shift, kl),
                             "report": (0.6 + 0.1 * step + shift + noise[step], kl)}
                      for step, kl in ((1, 1.0), (2, 3.0))}
            runs.append(make_run(method, "β=0.1", seed, points))
    table = frontier.frontier_table(runs, make_reference(), budgets=[2.0, 3.0], n_boot=1000)
    for budget in (2.0, 3.0):
        copy = row(table, "Copy", budget)
        assert copy["difference"] == pytest.approx(0.0, abs=1e-12)
        assert copy["difference_low"] < 0 < copy["difference_high"] and copy["verdict"] == "within noise"
        # Past the first point (KL 1) both frontiers run between shifted points: the gap is the shift.
        up, down = row(table, "Up", budget), row(table, "Down", budget)
        assert up["difference"] == pytest.approx(0.5) and up["verdict"] == "better"
        assert down["difference"] == pytest.approx(-0.5) and down["verdict"] == "worse"
        assert row(table, "DPO", budget)["verdict"] == "baseline"


def test_differences_are_paired_over_prompts():
    # The prompts vary a lot (sd 1), and B is A + 0.05 on every prompt: paired, every replicate's
    # difference is 0.05 (read past the first point), so the interval is a point and excludes 0.
    rng = np.random.default_rng(4)
    base = {step: rng.normal(0.5, 1.0, REPORT) for step in (1, 2)}
    runs = [make_run(method, "x", 0, {step: {"select": (0.5 + step + shift, kl),
                                             "report": (base[step] + step + shift, kl)}
                                      for step, kl in ((1, 1.0), (2, 4.0))})
            for method, shift in (("A", 0.0), ("B", 0.05))]
    table = frontier.frontier_table(runs, make_reference(), budgets=[3.0], baseline="A")
    b = row(table, "B", 3.0)
    assert b["difference_low"] == pytest.approx(0.05) and b["difference_high"] == pytest.approx(0.05)
    assert b["verdict"] == "better"
    assert b["high"] - b["low"] > 0.2  # while each method's own value is as noisy as its prompts


def test_seeds_are_resampled_with_replacement_and_shared_by_a_settings_steps():
    # No prompt noise; seed s shifts both steps of its run by (s − 1) · 0.3. A seed draw with
    # replacement gives a mean offset of −0.3 (all three draws seed 0) with probability 1/27 > 2.5 %,
    # so the 95 % interval is exactly value ± 0.3. Seeds that agree give a point interval.
    runs = []
    for seed in range(3):
        for method, offset in (("Disagree", (seed - 1) * 0.3), ("Agree", 0.0)):
            points = {1: both(0.6 + offset, 1.0), 2: both(0.9 + offset, 6.0)}
            runs.append(make_run(method, "x", seed, points))
    table = frontier.frontier_table(runs, make_reference(), budgets=[3.0], baseline="Agree",
                                    n_boot=4000)
    agree, disagree = row(table, "Agree", 3.0), row(table, "Disagree", 3.0)
    value = 0.6 + (3.0 - 1.0) / (6.0 - 1.0) * (0.9 - 0.6)  # the seed means' frontier at KL 3
    assert agree["value"] == pytest.approx(value) and disagree["value"] == pytest.approx(value)
    assert agree["high"] - agree["low"] == pytest.approx(0.0, abs=1e-12)
    assert disagree["low"] == pytest.approx(value - 0.3) and disagree["high"] == pytest.approx(value + 0.3)


# --- selection, budgets not reached, and the table's shape -------------------------------------

def test_points_are_chosen_on_the_select_split_and_read_on_the_report_split():
    # On the select split A's steps beat B's; on the report split B's beat A's. The frontier must be
    # A's (chosen on select), read with A's report values.
    runs = []
    for seed, jitter in ((0, -0.01), (1, 0.01)):
        a = {1: {"select": (0.7, 1.0), "report": (0.55 + jitter, 1.2)},
             2: {"select": (0.65, 2.0), "report": (0.9, 2.0)},  # below step 1 on select: dropped
             3: {"select": (0.9, 4.0), "report": (0.65 + jitter, 4.4)}}
        b = {1: {"select": (0.6, 1.0), "report": (0.9, 1.0)},
             2: {"select": (0.62, 2.0), "report": (0.95, 2.0)},
             3: {"select": (0.85, 4.0), "report": (0.99, 4.0)}}
        runs += [make_run("DPO", "A", seed, a), make_run("DPO", "B", seed, b)]
    assert frontier.select_points(runs) == {"DPO": [("A", 1), ("A", 3)]}
    table = frontier.frontier_table(runs, make_reference(report=0.5), budgets=[0.6, 2.0, 4.4, 5.0])
    assert [(p["setting"], p["step"]) for p in table["selected"]["DPO"]] == [("A", 1), ("A", 3)]
    assert table["selected"]["DPO"][1]["report_reward"] == pytest.approx(0.65)  # the seeds' mean
    for budget in (0.6, 2.0, 4.4):  # A's report points (seed means) through π_ref's (0, 0.5)
        assert row(table, "DPO", budget)["value"] == pytest.approx(
            np.interp(budget, [0.0, 1.2, 4.4], [0.5, 0.55, 0.65]))
    assert row(table, "DPO", 5.0)["status"] == "not reached"


def test_past_its_last_point_the_frontier_is_flat_up_to_the_farthest_checkpoint():
    # Step 2 went farther (KL 3) but scored lower than step 1: it is off the envelope, yet a policy
    # at KL 3 exists, so the frontier holds step 1's reward up to KL 3 and stops there.
    runs = [make_run("DPO", "A", seed, {1: both(0.6, 1.0), 2: both(0.5, 3.0)}) for seed in range(2)]
    assert frontier.select_points(runs) == {"DPO": [("A", 1)]}
    table = frontier.frontier_table(runs, make_reference(report=0.5), budgets=[0.5, 2.0, 3.0, 4.0])
    assert row(table, "DPO", 0.5)["value"] == pytest.approx(0.55)  # halfway from (0, 0.5)
    assert row(table, "DPO", 2.0)["value"] == pytest.approx(0.6)
    assert row(table, "DPO", 3.0)["value"] == pytest.approx(0.6)
    assert row(table, "DPO", 4.0)["status"] == "not reached"


def test_budgets_not_reached_give_no_number_and_never_a_nan():
    rng = np.random.default_rng(5)
    runs = []
    for seed in range(3):
        runs.append(make_run("DPO", "β=0.1", seed, {1: both(0.7, 3.0)}))
        # IPO's report KL sits just above 5 on average: its estimate reaches 5, about half the
        # replicates' prompt draws do not, so no interval can be given.
        noise = rng.normal(0, 1, REPORT)
        runs.append(make_run("IPO", "β=0.1", seed, {1: {"select": (0.7, 5.0),
                                                         "report": (0.7, 5.002 + noise - noise.mean())}}))
    table = frontier.frontier_table(runs, make_reference(), budgets=[2.0, 5.0, 10.0], n_boot=1000)
    assert not has_nan(table)
    for method in ("DPO", "IPO"):
        far = row(table, method, 10.0)
        assert far["status"] == "not reached" and far["value"] is None and far["low"] is None
    assert row(table, "IPO", 10.0)["verdict"] == "not reached"
    assert row(table, "DPO", 5.0)["status"] == "not reached" and row(table, "DPO", 5.0)["reach_share"] == 0
    edge = row(table, "IPO", 5.0)
    assert edge["value"] is not None and edge["low"] is None and edge["high"] is None
    assert edge["status"] == "interval undetermined" and 0.2 < edge["reach_share"] < 0.95
    assert edge["verdict"] == "not reached"  # DPO does not reach KL 5
    near = row(table, "IPO", 2.0)
    assert near["status"] == "ok" and near["reach_share"] == 1.0 and near["verdict"] in (
        "better", "worse", "within noise")


# --- bad input ----------------------------------------------------------------------------

def simple_runs():
    return [make_run(m, "β=0.1", seed, {100: both(0.7, 3.0), 200: both(0.8, 6.0)})
            for m in ("DPO", "IPO") for seed in range(2)]


def test_a_run_with_the_wrong_number_of_prompts_is_named():
    for split in ("report", "select"):
        runs = simple_runs()
        runs[3]["evals"][0 if split == "select" else 1]["reward"].pop()
        with pytest.raises(ValueError, match=f"run IPO β=0.1 seed 1: step 100 \\({split}\\) has"):
            frontier.frontier_table(runs, make_reference())


def test_a_nan_names_the_run_and_the_step():
    runs = simple_runs()
    runs[2]["evals"][3]["kl"][5] = float("nan")  # IPO seed 0, step 200, report
    with pytest.raises(ValueError, match="run IPO β=0.1 seed 0: step 200 \\(report\\) has a non-finite kl"):
        frontier.frontier_table(runs, make_reference())


def test_unknown_baseline_missing_method_and_bad_arguments_are_clear_errors():
    runs = simple_runs()
    with pytest.raises(ValueError, match="baseline 'PPO' is not among the methods"):
        frontier.frontier_table(runs, make_reference(), baseline="PPO")
    with pytest.raises(ValueError, match="'Unlikelihood' has no runs"):
        frontier.frontier_table(runs, make_reference(), methods=["DPO", "Unlikelihood"])
    with pytest.raises(ValueError, match="budgets must be finite KL values ≥ 0"):
        frontier.frontier_table(runs, make_reference(), budgets=[2.0, -1.0])
    with pytest.raises(ValueError, match="n_boot"):
        frontier.frontier_table(runs, make_reference(), n_boot=0)
    with pytest.raises(ValueError, match="runs is empty"):
        frontier.frontier_table([], make_reference())
    with pytest.raises(ValueError, match="values"):
        frontier.mean_interval([0.1, float("nan")])
