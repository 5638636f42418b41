"""The README's frontier table, generated from the shipped study (data/frontier/cpu.json).

    python scripts/frontier_table.py           # rewrite the table between the frontier-table markers of README.md
    python scripts/frontier_table.py --check   # exit 1 when README.md's table is not the shipped study's
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's dpo_edu, installed or not

from dpo_edu.study import markdown_table  # noqa: E402

START, END = "<!-- frontier-table:start -->", "<!-- frontier-table:end -->"


def rendered(readme: str, study: dict) -> str:
    """``readme`` with the text between the markers replaced by ``study``'s table."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"README.md lacks the markers {START} … {END}")
    return f"{head}{START}\n{markdown_table(study['table'])}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    args = parser.parse_args(argv)
    readme_path, study_path = ROOT / "README.md", ROOT / "data" / "frontier" / "cpu.json"
    readme = readme_path.read_text(encoding="utf-8")
    new = rendered(readme, json.loads(study_path.read_text(encoding="utf-8")))
    if new == readme:
        return 0
    if args.check:
        print(f"stale (run python scripts/frontier_table.py): {readme_path.name}")
        return 1
    readme_path.write_text(new, encoding="utf-8")
    print(f"updated: {readme_path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
