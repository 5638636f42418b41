"""Show a library function's source in a notebook, highlighted: the code a section teaches.

    show_source(losses.dpo_loss)     # a Markdown code block: JupyterLab and Colab highlight it
"""

from __future__ import annotations

import inspect
from pathlib import Path


class Source:
    """A function's (or class's) source: a highlighted code block, printed as plain text."""

    def __init__(self, obj):
        self.text = inspect.getsource(obj)
        self.name = f"{obj.__module__}.{obj.__qualname__}"
        self.where = (f"{Path(inspect.getsourcefile(obj)).name}, "
                      f"line {inspect.getsourcelines(obj)[1]}")

    def _repr_markdown_(self) -> str:
        return f"`{self.name}` ({self.where})\n\n```python\n{self.text.rstrip()}\n```"

    def __repr__(self) -> str:
        return f"# {self.name} ({self.where})\n{self.text.rstrip()}"


def show_source(obj) -> Source:
    """The source of ``obj``; a notebook cell ending with it shows it highlighted."""
    return Source(obj)
