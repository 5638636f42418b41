"""benchmarks/dpo_epoch.py: one timed DPO run of whole epochs beside notebook 05's runs, leaving them untouched."""

import re

import pytest
from conftest import load_script

from dpo_edu import data
from dpo_edu.presets import get_preset

dpo_epoch = load_script("benchmarks/dpo_epoch.py")


@pytest.mark.notebook
def test_two_epochs_report_cost_and_rewards_and_keep_notebook_05s_run(ci_course_run, capsys):
    notebook_run = ci_course_run / "runs" / "dpo" / "beta_0.1" / "seed_0"
    before = {name: (notebook_run / name).read_bytes() for name in ("cost.json", "metrics.jsonl", "settings.json")}
    dpo_epoch.main(["--preset", "ci", "--out", str(ci_course_run), "--epochs", "2"])
    out = capsys.readouterr().out

    pairs = int(re.search(r"preset ci: ([\d,]+) pairs", out).group(1).replace(",", ""))
    assert 0 < pairs < len(data.load_jsonl(ci_course_run / "pairs" / "pairs.jsonl"))  # its held-out split is left out
    config = get_preset("ci", {"dpo.epochs": 2.0}, verbose=False).dpo
    assert f"2 epoch(s) = {config.total_steps(pairs)} steps of {config.batch_size}" in out
    assert float(re.search(r"DPO run: ([\d.]+) s", out).group(1)) > 0
    assert int(re.search(r"([\d,]+) forward", out).group(1).replace(",", "")) > 0
    rewards = [float(value) for value in re.findall(r"reward (\d\.\d+), KL", out)]
    assert len(rewards) == 3 and all(0 <= value <= 1 for value in rewards)
    assert re.search(r"π_ref's ground-truth reward 0\.\d{3}", out)
    assert {name: (notebook_run / name).read_bytes() for name in before} == before
    assert not (ci_course_run / "bench_dpo_epoch").exists()
