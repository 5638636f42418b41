"""The ``dpo-edu`` command line.

    dpo-edu run [--preset ci|cpu|gpt2|auto] [--out FOLDER] [--set SECTION.FIELD=VALUE ...]
                [NOTEBOOK ...]
        execute the notebooks (all, or those named) headless with papermill into a run folder and
        write summary.json of every recorded value; --set replaces a preset field (dotted name);
    dpo-edu frontier [--preset ci|cpu|gpt2] [--out FOLDER] [--methods A,B] [--seeds N] [--workers N]
                     [--json FILE] [--set SECTION.FIELD=VALUE ...]
        the reward–KL frontier study: every method × setting × seed, resumable, and its matched-KL
        table with 95 % intervals (frontier.json, frontier.png);
    dpo-edu workspace [FOLDER]
        copy the course notebooks into FOLDER/notebooks (default dpo-edu-course) to open and run
        there, so the clone stays as committed; a notebook already there is kept, never replaced;
    dpo-edu check
        report the environment: torch, device, Hub reachability, the preset ``auto`` would pick;
    dpo-edu student [--out FOLDER] [--no-run-tests]
        build the assignments into FOLDER/NAME/ (default dist/assignments): student notebook and
        autograder zip, once the solutions score full marks (unchecked with --no-run-tests).
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
import time
from pathlib import Path

from .assignments import build_assignments
from .data import save_json
from .presets import METHODS
from .record import read_records
from .stages import events_since

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def course_notebooks(names: list[str] | None = None) -> list[Path]:
    """The course notebooks in order, or those whose file name starts with one of ``names``."""
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(
            f"no notebooks in {NOTEBOOK_DIR}: run dpo-edu from a checkout installed with "
            "`pip install -e .`"
        )
    if not names:
        return notebooks
    chosen = []
    for name in names:
        matches = [nb for nb in notebooks if nb.stem.startswith(Path(name).stem)]
        if not matches:
            raise SystemExit(f"no notebook matches {name!r}; "
                             f"the course has {[nb.stem for nb in notebooks]}")
        chosen.extend(matches)
    return chosen


def make_folder(out: Path, flag: str = "--out") -> Path:
    """``out`` created (parents too), or a one-line error saying why it cannot be."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"{flag} {out}: this is a file, not a folder; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        why = error.strerror or error
        raise SystemExit(f"{flag} {out}: cannot create the folder ({why})") from None
    return out


def preset_overrides(assignments: list[str]) -> dict:
    """``["ppo.steps=8", "model.name='gpt2'"]`` → ``{"ppo.steps": 8, "model.name": "gpt2"}``."""
    overrides = {}
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set {assignment!r}: expected SECTION.FIELD=VALUE, "
                             "such as ppo.steps=8")
        try:
            value = ast.literal_eval(text)  # numbers, booleans, None, tuples, lists, quoted strings
        except (ValueError, SyntaxError):
            value = text  # a bare word: a string such as tfidf
        # papermill writes a tuple into the parameters cell as its string, a list as a list
        overrides[field] = list(value) if isinstance(value, tuple) else value
    return overrides


SUMMARY_FIELDS = {
    "preset": "the preset every notebook ran with (dpo_edu/presets.py)",
    "overrides": "preset fields replaced with --set, by dotted name",
    "notebooks.NAME.seconds": "wall-clock seconds of the notebook, its kernel's start included",
    "notebooks.NAME.stages": "each stage of the run folder the notebook asked for, in order: "
                             "reused, resumed or built, and why",
    "notebooks.NAME.records": "every value the notebook recorded with record(name, value), by "
                              "name; the cell that records it says what it is. Units: KL in "
                              "nats, ground-truth rewards p(positive) in [0, 1], seconds, token "
                              "counts, memory in MB",
}


def run_course(preset: str, out: Path, names: list[str] | None = None, seed: int = 0,
               overrides: dict | None = None, cell_timeout: int | None = None) -> dict:
    """Execute notebooks into ``out``; returns (and writes to out/summary.json) records and timings.

    ``overrides`` replace preset fields in every notebook (its ``PRESET_OVERRIDES`` parameter);
    ``cell_timeout`` (seconds) stops a cell that runs longer, as a hang.
    """
    import papermill

    from .presets import get_preset

    try:  # every override checked before any notebook runs
        get_preset(preset, overrides, verbose=False)
    except ValueError as error:
        raise SystemExit(f"--set: {error}") from None
    notebooks = course_notebooks(names)  # an unknown name stops before anything is written
    make_folder(out)
    summary = {"about": SUMMARY_FIELDS, "preset": preset, "overrides": overrides or {},
               "notebooks": {}}
    for index, notebook in enumerate(notebooks, 1):
        print(f"[{index}/{len(notebooks)}] {notebook.name} (preset {preset})", flush=True)
        declared = papermill.inspect_notebook(str(notebook))
        parameters = {"PRESET": preset, "SEED": seed, "INTERACTIVE": False}
        if "RUN_DIR" in declared:
            parameters["RUN_DIR"] = str(out.resolve())
        if overrides:
            if "PRESET_OVERRIDES" not in declared:
                raise SystemExit(f"{notebook.name} declares no PRESET_OVERRIDES parameter: "
                                 "--set cannot reach it")
            parameters["PRESET_OVERRIDES"] = overrides
        executed = out / notebook.name
        start, started_at = time.perf_counter(), time.time()
        try:
            papermill.execute_notebook(
                str(notebook), str(executed), parameters=parameters, cwd=str(NOTEBOOK_DIR),
                progress_bar=True, execution_timeout=cell_timeout, config=kernel_config()
            )
        except papermill.PapermillExecutionError as error:  # the cause first, not a page of frames
            raise SystemExit(f"{notebook.name} stopped in cell [{error.exec_count}]: "
                             f"{error.ename}: {error.evalue}\n(the whole traceback: {executed})"
                             ) from None
        seconds = time.perf_counter() - start
        # which stages it built, resumed or reused: a resumed stage's cost counts the rest only
        summary["notebooks"][notebook.stem] = {"seconds": round(seconds, 1),
                                               "stages": events_since(out, started_at),
                                               "records": read_records(executed)}
        print(f"    done in {seconds:.1f} s → {executed}", flush=True)
    save_json(summary, out / "summary.json", indent=2)
    print(f"\nwrote {out / 'summary.json'}, every recorded value and each notebook's seconds; "
          f"the executed notebooks and the stages they built are beside it")
    return summary


def kernel_config():
    """The notebooks' kernel manager set to encrypt its channels (CurveZMQ) where jupyter_client
    and pyzmq can: an ipykernel 7 kernel on plain TCP warns about it on every start."""
    import zmq
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if not zmq.has("curve") or "transport_encryption" not in KernelManager.class_trait_names():
        return Config()
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def run_frontier(preset_name: str, out: Path, overrides: dict, seed: int = 0, workers: int = 1,
                 json_path: Path | None = None, command: str = "") -> dict:
    """The frontier study into ``out``: ``frontier.json``, ``frontier.png``, the table printed."""
    import time

    from . import plots, study
    from .presets import get_preset

    try:
        preset = get_preset(preset_name, overrides, verbose=False)
    except ValueError as error:
        raise SystemExit(f"dpo-edu frontier: {error}") from None
    make_folder(out)
    if json_path is not None:
        make_folder(json_path.parent, "--json")
    start = time.perf_counter()
    result = study.run_study(preset, out, seed=seed, workers=workers)
    shipped = study.study_json(result, preset, command)
    shipped["seconds"] = round(time.perf_counter() - start, 1)
    json_path = json_path or out / "frontier.json"
    save_json(shipped, json_path)
    plots.plot_study(shipped).savefig(out / "frontier.png", dpi=120)
    print("\n".join(study.table_lines(shipped["table"])))
    print(f"\n{len(result.runs)} runs in {shipped['seconds']:.0f} s; wrote {json_path} and "
          f"{out / 'frontier.png'}")
    return shipped


def make_workspace(folder: Path) -> Path:
    """Copy the course notebooks (not their jupytext ``.py`` twins) into ``folder/notebooks``, where
    each notebook's default run folder is ``folder/runs/PRESET``. A notebook already there is a
    student's work: it is kept, and named. Returns the notebooks' folder."""
    notebooks = make_folder(folder, "workspace") / "notebooks"
    notebooks.mkdir(exist_ok=True)
    for source in course_notebooks():
        target = notebooks / source.name
        if target.exists():
            print(f"kept     {target} (already there: your copy, unchanged)")
        else:
            shutil.copyfile(source, target)
            print(f"copied   {target}")
    print(f"\nOpen the course with:  jupyter lab {notebooks}")
    return notebooks


def check() -> None:
    """Print what the course will run on."""
    import torch

    from .models import hub_reachable
    from .presets import choose_auto

    print(f"python   {sys.version.split()[0]}")
    print(f"torch    {torch.__version__}")
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else "CPU only (no CUDA GPU visible)")
    print(f"device   {device}")
    print(f"hub      {'reachable' if hub_reachable() else 'not reachable'}")
    name, why = choose_auto()
    print(f"auto     → {name}: {why}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dpo-edu", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the course headless into a run folder")
    run.add_argument("notebooks", nargs="*",
                     help="notebook names or prefixes (e.g. 01 03); default: all")
    run.add_argument("--preset", default="cpu", choices=["ci", "cpu", "gpt2", "auto"])
    run.add_argument("--out", type=Path, help="run folder (default: runs/PRESET)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="replace a preset field, e.g. --set ppo.steps=8 --set dpo.loss_type=ipo "
                          "(repeatable; the fields: dpo_edu/presets.py)")
    study = commands.add_parser(
        "frontier", help="the reward–KL frontier study: every method, seeds, matched-KL intervals")
    study.add_argument("--preset", default="cpu", choices=["ci", "cpu", "gpt2"])
    study.add_argument("--out", type=Path, help="run folder (default: runs/PRESET)")
    study.add_argument("--seed", type=int, default=0, help="π_ref's seed; runs use SEED, SEED+1, …")
    study.add_argument("--seeds", type=int, help="training seeds a setting (default: the preset's)")
    study.add_argument("--methods", help="comma-separated subset of " + ", ".join(METHODS))
    study.add_argument("--workers", type=int, default=1, help="processes of one thread each")
    study.add_argument("--json", type=Path, help="the JSON's path (default: OUT/frontier.json)")
    study.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="replace a preset field, as for run")
    workspace = commands.add_parser(
        "workspace", help="copy the course notebooks into a folder of your own to work in")
    workspace.add_argument("folder", nargs="?", type=Path, default=Path("dpo-edu-course"),
                           help="default: dpo-edu-course")
    commands.add_parser("check",
                        help="report torch, device, Hub reachability and the preset 'auto' picks")
    student = commands.add_parser(
        "student", help="build the autograded assignments (student notebooks, autograders)")
    student.add_argument("--out", type=Path, default=Path("dist/assignments"),
                         help="default: dist/assignments")
    student.add_argument("--no-run-tests", action="store_true",
                         help="skip grading the solutions (faster)")
    args = parser.parse_args(argv)
    if args.command == "run":
        preset = args.preset
        if preset == "auto":
            from .presets import choose_auto

            preset, why = choose_auto()
            print(f"preset auto → {preset}: {why}")
        run_course(preset, args.out or Path("runs") / preset, args.notebooks, args.seed,
                   preset_overrides(args.set))
    elif args.command == "frontier":
        overrides = preset_overrides(args.set)
        if args.seeds is not None:
            overrides.update({"frontier.seeds": args.seeds, "frontier.seeds_by_method": ()})
        if args.methods:
            overrides["frontier.methods"] = [m.strip() for m in args.methods.split(",")]
        out = args.out or Path("runs") / args.preset
        run_frontier(args.preset, out, overrides, args.seed, args.workers,
                     args.json or out / "frontier.json", " ".join(["dpo-edu", *sys.argv[1:]]))
    elif args.command == "student":
        build_assignments(args.out, run_tests=not args.no_run_tests)
    elif args.command == "workspace":
        make_workspace(args.folder)
    else:
        check()


if __name__ == "__main__":
    main()
