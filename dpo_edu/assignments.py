"""Autograded assignments: otter-grader masters in ``assignments/`` → student notebooks, graders.

``otter assign`` (otter-grader 7) turns each master ``assignments/NAME.ipynb`` into

    OUT/NAME/student/NAME.ipynb                the student notebook: solutions, hidden tests removed
    OUT/NAME/autograder/NAME.ipynb             the solved notebook, for the instructor
    OUT/NAME/autograder/NAME-autograder_*.zip  every test, hidden ones included, for ``otter run``
                                               (offline) or Gradescope

and, unless told not to, fails unless the solved notebook scores full marks with that autograder:
a master whose solutions do not pass its own tests never reaches students.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSIGNMENT_DIR = Path(__file__).resolve().parents[1] / "assignments"


@dataclass(frozen=True)
class BuiltAssignment:
    """The two files that leave the build: one for the students, one for grading."""

    name: str
    student_notebook: Path
    autograder_zip: Path


def master_notebooks() -> list[Path]:
    """The master notebooks in ``assignments/``, by name."""
    masters = sorted(ASSIGNMENT_DIR.glob("*.ipynb"))
    if not masters:
        raise SystemExit(f"no master notebooks in {ASSIGNMENT_DIR}: run dpo-edu from a checkout "
                         "installed with `pip install -e .`")
    return masters


def build_assignment(master: Path, out: Path, run_tests: bool = True) -> BuiltAssignment:
    """``otter assign master out/NAME``, replacing what an earlier build left there."""
    try:
        from otter.assign import main as otter_assign
    except ImportError:
        raise SystemExit("otter-grader is not installed: pip install 'otter-grader>=7.0'") from None
    name = master.stem
    try:
        otter_assign(str(master), str(out / name), no_pdfs=True, no_run_tests=not run_tests)
    except Exception as error:  # a malformed master, or solutions that fail their own tests
        raise SystemExit(f"otter assign failed on {master}:\n"
                         f"{type(error).__name__}: {error}") from error
    zips = sorted((out / name / "autograder").glob(f"{name}-autograder_*.zip"))
    if len(zips) != 1:
        raise SystemExit(f"expected one autograder zip in {out / name / 'autograder'}, "
                         f"found {len(zips)}")
    return BuiltAssignment(name, out / name / "student" / f"{name}.ipynb", zips[0])


def build_assignments(out: Path, run_tests: bool = True) -> list[BuiltAssignment]:
    """Every master in ``assignments/`` built into ``out/NAME/``; prints what it wrote."""
    masters = master_notebooks()
    built = []
    for index, master in enumerate(masters, 1):
        check = " and grading its solutions" if run_tests else ""
        print(f"[{index}/{len(masters)}] otter assign {master.name}{check}", flush=True)
        built.append(build_assignment(master, out, run_tests))
    print(f"\nwrote {out}:")
    for assignment in built:
        print(f"  {assignment.name}")
        print(f"    for students:  {assignment.student_notebook}")
        print(f"    autograder:    {assignment.autograder_zip}")
    return built
