"""The frontier study (study.py, `dpo-edu frontier`): the settings and configs of every method, a whole study on a
tiny run folder, its shipped JSON and table, a resumed study that trains nothing again, and a folder of another
study refused."""

import json
import shutil

import pytest
from conftest import TINY_RUN, load_script

from dpo_edu import cli, frontier, plots, study
from dpo_edu.live import LiveCurves
from dpo_edu.presets import METHODS, PRESETS, get_preset

# a whole study in seconds: π_ref's SFT, pairs, reward model and every run of two steps, 2 seeds
TINY_STUDY = {**TINY_RUN, "sft.steps": 2, "sft.batch_size": 4, "sft.max_length": 32, "reward_model.steps": 2,
              "dpo.steps": 2, "dpo.batch_size": 4, "dpo.max_length": 32, "ppo.steps": 2, "ppo.batch_size": 8,
              "ppo.mini_batch_size": 4, "ppo.ppo_epochs": 1, "preferred_ft.steps": 2, "unlikelihood.steps": 2,
              "preferred_ft.max_length": 32, "unlikelihood.max_length": 32, "ground_truth.reviews": 200,
              "frontier.methods": ["DPO", "PPO-GT", "Best-of-N"], "frontier.dpo_betas": [0.1, 1.0],
              "frontier.ppo_targets": [4.0], "frontier.best_of_n": [1, 2], "frontier.seeds": 2, "frontier.evals": 2,
              "frontier.select_prompts": 2, "frontier.report_prompts": 3, "frontier.samples_per_prompt": 2,
              "frontier.budgets": [0.5, 1.0]}


def test_every_preset_sweeps_every_method_as_configured():
    for name, preset in PRESETS.items():
        settings = study.settings(preset)
        assert {s.method for s in settings} == set(preset.frontier.methods) == set(METHODS), name
        by_method = {m: [s.value for s in settings if s.method == m] for m in METHODS}
        assert by_method["DPO"] == list(preset.frontier.dpo_betas)
        assert by_method["PPO-GT"] == by_method["PPO"] == list(preset.frontier.ppo_targets)
        assert by_method["Unlikelihood"] == list(preset.frontier.unlikelihood_alphas)
        assert by_method["Best-of-N"] == [preset.frontier.best_of_n] and by_method["Preferred-FT"] == [None]
        assert len({s.folder for s in settings}) == len(settings)  # one folder a setting
    cpu = PRESETS["cpu"].frontier  # the shipped study: ≥ 3 seeds, ≥ 7 methods, ≥ 4 settings a swept method
    assert cpu.seeds >= 3 and len(cpu.methods) >= 7
    assert min(map(len, (cpu.dpo_betas, cpu.ipo_betas, cpu.cdpo_betas, cpu.ppo_targets, cpu.unlikelihood_alphas,
                         cpu.best_of_n))) >= 4


def test_each_method_trains_with_its_own_loss_and_the_swept_value():
    preset = PRESETS["cpu"]
    configs = {s.method: study.train_config(preset, s, seed=7, items=1000) for s in study.settings(preset)
               if s.method != "Best-of-N"}
    assert (configs["DPO"].loss_type, configs["DPO"].label_smoothing) == ("sigmoid", 0.0)
    assert (configs["IPO"].loss_type, configs["IPO"].beta) == ("ipo", preset.frontier.ipo_betas[-1])
    assert configs["cDPO"].label_smoothing == preset.frontier.cdpo_epsilon
    assert configs["PPO"].target_kl == configs["PPO-GT"].target_kl == preset.frontier.ppo_targets[-1]
    assert configs["Unlikelihood"].alpha == preset.frontier.unlikelihood_alphas[-1]
    for method, config in configs.items():
        assert config.seed == 7, method
        total = config.total_steps(1000)  # evaluated frontier.evals times, the last at the final step
        assert len({*range(config.eval_every, total + 1, config.eval_every), total}) == preset.frontier.evals, method


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, one_thread_per_module):
    folder = tmp_path_factory.mktemp("study")
    preset = get_preset("ci", TINY_STUDY, verbose=False)
    return preset, folder, study.run_study(preset, folder, progress=False)


def test_a_whole_study_gives_every_run_and_a_table_without_nan(tiny_study):
    preset, folder, result = tiny_study
    assert [(r["method"], r["setting"], r["seed"]) for r in result.runs] == [
        ("DPO", "β=0.1", 0), ("DPO", "β=0.1", 1), ("DPO", "β=1", 0), ("DPO", "β=1", 1),
        ("PPO-GT", "target KL 4", 0), ("PPO-GT", "target KL 4", 1), ("Best-of-N", "N ≤ 2", 0),
        ("Best-of-N", "N ≤ 2", 1)]
    for run in result.runs:
        assert {row["split"] for row in run["evals"]} == {"select", "report"}
        assert all(len(row["reward"]) == (2 if row["split"] == "select" else 3) for row in run["evals"])
    assert (folder / "runs/dpo/beta_0.1/seed_1/settings.json").is_file()
    seeds = [r["metrics"] for r in result.runs if r["setting"] == "β=0.1"]
    assert seeds[0] != seeds[1]  # another seed: another training order and other samples
    rows = result.table["rows"]
    assert {(r["method"], r["budget"]) for r in rows} == {(m, b) for m in ("DPO", "PPO-GT", "Best-of-N")
                                                          for b in (0.5, 1.0)}
    assert "nan" not in json.dumps(result.table).lower()
    # the table is frontier.frontier_table of the runs' evaluations
    again = frontier.frontier_table(result.runs, result.reference, budgets=(0.5, 1.0),
                                    methods=["DPO", "PPO-GT", "Best-of-N"])
    assert again["rows"] == rows


def test_the_shipped_json_holds_every_report_point_with_its_interval(tiny_study):
    preset, _, result = tiny_study
    shipped = study.study_json(result, preset, "dpo-edu frontier --preset ci")
    assert shipped["preset"] == "ci" and shipped["frontier"]["seeds"] == 2
    assert len(shipped["points"]) == sum(sum(row["split"] == "report" for row in r["evals"]) for r in result.runs)
    for point in shipped["points"]:
        assert point["reward_low"] <= point["reward"] <= point["reward_high"]
        assert {"method", "setting", "seed", "step", "kl", "length"} <= set(point)
    reference = result.reference["report"]["reward"]
    assert shipped["reference"]["reward"] == pytest.approx(sum(reference) / len(reference))
    lines = study.table_lines(shipped["table"])
    assert lines[0].startswith("reward at matched KL") and len(lines) == 1 + len(shipped["table"]["rows"])
    for line, row in zip(lines[1:], shipped["table"]["rows"]):
        assert line.startswith(f"  KL {row['budget']:<4g} {study.reading(row)}")
    plots.plot_study(shipped, shipped=shipped, budget=1.0)  # draws, with a shipped study beside it


def test_a_second_study_reuses_every_run_and_another_preset_is_refused(tiny_study, capsys):
    preset, folder, result = tiny_study
    capsys.readouterr()
    again = study.run_study(preset, folder, progress=False)
    out = capsys.readouterr().out
    assert "building" not in out and out.count("reusing") >= len(result.runs)
    assert [r["metrics"] for r in again.runs] == [r["metrics"] for r in result.runs]
    other = get_preset("ci", {**TINY_STUDY, "sft.lr": 5e-4}, verbose=False)
    with pytest.raises(ValueError, match=r"holds another study \(reference.sft.lr differ\)"):
        study.run_study(other, folder, progress=False)


def test_a_live_dashboard_receives_every_evaluation_of_a_dpo_run(tiny_study, tmp_path):
    """Issue 16: DPO called back every 10 steps (its ``log_every``) but evaluated every ⌈steps / evals⌉ steps, so
    notebook 05's dashboard drew only each DPO run's last evaluation. The tiny study's DPO runs, trained again on a
    copy of its folder with a dashboard: every evaluation reaches it, and the runs are the same as without one."""
    preset, folder, result = tiny_study
    copy = tmp_path / "study"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "runs" / "dpo")
    dashboard = LiveCurves([["eval/reward"], ["eval/kl"]])
    again = study.run_study(preset, copy, methods=["DPO"], callback=dashboard.run, progress=False)
    assert [r["metrics"] for r in again.runs] == [r["metrics"] for r in result.runs if r["method"] == "DPO"]
    for setting in ("β=0.1", "β=1"):  # both seeds of a setting are drawn as one run, one after the other
        saved = [row for run in again.runs if run["setting"] == setting for row in run["metrics"]
                 if "eval/reward" in row]
        live = [row for row in dashboard.runs[f"DPO {setting}"] if "eval/reward" in row]
        assert len(saved) == preset.frontier.seeds * preset.frontier.evals
        assert [(row["step"], row["eval/reward"], row["eval/kl"]) for row in live] == [
            (row["step"], row["eval/reward"], row["eval/kl"]) for row in saved]


def test_the_command_writes_the_json_and_figure_and_prints_the_table(tmp_path, capsys, one_thread):
    overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in TINY_STUDY.items()
                 if k != "frontier.methods"]
    cli.main(["frontier", "--preset", "ci", "--out", str(tmp_path), "--methods", "DPO,Best-of-N", "--seeds", "1",
              *sum((["--set", o] for o in overrides), [])])
    out = capsys.readouterr().out
    shipped = json.loads((tmp_path / "frontier.json").read_text())
    assert {p["method"] for p in shipped["points"]} == {"DPO", "Best-of-N"} and shipped["frontier"]["seeds"] == 1
    assert shipped["command"].startswith("dpo-edu") and shipped["seconds"] > 0
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "reward at matched KL" in out and "runs in" in out
    with pytest.raises(SystemExit, match="methods must be some of"):
        cli.main(["frontier", "--preset", "ci", "--out", str(tmp_path), "--methods", "DPO,KTO"])


@pytest.mark.notebook
def test_dpo_edu_frontier_at_ci_runs_every_method_end_to_end(ci_course_run, tmp_path, capsys):
    """The whole ci study, every method with 2 seeds, in two worker processes, on a copy of the course's ci run
    folder (notebook 05 trained some of these runs already; the rest are trained now)."""
    out = tmp_path / "ci"
    shutil.copytree(ci_course_run, out)
    cli.main(["frontier", "--preset", "ci", "--out", str(out), "--workers", "2"])
    shipped = json.loads((out / "frontier.json").read_text())
    ci = PRESETS["ci"].frontier
    runs = {(p["method"], p["setting"], p["seed"]) for p in shipped["points"]}
    assert {method for method, _, _ in runs} == set(METHODS) and {seed for _, _, seed in runs} == {0, 1}
    assert len(runs) == ci.seeds * len(study.settings(PRESETS["ci"]))
    assert {(r["method"], r["budget"]) for r in shipped["table"]["rows"]} == {(m, b) for m in METHODS
                                                                             for b in ci.budgets}
    assert "nan" not in json.dumps(shipped).lower() and shipped["seconds"] < 600
    assert (out / "frontier.png").is_file() and "reward at matched KL" in capsys.readouterr().out


@pytest.mark.notebook
def test_a_study_without_dpo_compares_with_its_first_method(ci_course_run):
    """`dpo-edu frontier --methods PPO` once trained every run and then failed on its table (no DPO to compare
    with); notebook 05's Best-of-N run is read back here, and the table's baseline is Best-of-N itself."""
    preset = get_preset("ci", {"frontier.seeds": 1}, verbose=False)
    result = study.run_study(preset, ci_course_run, methods=["Best-of-N"], progress=False)
    assert result.table["baseline"] == "Best-of-N" and {r["method"] for r in result.table["rows"]} == {"Best-of-N"}
    assert {r["verdict"] for r in result.table["rows"]} <= {"baseline", "not reached"}


def test_the_shipped_cpu_study_is_the_experiment_the_course_promises():
    """data/frontier/cpu.json: every method with ≥ 3 seeds and ≥ 4 settings of each swept method, every report
    evaluation with its interval, a matched-KL table without NaN whose intervals are narrower than 0.06."""
    shipped = study.shipped_study("cpu")
    assert shipped is not None and shipped["preset"] == "cpu" and shipped["command"].startswith("dpo-edu frontier")
    assert shipped["frontier"]["seeds"] >= 3 and set(shipped["frontier"]["methods"]) == set(METHODS)
    seeds, settings = {}, {}
    for point in shipped["points"]:
        seeds.setdefault(point["method"], set()).add(point["seed"])
        settings.setdefault(point["method"], set()).add(point["setting"])
        assert point["reward_low"] <= point["reward"] <= point["reward_high"] and point["kl"] >= 0
    assert set(seeds) == set(METHODS) and all(len(s) >= 3 for s in seeds.values())
    swept = set(METHODS) - {"Preferred-FT", "Best-of-N"}  # Best-of-N's sweep is its N, one run a seed
    assert all(len(settings[m]) >= 4 for m in swept)
    assert len({p["step"] for p in shipped["points"] if p["method"] == "Best-of-N"}) >= 4
    assert "nan" not in json.dumps(shipped).lower()
    assert set(shipped["costs"]) == set(METHODS) and all(c["forward_tokens"] > 0 for c in shipped["costs"].values())
    rows = shipped["table"]["rows"]
    assert {(r["method"], r["budget"]) for r in rows} == {(m, b) for m in METHODS for b in (2.0, 5.0, 10.0)}
    for row in rows:  # issue 12's precision for the paper's methods; online DPO's KL 5 interval measured 0.077
        if row["low"] is not None:
            assert row["high"] - row["low"] < (0.08 if row["method"] == "Online DPO" else 0.06), row


def test_the_readme_table_is_the_shipped_study_s():
    """README.md's frontier table is generated from data/frontier/cpu.json (scripts/frontier_table.py)."""
    script = load_script("scripts/frontier_table.py")
    assert script.main(["--check"]) == 0
    table = study.shipped_study("cpu")["table"]
    assert script.markdown_table(table).count("\n") == 1 + len({row["method"] for row in table["rows"]})



def test_a_notebooks_quick_frontier_keeps_the_middle_of_each_sweep():
    """Notebook 05's SWEEP = False: the middle two settings of every sweep and Best-of-N to N ≤ 16, all of them
    settings of the shipped study, so its runs are the study's seed-0 runs."""
    cpu = PRESETS["cpu"].frontier
    cut = study.middle_settings(cpu, keep=2, largest_n=16)
    assert cut["frontier.dpo_betas"] == [0.1, 0.5] and cut["frontier.ppo_targets"] == [3.0, 6.0]
    assert cut["frontier.best_of_n"] == [1, 2, 4, 8, 16]
    for name in study.SWEEPS:
        values = getattr(cpu, name)
        assert set(cut[f"frontier.{name}"]) <= set(values) and len(cut[f"frontier.{name}"]) == min(2, len(values))
    preset = get_preset("cpu", cut, verbose=False)  # a valid preset: Best-of-N's largest N still a multiple of all
    assert len(study.settings(preset, ["DPO", "PPO", "Best-of-N"])) == 5
    assert study.middle_settings(PRESETS["ci"].frontier)["frontier.dpo_betas"] == [0.1, 1.0]  # ci keeps its two


def test_a_notebook_that_must_build_notebook_04s_stages_says_so_first(tiny_study, tmp_path, capsys):
    """Issue 16: notebook 05 run before 04 trained SFT, the pairs and the reward model without a word."""
    preset, folder, _ = tiny_study
    study.prepare(preset, folder)
    assert "Notebook 04's stages are not in" not in capsys.readouterr().out  # all read back
    copy = tmp_path / "without_sft"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "sft")
    study.prepare(preset, copy)
    out = capsys.readouterr().out
    assert out.index(study.stages_banner(preset, copy)) < out.index("SFT (π_ref): new; building")
    assert preset.stages_time in study.stages_banner(preset, copy)
