"""The committed notebooks (course and assignment masters): no outputs, a py:percent twin in sync; the
course's also a papermill parameters cell."""

import ast
import json
import shutil
import subprocess
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ASSIGNMENTS = sorted((ROOT / "assignments").glob("*.ipynb"))  # otter-grader masters (dpo-edu student)


def committed_text(path: Path) -> str:
    """The notebook as it is staged for commit (git's index) in a clone, else as on disk: a notebook run and
    saved in the clone (its outputs on disk) does not fail the check, and a notebook staged with outputs does."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return path.read_text()
    relative = path.relative_to(ROOT).as_posix()
    staged = subprocess.run(["git", "show", f":{relative}"], cwd=ROOT, capture_output=True, text=True)
    return staged.stdout if staged.returncode == 0 else path.read_text()  # not yet added: the file


def cells(notebook) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in notebook.cells]


def test_course_notebooks_exist():
    names = [nb.stem for nb in NOTEBOOKS]
    assert names[:3] == ["01_bradley_terry", "02_optimal_policy", "03_dpo_objective"]


@pytest.mark.parametrize("path", NOTEBOOKS + ASSIGNMENTS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for index, cell in enumerate(json.loads(committed_text(path))["cells"]):
        if cell["cell_type"] == "code":
            assert not cell["outputs"], f"{path.name} cell {index} has outputs"
            assert cell["execution_count"] is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS + ASSIGNMENTS, ids=lambda p: p.stem)
def test_twin_in_sync(path):
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{path.name} has no py:percent twin; run: jupytext --sync {path}"
    assert cells(jupytext.read(twin)) == cells(jupytext.read(path)), (
        f"{path.name} and {twin.name} differ; run: jupytext --sync {path}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_flat_literals(path):
    notebook = jupytext.read(path)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assigned = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: the parameters cell holds assignments only"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)  # raises on anything but a literal
    assert {"PRESET", "SEED", "INTERACTIVE"} <= set(assigned)
    assert assigned["PRESET"] == "cpu" and assigned["INTERACTIVE"] is True
