"""Live training curves in a notebook: a trainer callback that redraws one figure in place.

    curves = LiveCurves([["loss"], ["rewards/margins"]])
    train(..., callback=curves)      # the figure updates every time the trainer calls back

It keeps every row it is given, so ``curves.rows`` is the log seen so far, even if training is
interrupted. Outside a notebook (no IPython display) it only collects.
"""

from __future__ import annotations

from .plots import plot_training_curves


class LiveCurves:
    """Callback ``(step, metrics) -> None`` that redraws ``plots.plot_training_curves`` in place."""

    def __init__(self, panels: list[list[str]], title: str = "", run: str = "run"):
        self.panels, self.title, self.run = panels, title, run
        self.rows: list[dict] = []
        self._handle = None

    def __call__(self, step: int, metrics: dict) -> None:
        self.rows.append({"step": step, **metrics})
        self.show()

    def figure(self):
        return plot_training_curves({self.run: self.rows}, self.panels, self.title)

    def show(self) -> None:
        """Draw the curves so far, replacing the previous drawing of this object."""
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.figure(), display_id=True)
        else:
            self._handle.update(self.figure())
