"""Live training curves in a notebook: a trainer callback that redraws one figure in place.

    curves = LiveCurves([["loss"], ["rewards/margins"]])
    train(..., callback=curves)      # the figure updates as the trainer calls back

    dashboard = LiveCurves([["eval/reward"], ["eval/kl"]])        # several runs on one figure:
    train_dpo(..., callback=dashboard.run("DPO β=0.1"))
    train_ppo(..., callback=dashboard.run("PPO KL=6"))

It keeps every row it is given, so ``curves.runs`` is the log seen so far, even if training is
interrupted. A row that holds an evaluation (a metric named ``eval…``) is drawn at once; other rows
at most every ``every_seconds``, so a trainer that calls back every step trains rather than draws
(drawing a dashboard takes most of a second). The trainers evaluate after their last step, so the
last drawing holds every row. Outside a notebook (no IPython display) it only collects.
"""

from __future__ import annotations

import math
import time

from .plots import plot_training_curves


class LiveCurves:
    """Callback ``(step, metrics) -> None`` that redraws ``plots.plot_training_curves`` in place."""

    def __init__(self, panels: list[list[str]], title: str = "", caption: str = "",
                 every_seconds: float = 2.0):
        self.panels, self.title, self.caption = panels, title, caption
        self.every_seconds = every_seconds
        self.runs: dict[str, list[dict]] = {}
        self._handle = None
        self._drawn_at = -math.inf  # time.monotonic() of the last drawing

    def __call__(self, step: int, metrics: dict) -> None:
        self.run("run")(step, metrics)

    def run(self, name: str):
        """The callback of one run: its rows are drawn beside every other run's."""
        rows = self.runs.setdefault(name, [])

        def callback(step: int, metrics: dict) -> None:
            rows.append({"step": step, **metrics})
            now = time.monotonic()
            if (any(key.startswith("eval") for key in metrics)
                    or now - self._drawn_at >= self.every_seconds):
                self._drawn_at = now
                self.show()

        return callback

    def figure(self):
        return plot_training_curves(self.runs, self.panels, self.title, caption=self.caption)

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
