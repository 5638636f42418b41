"""benchmarks/gpu_course.py: its timing table, read from a run folder that notebooks 04–07 filled at ``ci``."""

import json

import pytest
from conftest import load_script

from dpo_edu.presets import get_preset

gpu_course = load_script("benchmarks/gpu_course.py")


@pytest.mark.notebook
def test_table_has_both_notebooks_and_every_metered_stage(ci_course_run):
    ci = get_preset("ci", verbose=False)
    rows = gpu_course.stage_rows(ci_course_run)
    (precompute,) = [row["stage"] for row in rows if row["stage"].startswith("reference_logps/")]
    notebooks = [f"notebook {n} (all of it)" for n in ("04", "05", "06", "07")]
    expected = [*notebooks, "reference", "reward_model", precompute, "pitfalls/ppo_no_kl/seed_0",
                f"runs/best_of_n/n_{max(ci.frontier.best_of_n)}/seed_0",
                *(f"runs/dpo/beta_{beta:g}/seed_0" for beta in ci.frontier.dpo_betas),
                f"runs/grpo/beta_{ci.grpo.beta:g}/seed_0", f"runs/online_dpo/beta_{ci.online_dpo.beta:g}/seed_0",
                *(f"runs/ppo/target_{target:g}/seed_0" for target in ci.frontier.ppo_targets),
                f"runs/rloo/beta_{ci.rloo.beta:g}/seed_0"]
    assert [row["stage"] for row in rows] == expected
    for row in rows[4:]:
        assert row == {"stage": row["stage"], **json.loads((ci_course_run / row["stage"] / "cost.json").read_text())}
    lines = gpu_course.timing_table(rows).splitlines()
    assert len(lines) == len(rows) + 1 and lines[0].split()[:2] == ["stage", "seconds"]
    reward_model_line = lines[6].split()
    assert reward_model_line[0] == "reward_model"
    assert float(reward_model_line[1].replace(",", "")) == pytest.approx(rows[5]["seconds"], abs=0.05)  # 1 decimal


def test_stages_follow_the_running_order_with_sweeps_in_numeric_order(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"notebooks": {"04_gpt2_preferences": {"seconds": 1.0}}}))
    for stage in ("runs/ppo/target_16/seed_0", "runs/ppo/target_2/seed_1", "runs/ppo/target_2/seed_0",
                  "runs/dpo/beta_0.5/seed_0", "runs/dpo/beta_0.05/seed_0", "reward_model"):
        (tmp_path / stage).mkdir(parents=True)
        (tmp_path / stage / "cost.json").write_text(json.dumps({"seconds": 1.0}))
    stages = [row["stage"] for row in gpu_course.stage_rows(tmp_path)]
    assert stages == ["notebook 04 (all of it)", "reward_model", "runs/dpo/beta_0.05/seed_0",
                      "runs/dpo/beta_0.5/seed_0", "runs/ppo/target_2/seed_0", "runs/ppo/target_2/seed_1",
                      "runs/ppo/target_16/seed_0"]


def test_gpt2_without_a_gpu_says_how_to_dry_run(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="--preset ci --offline"):
        gpu_course.main(["--out", "unused"])


def test_the_gpu_course_times_the_whole_sweeps_not_notebook_05s_middle_two():
    overrides = gpu_course.whole_sweeps("gpt2")
    frontier = get_preset("gpt2", verbose=False).frontier
    assert overrides["frontier.dpo_betas"] == list(frontier.dpo_betas) and len(frontier.dpo_betas) == 4
    assert overrides["frontier.ppo_targets"] == list(frontier.ppo_targets) and len(frontier.ppo_targets) == 4
    get_preset("gpt2", overrides, verbose=False)  # valid overrides for every notebook
