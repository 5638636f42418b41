"""The autograded assignments, built by ``dpo-edu student`` and graded by otter (their twins: test_notebook_files).

The solved notebooks score full marks and the untouched student notebooks exactly zero; hidden tests ship in
the autograder only; a partly solved notebook gets the points of what it solved and hears what failed.
"""

import ast
import contextlib
import io
import json
import multiprocessing
import re
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

import jupytext
import pytest

from dpo_edu import assignments, cli

MASTERS = sorted(assignments.ASSIGNMENT_DIR.glob("*.ipynb"))
NAMES = [master.stem for master in MASTERS]


def zip_tests(autograder_zip) -> dict[str, dict]:
    """The OK-format test files inside an autograder zip: {question: test dict}."""
    tests = {}
    with zipfile.ZipFile(autograder_zip) as archive:
        for name in archive.namelist():
            if re.fullmatch(r"tests/q\w+\.py", name):  # `OK_FORMAT = True` then `test = {...}`, a literal
                assignment = ast.parse(archive.read(name).decode()).body[-1]
                test = ast.literal_eval(assignment.value)
                tests[test["name"]] = test
    return tests


def cases(test: dict) -> list[dict]:
    return [case for suite in test["suites"] for case in suite["cases"]]


def announced_points(name: str) -> int:
    """The total the master's introduction promises students ("Points: 8 (Q1: 2, ...)")."""
    return int(re.search(r"Points: (\d+) \(", (assignments.ASSIGNMENT_DIR / f"{name}.py").read_text()).group(1))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every assignment built once through ``dpo-edu student``: ({name: folder}, what it printed)."""
    out = tmp_path_factory.mktemp("assignments")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(["student", "--out", str(out), "--no-run-tests"])  # the solutions are graded below instead
    return {name: out / name for name in NAMES}, printed.getvalue()


@pytest.fixture(scope="module")
def zips(built):
    paths, _ = built
    return {name: next((folder / "autograder").glob(f"{name}-autograder_*.zip")) for name, folder in paths.items()}


def partly_solved_ppo_pieces(folder, out):
    """The student's ppo_pieces with Q2 solved, Q3 clipped on one side only (its public tests pass), Q1 untouched."""
    solved = jupytext.read(folder / "autograder" / "ppo_pieces.ipynb")
    solution = {name: next(cell.source for cell in solved.cells if f"def {name}(" in cell.source)
                for name in ("ppo_clip_loss", "updated_kl_coef")}
    one_sided = solution["updated_kl_coef"].replace("max(current_kl / target - 1.0, -0.2)", "current_kl / target - 1.0")
    assert one_sided != solution["updated_kl_coef"]
    submission = jupytext.read(folder / "student" / "ppo_pieces.ipynb")
    for cell in submission.cells:
        if "def ppo_clip_loss(" in cell.source:
            cell.source = solution["ppo_clip_loss"]
        elif "def updated_kl_coef(" in cell.source:
            cell.source = one_sided
    jupytext.write(submission, out / "ppo_pieces.ipynb")
    return out / "ppo_pieces.ipynb"


def partly_solved_group_advantages(folder, out):
    """The student's group_advantages with Q1–Q3 solved, Q4 solved but for its "loo" branch, which takes GRPO's
    mean (the sample included) instead of the leave-one-out baseline, Q5 untouched."""
    solved = jupytext.read(folder / "autograder" / "group_advantages.ipynb")
    names = ("leave_one_out_baseline", "rloo_advantages_with_kl", "grpo_advantages", "reinforce_gradient")
    solution = {name: next(cell.source for cell in solved.cells if f"def {name}(" in cell.source) for name in names}
    loo = "advantages = sampled - leave_one_out_baseline(sampled, k)"
    included = "advantages = (sampled.reshape(-1, k) - sampled.reshape(-1, k).mean(1, keepdim=True)).reshape(-1)"
    assert loo in solution["reinforce_gradient"]
    solution["reinforce_gradient"] = solution["reinforce_gradient"].replace(loo, included)
    submission = jupytext.read(folder / "student" / "group_advantages.ipynb")
    for cell in submission.cells:
        for name in names:
            if f"def {name}(" in cell.source:
                cell.source = solution[name]
    jupytext.write(submission, out / "group_advantages.ipynb")
    return out / "group_advantages.ipynb"


@pytest.fixture(scope="module")
def graded(built, zips, tmp_path_factory):
    """Each solved notebook, each untouched student notebook and two partly solved ones, graded as ``otter run``
    does (a kernel each, in two worker processes): {(name, "solved" | "student" | "partial"): GradingResults}."""
    from otter.api import grade_submission

    paths, _ = built
    submissions = {}
    for name, folder in paths.items():
        submissions[name, "solved"] = folder / "autograder" / f"{name}.ipynb"
        submissions[name, "student"] = folder / "student" / f"{name}.ipynb"
    partial = tmp_path_factory.mktemp("partial")
    submissions["ppo_pieces", "partial"] = partly_solved_ppo_pieces(paths["ppo_pieces"], partial)
    submissions["group_advantages", "partial"] = partly_solved_group_advantages(paths["group_advantages"], partial)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # inherited by the workers and their kernels
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {key: pool.submit(grade_submission, str(notebook), str(zips[key[0]]), quiet=True)
                       for key, notebook in submissions.items()}
            return {key: future.result() for key, future in futures.items()}


def test_six_assignments():
    assert NAMES == ["bradley_terry", "dpo_loss", "group_advantages", "kl_estimators", "masking_padding", "ppo_pieces"]


def test_student_prints_what_it_wrote(built, zips):
    paths, printed = built
    for name, folder in paths.items():
        student = folder / "student" / f"{name}.ipynb"
        assert student.is_file() and zips[name].is_file()
        assert f"for students:  {student}" in printed and f"autograder:    {zips[name]}" in printed


@pytest.mark.parametrize("name", NAMES)
def test_hidden_tests_ship_in_the_autograder_only(built, zips, name):
    paths, _ = built
    tests = zip_tests(zips[name])
    for question, test in tests.items():
        assert any(case["hidden"] for case in cases(test)), f"{name} {question} has no hidden test"
        assert any(not case["hidden"] for case in cases(test)), f"{name} {question} has no public test"
    student = json.loads((paths[name] / "student" / f"{name}.ipynb").read_text())
    shipped = student["metadata"]["otter"]["tests"]
    assert set(shipped) == set(tests)
    for question, test in shipped.items():
        public = [case["code"] for case in cases(tests[question]) if not case["hidden"]]
        assert [case["code"] for case in cases(test)] == public, f"{name} {question}: only public tests ship"
    sources = "\n".join("".join(cell["source"]) for cell in student["cells"])
    assert "SOLUTION" not in sources and "TEST CONFIG" not in sources


@pytest.mark.parametrize("name", NAMES)
def test_solutions_score_full_marks(graded, name):
    results = graded[name, "solved"]
    assert results.total == results.possible == announced_points(name), results.summary()


@pytest.mark.parametrize("name", NAMES)
def test_untouched_student_notebook_scores_zero(graded, name):
    results = graded[name, "student"]
    assert not results.has_catastrophic_failure(), results.summary()
    assert results.total == 0 and results.possible == announced_points(name)


def test_points_follow_what_is_solved(graded):
    results = graded["ppo_pieces", "partial"]
    assert [results.get_score(q) for q in ("q1", "q2", "q3")] == [0, 3, 1]
    assert (results.total, results.possible) == (4, 8)
    q3 = results.to_dict()["q3"]["test_case_results"]
    failed = [result["test_case"] for result in q3 if not result["passed"]]
    assert [case["name"] for case in failed] == ["q3 - 3", "q3 - 4"] and all(case["hidden"] for case in failed)
    assert "q3 - 3 result:" in results.summary()


def test_a_biased_baseline_fails_the_unbiasedness_check(graded):
    """group_advantages Q4: the leave-one-out branch written with the group's mean (sample included) shrinks the
    gradient by (k − 1)/k; the public check against the exact gradient and the hidden Monte-Carlo test catch it."""
    results = graded["group_advantages", "partial"]
    assert [results.get_score(q) for q in ("q1", "q2", "q3", "q4", "q5")] == [2, 1, 2, 1.5, 0]
    assert (results.total, results.possible) == (6.5, 9)
    q4 = results.to_dict()["q4"]["test_case_results"]
    failed = [result["test_case"] for result in q4 if not result["passed"]]
    assert [case["name"] for case in failed] == ["q4 - 2", "q4 - 3"]
    assert [case["hidden"] for case in failed] == [False, True]


def test_gradescope_installs_the_course_from_its_repository():
    """The grading image installs dpo_edu from where the Colab cells do (pyproject's [tool.dpo_edu.colab])."""
    pyproject = tomllib.loads((assignments.ASSIGNMENT_DIR.parent / "pyproject.toml").read_text())
    colab = pyproject["tool"]["dpo_edu"]["colab"]
    requirements = (assignments.ASSIGNMENT_DIR / "gradescope-requirements.txt").read_text()
    assert f"dpo_edu @ git+https://github.com/{colab['repository']}@{colab['branch']}" in requirements
    for master in MASTERS:
        assert "# requirements: gradescope-requirements.txt" in master.with_suffix(".py").read_text()


def test_a_broken_master_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken.ipynb").write_text(jupytext.writes(jupytext.reads(
        "# %% [raw]\n# # BEGIN QUESTION\n# name: q1\n\n# %%\nx = 1\n", "py:percent"), "ipynb"))
    monkeypatch.setattr(assignments, "ASSIGNMENT_DIR", tmp_path)
    with pytest.raises(SystemExit, match=r"otter assign failed on .*broken\.ipynb"):
        cli.main(["student", "--out", str(tmp_path / "out"), "--no-run-tests"])


def test_missing_otter_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "otter.assign", None)  # what an environment without otter-grader gives
    with pytest.raises(SystemExit, match=r"otter-grader is not installed: pip install"):
        assignments.build_assignment(MASTERS[0], tmp_path)
