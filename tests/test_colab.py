"""Colab: every notebook carries a badge and an install cell built from the configured address."""

import subprocess
import sys
import types

import jupytext
import pytest
from conftest import ROOT, load_script

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
colab_badges = load_script("scripts/colab_badges.py")


def install_cell(path):
    notebook = jupytext.read(path)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return code[0], code[1]


def run_cell(source, monkeypatch, in_colab: bool) -> list[list[str]]:
    """Execute ``source`` with pip replaced by a recorder; returns the commands it would have run."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "<colab-install>", "exec"), {})  # noqa: S102 -- the cell is our own code
    return calls


def test_notebooks_readme_and_twins_are_up_to_date(capsys):
    assert colab_badges.main(["--check"]) == 0, capsys.readouterr().out


def test_another_address_makes_every_file_stale_and_check_writes_nothing(capsys):
    before = {path: path.read_bytes() for path in [*NOTEBOOKS, ROOT / "README.md"]}
    assert colab_badges.main(["--repository", "someone/fork", "--branch", "dev", "--check"]) == 1
    stale = capsys.readouterr().out
    assert all(path.name in stale for path in before)
    assert all(path.read_bytes() == content for path, content in before.items())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_opens_this_notebook_from_the_configured_repository(path):
    repository, branch = colab_badges.configured_address()
    title = jupytext.read(path).cells[0].source
    url = f"https://colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{path.name}"
    assert title.splitlines()[2] == f"[![Open In Colab]({colab_badges.BADGE_IMAGE})]({url})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_comes_first_and_pip_runs_only_in_colab(path, monkeypatch):
    install, parameters = install_cell(path)
    assert install.metadata["tags"] == [colab_badges.INSTALL_TAG] and "parameters" in parameters.metadata["tags"]
    assert run_cell(install.source, monkeypatch, in_colab=False) == []
    package, extras = run_cell(install.source, monkeypatch, in_colab=True)
    repository, branch = colab_badges.configured_address()
    assert package[-2:] == ["--no-deps", f"git+https://github.com/{repository}@{branch}"]
    assert package[:4] == [sys.executable, "-m", "pip", "install"]
    # Colab's preinstalled torch and ipywidgets (7.7) must not be replaced
    assert not any(spec.startswith(("torch", "ipywidgets", "matplotlib")) for spec in extras)


def test_colab_extras_carry_the_floors_of_requirements_txt():
    floors = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, spec = line.split(">=")
            floors[name] = spec
    for extra in colab_badges.COLAB_EXTRAS:
        name, spec = extra.split(">=")
        assert floors[name] == spec, f"{extra} in scripts/colab_badges.py, {name}>={floors[name]} in requirements.txt"


def test_badge_goes_under_the_title_and_replaces_an_old_one():
    old = colab_badges.badge("old/repo", "main", "notebooks/x.ipynb")
    text = f"# Title\n\n{old}\n\nBody line.\nMore."
    new = colab_badges.badge("new/repo", "dev", "notebooks/x.ipynb")
    assert colab_badges.with_badge(text, new) == f"# Title\n\n{new}\n\nBody line.\nMore.\n"
    assert "https://colab.research.google.com/github/new/repo/blob/dev/notebooks/x.ipynb" in new


def test_a_malformed_repository_is_refused(capsys):
    with pytest.raises(SystemExit):
        colab_badges.main(["--repository", "https://github.com/x", "--check"])
    assert "OWNER/NAME" in capsys.readouterr().err
