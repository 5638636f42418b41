"""The dpo-edu command line (``run`` itself is exercised by test_notebooks.py)."""

import pytest

from dpo_edu import cli


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
