"""Values a notebook publishes for its tests.

``record(name, value)`` shows ``name = value`` in the notebook and stores the value in the cell's
output under a dedicated MIME type; ``read_records(path)`` reads every recorded value back
from an executed notebook, so tests assert on what the notebook proved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MIME_TYPE = "application/vnd.dpo-edu.record+json"


def _plain(value):
    """A JSON-friendly copy of ``value`` (tensors and numpy scalars become Python numbers/lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _shown(plain, inner: bool = False) -> str:
    """``plain`` as a reader reads it, not as JSON: numbers to 6 significant digits, a dict as
    ``key: value, …``, a table (a list of dicts) as its size and columns, text without quotes."""
    if isinstance(plain, float):
        return f"{plain:.6g}"
    if isinstance(plain, dict):
        items = ", ".join(f"{key}: {_shown(item, inner=True)}" for key, item in plain.items())
        return f"({items})" if inner else items
    if isinstance(plain, list) and plain and all(isinstance(row, dict) for row in plain):
        columns = list(dict.fromkeys(key for row in plain for key in row))
        return f"{len(plain)} rows of {', '.join(columns)}"
    if isinstance(plain, list):
        return f"[{', '.join(_shown(item, inner=True) for item in plain)}]"
    return str(plain)


SHOWN_CHARACTERS = 100  # a record shows one line: longer values are cut (the whole one is stored)


def record(name: str, value) -> None:
    """Publish ``value`` under ``name``, shown as one line ``name = value`` (cut if long); returns
    nothing, so a cell that ends with it does not echo the value again."""
    from IPython import get_ipython
    from IPython.display import display

    plain = _plain(value)
    shown = _shown(plain)
    if len(shown) > SHOWN_CHARACTERS:
        shown = shown[:SHOWN_CHARACTERS] + " …"
    if get_ipython() is None:  # a plain Python process: no notebook to store the value in
        print(f"{name} = {shown}")
    else:
        display({"text/plain": f"{name} = {shown}", MIME_TYPE: {"name": name, "value": plain}},
                raw=True)


def read_records(notebook: str | Path) -> dict:
    """Every value recorded in an executed notebook, by name (a later record of a name wins)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    records = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(MIME_TYPE)
            if data is not None:
                records[data["name"]] = data["value"]
    return records
