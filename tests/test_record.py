"""Tests for dpo_edu.record: publishing values from a notebook and reading them back."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch

from dpo_edu import record as rec


def _display_output(bundle: dict) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": bundle}


def _notebook(*cells_outputs: list[dict]) -> dict:
    """A minimal nbformat-4 notebook, one code cell per list of outputs, plus a markdown cell."""
    cells = [{"cell_type": "markdown", "id": "md", "metadata": {}, "source": "# title"}]
    for i, outputs in enumerate(cells_outputs):
        cells.append(
            {
                "cell_type": "code",
                "id": f"cell-{i}",
                "execution_count": i + 1,
                "metadata": {},
                "source": "record(...)",
                "outputs": outputs,
            }
        )
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _bundle(name, value) -> dict:
    return {"text/plain": f"{name} = {value}", rec.MIME_TYPE: {"name": name, "value": value}}


# --------------------------------------------------------------------------- read_records


def test_read_records_from_hand_built_notebook(tmp_path):
    """read_records returns every recorded value by name; other outputs and markdown cells are ignored."""
    nb = _notebook(
        [
            {"output_type": "stream", "name": "stdout", "text": "training...\n"},
            _display_output(_bundle("final_loss", 0.125)),
            _display_output({"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}),
        ],
        [
            {
                "output_type": "execute_result",
                "execution_count": 2,
                "metadata": {},
                "data": _bundle("curve", [3.0, 2.0, 1.5]),
            },
            _display_output(_bundle("summary", {"accuracy": 0.9, "n": 400})),
        ],
        [],
    )
    nbformat.validate(nbformat.from_dict(nb))  # the hand-built file is a valid notebook
    path = tmp_path / "executed.ipynb"
    path.write_text(json.dumps(nb))
    assert rec.read_records(path) == {
        "final_loss": 0.125,
        "curve": [3.0, 2.0, 1.5],
        "summary": {"accuracy": 0.9, "n": 400},
    }
    assert rec.read_records(str(path)) == rec.read_records(path)  # str paths work too


def test_read_records_later_record_of_a_name_wins(tmp_path):
    """When a name is recorded twice (same cell or a later cell), the last value is the one read."""
    nb = _notebook(
        [_display_output(_bundle("beta", 0.1)), _display_output(_bundle("beta", 0.2))],
        [_display_output(_bundle("other", 1)), _display_output(_bundle("beta", 0.5))],
    )
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert rec.read_records(path) == {"beta": 0.5, "other": 1}


def test_read_records_of_a_notebook_without_records(tmp_path):
    """An unexecuted notebook (no outputs at all) gives an empty dict."""
    nb = _notebook()
    cell = {"cell_type": "code", "id": "c", "execution_count": None, "metadata": {}, "source": "x = 1", "outputs": []}
    nb["cells"].append(cell)
    path = tmp_path / "clean.ipynb"
    path.write_text(json.dumps(nb))
    assert rec.read_records(path) == {}


# --------------------------------------------------------------------------- record


@pytest.fixture
def captured(monkeypatch):
    """Pretend to run in a kernel and replace IPython's display with a recorder of (bundle, kwargs)."""
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kwargs: calls.append((objs, kwargs)))
    return calls


def test_record_returns_nothing_and_publishes_a_raw_mime_bundle(captured):
    """record displays {text/plain, record MIME} as a raw bundle and returns None: a cell ending with it does not
    echo the value a second time (issue 16)."""
    value = [1, 2, 3]
    assert rec.record("counts", value) is None
    (objs, kwargs) = captured[0]
    assert kwargs == {"raw": True}
    assert objs == ({"text/plain": "counts = [1, 2, 3]", rec.MIME_TYPE: {"name": "counts", "value": [1, 2, 3]}},)


def test_record_converts_tensors_numpy_and_non_finite_values(captured):
    """Tensors → lists, NumPy scalars → numbers, tuples → lists, dict keys → str, NaN/inf → strings."""
    t = torch.tensor([[0.5, 1.0], [2.0, 3.5]], dtype=torch.float64)
    rec.record("matrix", t)
    rec.record("scalar", torch.tensor(0.25))
    rec.record("np", np.float64(1.5))
    rec.record("mixed", {1: (np.int64(2), float("nan")), "inf": float("inf")})
    values = {objs[0][rec.MIME_TYPE]["name"]: objs[0][rec.MIME_TYPE]["value"] for objs, _ in captured}
    assert values["matrix"] == [[0.5, 1.0], [2.0, 3.5]]
    assert values["scalar"] == 0.25 and type(values["scalar"]) is float
    assert values["np"] == 1.5 and type(values["np"]) is float
    assert values["mixed"] == {"1": [2, "nan"], "inf": "inf"}
    assert type(values["mixed"]["1"][0]) is int
    # Every recorded value is strict JSON (no NaN tokens), so any notebook reader can load it.
    for value in values.values():
        json.loads(json.dumps(value, allow_nan=False))
    shown = [objs[0]["text/plain"] for objs, _ in captured]
    assert shown[1] == "scalar = 0.25" and shown[2] == "np = 1.5"


def test_record_float_is_shown_with_six_significant_digits(captured):
    """The text shown is name = value with :.6g for floats; the stored value keeps full precision."""
    rec.record("pi", math.pi)
    (bundle,), _ = captured[0]
    assert bundle["text/plain"] == "pi = 3.14159"
    assert bundle[rec.MIME_TYPE]["value"] == math.pi


def test_record_then_read_records_round_trip(captured, tmp_path):
    """What record displays, saved as notebook outputs, is what read_records returns."""
    rec.record("loss", torch.tensor([0.69, 0.5], dtype=torch.float64))
    rec.record("acc", 0.75)
    rec.record("loss", torch.tensor([0.4], dtype=torch.float64))
    outputs = [_display_output(objs[0]) for objs, _ in captured]
    nb = nbformat.from_dict(_notebook(outputs))
    nbformat.validate(nb)
    path = tmp_path / "roundtrip.ipynb"
    nbformat.write(nb, str(path))
    records = rec.read_records(path)
    assert records == {"loss": [0.4], "acc": 0.75}


def test_record_in_a_plain_python_process():
    """Outside Jupyter, record prints name = value (no kernel needed)."""
    code = (
        "from dpo_edu.record import record\n"
        "v = {'a': 1}\n"
        "assert record('answer', v) is None\n"
        "record('x', 2.5)\n"
        "print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "answer = a: 1" in out.stdout
    assert "x = 2.5" in out.stdout
    assert out.stdout.rstrip().endswith("done")


def test_record_round_trip_through_a_real_kernel(tmp_path):
    """Executed by a Jupyter kernel and saved, a notebook's records read back (last one wins)."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\nfrom dpo_edu.record import record\n"
            "record('a', 1.5)\nrecord('v', np.array([1.0, 2.0]))"
        ),
        nbformat.v4.new_code_cell("record('a', 2.5)"),
    ]
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, str(path))
    assert rec.read_records(path) == {"a": 2.5, "v": [1.0, 2.0]}


def test_a_long_value_is_shown_on_one_cut_line_and_stored_whole(captured):
    value = {f"setting {i}": {"reward": i / 7, "kl": i * 1.5} for i in range(20)}
    rec.record("table", value)
    (bundle,), _ = captured[0]
    shown = bundle["text/plain"]
    assert shown.startswith("table = setting 0: (reward: 0, kl: 0), setting 1: (reward: 0.142857")
    assert shown.endswith(" …")
    assert len(shown) == len("table = ") + rec.SHOWN_CHARACTERS + 2 and "\n" not in shown
    assert bundle[rec.MIME_TYPE]["value"] == value  # the tests read the whole value


def test_a_dict_a_table_and_a_list_are_shown_as_a_reader_reads_them_not_as_json(captured):
    """Issue 16: a recorded dict showed as raw JSON ({"DPO": 2, …})."""
    rec.record("runs", {"DPO": 2, "PPO": 1})
    rec.record("frontier_table", [{"method": "DPO", "budget": 1.0}, {"method": "PPO", "budget": 1.0, "low": 0.5}])
    rec.record("errors", [0.7626797165952556, np.float64(0.5)])
    rec.record("label", "positive")
    shown = [objs[0]["text/plain"] for objs, _ in captured]
    assert shown == ["runs = DPO: 2, PPO: 1", "frontier_table = 2 rows of method, budget, low",
                     "errors = [0.76268, 0.5]", "label = positive"]
    assert not any('{"' in line for line in shown)
