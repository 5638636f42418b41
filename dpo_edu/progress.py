"""Progress bars that keep a notebook's kernel status honest.

    for batch in progress_bar(batches, desc="train"): ...
    bar = progress_bar(total=100, desc="train")
    bar.update(1); bar.set_postfix(loss="0.69"); bar.close()

``progress_bar`` is tqdm's bar. In a terminal it is tqdm's text line. In a notebook it is an HTML
``<progress>`` element updated in place, not tqdm.auto's ipywidgets bar: opening a widget makes
JupyterLab (4.4 and later, with ipykernel 7) create a kernel subshell over the control channel,
and the kernel answers that control message with a status "busy" then "idle", so JupyterLab's
status bar and ``/api/kernels`` read **Idle for the rest of a training cell** (ipykernel issue 799,
jupyter_client issue 838). A display update is an IOPub message and sends the kernel nothing. A
bar nested in another (a run's training inside a study) is cleared when it ends.
"""

from __future__ import annotations

import re
from html import escape

from tqdm.std import tqdm


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (not a terminal, not IPython's terminal shell)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar (same arguments): HTML in a notebook, text elsewhere."""
    return (HTMLBar if in_notebook() else tqdm)(iterable, **kwargs)


class HTMLBar(tqdm):
    """tqdm drawn as one HTML display, a ``<progress>`` between tqdm's texts, updated in place."""

    def __init__(self, *args, **kwargs):
        self._handle = None
        kwargs.setdefault("mininterval", 0.5)  # seconds between drawings
        kwargs.setdefault("leave", None)  # kept when done, unless nested in another bar
        super().__init__(*args, **kwargs, gui=True)  # gui: tqdm writes no text of its own
        if not self.disable:
            self.display()

    def display(self, msg=None, pos=None) -> None:
        """Draw the bar's state now: tqdm's description and counts around a ``<progress>``."""
        from IPython.display import display

        left, right = re.split(r"\|?<bar/>\|?", self.format_meter(
            **{**self.format_dict, "bar_format": "{l_bar}<bar/>{r_bar}"}), maxsplit=1)
        value = "" if self.total is None else f' value="{self.n}" max="{self.total}"'
        html = (f'<div style="font-family: monospace; white-space: pre">{escape(left)}'
                f'<progress{value} style="width: 16em; vertical-align: middle"></progress>'
                f"{escape(right)}</div>")
        bundle = {"text/html": html, "text/plain": str(self)}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def close(self) -> None:
        """Draw the final count (``update`` draws at most twice a second); clear a nested bar."""
        if self.disable:
            return
        if self.leave or (self.leave is None and self.pos == 0):
            self.display()
        else:
            self._handle.update({"text/plain": ""}, raw=True)
        super().close()
