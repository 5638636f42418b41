"""requirements.txt, environment.yml and pyproject.toml tell one story."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name → PyPI name
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")


def parse(lines) -> dict[str, str]:
    """{normalised name: version specifier} from requirement lines."""
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, spec = REQUIREMENT.match(line).groups()
        name = CONDA_NAMES.get(name, name).lower().replace("_", "-")
        found[name] = spec.replace(" ", "")
    return found


def conda_requirements() -> dict[str, str]:
    text = (ROOT / "environment.yml").read_text()
    lines = [raw.strip()[2:] for raw in text.split("dependencies:", 1)[1].splitlines() if raw.strip().startswith("- ")]
    lines = [line for line in lines if line != "pip:"]
    return {k: v for k, v in parse(lines).items() if k not in {"python", "pip"}}


def test_environment_yml_matches_requirements_txt():
    pip = parse((ROOT / "requirements.txt").read_text().splitlines())
    assert conda_requirements() == pip


def test_requirements_do_not_pin_torch():
    """A pinned or capped torch would make Colab reinstall its own CUDA build."""
    spec = parse((ROOT / "requirements.txt").read_text().splitlines())["torch"]
    assert spec.startswith(">=") and "," not in spec


def test_pyproject_reads_the_requirement_files_a_student_an_instructor_and_a_developer_install():
    """Issue 16: otter-grader (with sphinx, playwright, python-on-whales) is not in a student's runtime."""
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    extras = {name: entry["file"] for name, entry in dynamic["optional-dependencies"].items()}
    assert extras == {"assignments": ["requirements-assignments.txt"],
                      "test": ["requirements-assignments.txt", "requirements-test.txt"]}
    assert "otter-grader" not in parse((ROOT / "requirements.txt").read_text().splitlines())
    assert "otter-grader" in parse((ROOT / "requirements-assignments.txt").read_text().splitlines())


def test_the_conda_environment_installs_what_the_readme_test_command_needs():
    assert "- -e .[test]" in (ROOT / "environment.yml").read_text()


def test_ci_runs_the_readme_commands():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    for command in ['pip install -e ".[test]"', "pytest"]:
        assert command in readme and command in ci
    assert "pip install torch==2.13.0" in ci
    chromium = re.compile(r"apt-get install (-\S+ )*chromium\b")  # the browser tests' Debian chromium
    assert chromium.search(readme) and chromium.search(ci)
