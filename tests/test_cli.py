"""The dpo-edu command line (``run`` itself is exercised by test_notebooks.py)."""

import ast

import pytest
from papermill.translators import PythonTranslator

from dpo_edu import cli
from dpo_edu.presets import get_preset


def test_course_notebooks_in_order_and_by_prefix():
    names = [nb.stem for nb in cli.course_notebooks()]
    assert names == sorted(names) and names[0] == "01_bradley_terry"
    assert [nb.stem for nb in cli.course_notebooks(["03", "01"])] == ["03_dpo_objective", "01_bradley_terry"]


def test_unknown_notebook_names_the_choices():
    with pytest.raises(SystemExit, match="no notebook matches '09'.*01_bradley_terry"):
        cli.course_notebooks(["09"])


def test_check_reports_the_auto_choice(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cli.main(["check"])
    out = capsys.readouterr().out
    assert "torch" in out and "CPU only" in out
    assert "auto     → cpu: no CUDA GPU is visible" in out


def test_run_rejects_an_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_set_parses_literals_and_bare_words():
    assignments = ["ppo_steps=8", "random_init=True", "reward_classifier=tfidf", "dpo_beta_sweep=(0.1,)"]
    overrides = cli.preset_overrides(assignments)
    assert overrides == {"ppo_steps": 8, "random_init": True, "reward_classifier": "tfidf", "dpo_beta_sweep": [0.1]}


def test_a_sweep_survives_papermill_into_the_preset():
    overrides = cli.preset_overrides(["dpo_beta_sweep=(0.1, 0.5)", "ppo_target_sweep=[6]"])
    cell = PythonTranslator.translate(overrides)  # what papermill writes into the parameters cell
    preset = get_preset("ci", verbose=False, **ast.literal_eval(cell))
    assert preset.dpo_beta_sweep == (0.1, 0.5) and preset.ppo_target_sweep == (6,)


@pytest.mark.parametrize("bad", ["ppo_step=8", "ppo_steps"])
def test_set_names_the_bad_assignment_and_the_fields(bad):
    with pytest.raises(SystemExit, match=rf"--set '{bad}': expected FIELD=VALUE.*ppo_steps"):
        cli.preset_overrides([bad])


@pytest.mark.notebook
def test_run_passes_overrides_into_the_notebook(tmp_path):
    """Two steps of gradient ascent instead of the preset's hundreds: far from π*, as the notebook records."""
    summary = cli.run_course("ci", tmp_path, ["02"], overrides={"toy_steps": 2})
    assert summary["overrides"] == {"toy_steps": 2}
    records = summary["notebooks"]["02_optimal_policy"]["records"]
    assert records["ascent_max_abs_error"] > 1e-2  # the ci preset's own steps reach ~5e-6
