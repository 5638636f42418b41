"""The dpo-edu command line (``run`` itself is exercised by test_notebooks.py)."""

import ast
import json
import re

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


def test_set_parses_dotted_names_literals_and_bare_words():
    assignments = ["ppo.steps=8", "model.random_init=True", "ground_truth.classifier=tfidf",
                   "frontier.dpo_betas=(0.1,)", "dpo.loss_type=ipo", "ppo.target_kl=None", "dpo.beta=0.5"]
    overrides = cli.preset_overrides(assignments)
    assert overrides == {"ppo.steps": 8, "model.random_init": True, "ground_truth.classifier": "tfidf",
                         "frontier.dpo_betas": [0.1], "dpo.loss_type": "ipo", "ppo.target_kl": None,
                         "dpo.beta": 0.5}
    preset = get_preset("ci", overrides, verbose=False)
    assert (preset.ppo.steps, preset.model.random_init, preset.ground_truth.classifier) == (8, True, "tfidf")
    assert (preset.frontier.dpo_betas, preset.dpo.loss_type, preset.ppo.target_kl, preset.dpo.beta) == (
        (0.1,), "ipo", None, 0.5)


def test_a_sweep_survives_papermill_into_the_preset():
    overrides = cli.preset_overrides(["frontier.dpo_betas=(0.1, 0.5)", "frontier.ppo_targets=[6]"])
    cell = PythonTranslator.translate(overrides)  # what papermill writes into the parameters cell
    preset = get_preset("ci", ast.literal_eval(cell), verbose=False)
    assert preset.frontier.dpo_betas == (0.1, 0.5) and preset.frontier.ppo_targets == (6,)


@pytest.mark.parametrize("bad", ["ppo.steps", "dpo.beta 0.5"])
def test_set_names_the_bad_assignment_and_the_form(bad):
    with pytest.raises(SystemExit, match=rf"--set '{bad}': expected SECTION.FIELD=VALUE, such as ppo.steps=8"):
        cli.preset_overrides([bad])


@pytest.fixture
def no_notebook_runs(monkeypatch):
    """papermill fails the test if run_course gets as far as executing a notebook."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was executed although the overrides were bad")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


@pytest.mark.parametrize("overrides, message", [
    ({"ppo_steps": 8}, "preset field 'ppo_steps' cannot be set: it is now 'ppo.steps'"),
    ({"ppo.step": 8}, "preset field 'ppo.step' cannot be set: did you mean ppo.steps"),
    ({"ppo.steps": -3}, "preset field 'ppo.steps': steps must be an int ≥ 1, got -3"),
    ({"ppo.steps": "abc"}, "preset field 'ppo.steps' takes int | None, got 'abc'"),
    ({"toy.steps": 2, "dpo.loss_type": "kto"}, "preset field 'dpo.loss_type': loss_type must be one of"),
    ({"seed": 1}, "preset field 'seed' cannot be set: it is set by the notebook's SEED"),
])
def test_run_course_rejects_a_bad_override_before_any_notebook(tmp_path, no_notebook_runs, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=re.escape(f"--set: {message}")):
        cli.run_course("ci", out, ["02"], overrides=overrides)
    assert not out.exists()  # nothing written either


def test_good_overrides_reach_the_notebook_run(tmp_path, no_notebook_runs):
    """The guard above is live: valid dotted overrides get as far as executing the notebook."""
    with pytest.raises(AssertionError, match="a notebook was executed"):
        cli.run_course("ci", tmp_path / "run", ["02"], overrides={"toy.steps": 2, "dpo.loss_type": "ipo"})


def test_run_command_rejects_an_old_flat_name_before_any_notebook(tmp_path, no_notebook_runs):
    with pytest.raises(SystemExit, match=re.escape("--set: preset field 'dpo_beta_sweep' cannot be set: "
                                                   "it is now 'frontier.dpo_betas'")):
        cli.main(["run", "--preset", "ci", "--out", str(tmp_path / "run"), "--set", "dpo_beta_sweep=(0.1, 0.5)",
                  "02"])
    assert not (tmp_path / "run").exists()


@pytest.mark.notebook
def test_run_passes_overrides_into_the_notebook(tmp_path):
    """Two steps of gradient ascent instead of the preset's hundreds: far from π*, as the notebook records."""
    summary = cli.run_course("ci", tmp_path, ["02"], overrides={"toy.steps": 2})
    assert summary["overrides"] == {"toy.steps": 2}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary and set(saved["about"]) >= {"preset", "notebooks.NAME.records"}  # what each field is
    records = summary["notebooks"]["02_optimal_policy"]["records"]
    assert records["ascent_max_abs_error"] > 1e-2  # the ci preset's own steps reach ~6e-6


def test_an_unknown_notebook_stops_before_the_run_folder_is_made(tmp_path, no_notebook_runs):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="no notebook matches '08'"):
        cli.main(["run", "--preset", "ci", "--out", str(out), "08"])
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "frontier"])
def test_an_out_that_cannot_be_a_folder_is_one_line_naming_it(tmp_path, no_notebook_runs, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(SystemExit, match=re.escape(f"--out {a_file}: this is a file, not a folder")):
        cli.main([command, "--preset", "ci", "--out", str(a_file)])
    with pytest.raises(SystemExit, match=re.escape(f"--out {a_file / 'run'}: cannot create the folder (")):
        cli.main([command, "--preset", "ci", "--out", str(a_file / "run")])
    assert a_file.read_text() == "mine"  # nothing lost


def test_python_dash_m_dpo_edu_is_the_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dpo_edu", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: dpo-edu" in done.stdout and "frontier" in done.stdout


def test_a_failing_notebook_reports_its_cause_first(tmp_path, monkeypatch):
    """The offline `gpt2` message (or any error) is the line the user sees, not the end of a page of frames."""
    import nbformat

    course = tmp_path / "notebooks"
    course.mkdir()
    cells = [nbformat.v4.new_code_cell("PRESET = 'ci'", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("raise OSError(\"cannot load 'gpt2': the Hugging Face Hub is unreachable\")")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                                                  "language": "python",
                                                                                  "display_name": "Python 3"}}),
                   course / "01_fails.ipynb")
    monkeypatch.setattr(cli, "NOTEBOOK_DIR", course)
    with pytest.raises(SystemExit) as stopped:
        cli.run_course("ci", tmp_path / "run", ["01"])
    first, second = str(stopped.value).splitlines()
    # cell [3] of the executed notebook: papermill's injected parameters are cell [2]
    assert first == ("01_fails.ipynb stopped in cell [3]: OSError: cannot load 'gpt2': the Hugging Face Hub is "
                     "unreachable")
    assert second == f"(the whole traceback: {tmp_path / 'run' / '01_fails.ipynb'})"
    assert (tmp_path / "run" / "01_fails.ipynb").is_file()


def test_workspace_copies_the_notebooks_and_keeps_a_students_copy(tmp_path, capsys):
    """Issue 16: running the course inside the clone left it modified; students work in a copy."""
    folder = tmp_path / "course"
    notebooks = cli.make_workspace(folder)
    assert notebooks == folder / "notebooks"
    sources = cli.course_notebooks()
    assert sorted(p.name for p in notebooks.iterdir()) == [p.name for p in sources]  # no .py twins
    assert all((notebooks / p.name).read_bytes() == p.read_bytes() for p in sources)
    mine = notebooks / sources[0].name
    mine.write_text("my answers")
    capsys.readouterr()
    cli.main(["workspace", str(folder)])
    out = capsys.readouterr().out
    assert mine.read_text() == "my answers" and f"kept     {mine}" in out
    assert f"jupyter lab {notebooks}" in out
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file"):
        cli.make_workspace(tmp_path / "file")
