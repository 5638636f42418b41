"""Live training curves in a notebook: a trainer callback that redraws one figure in place.

    curves = LiveCurves([["loss"], ["rewards/margins"]])
    train(..., callback=curves)      # the figure updates every time the trainer calls back

    dashboard = LiveCurves([["eval/reward"], ["eval/kl"]])        # several runs on one figure:
    train_dpo(..., callback=dashboard.run("DPO β=0.1"))
    train_ppo(..., callback=dashboard.run("PPO KL=6"))

It keeps every row it is given, so ``curves.runs`` is the log seen so far, even if training is
interrupted. Outside a notebook (no IPython display) it only collects.
"""

from __future__ import annotations

from .plots import plot_training_curves


class LiveCurves:
    """Callback ``(step, metrics) -> None`` that redraws ``plots.plot_training_curves`` in place."""

    def __init__(self, panels: list[list[str]], title: str = ""):
        self.panels, self.title = panels, title
        self.runs: dict[str, list[dict]] = {}
        self._handle = None

    def __call__(self, step: int, metrics: dict) -> None:
        self.run("run")(step, metrics)

    def run(self, name: str):
        """The callback of one run: its rows are drawn beside every other run's."""
        rows = self.runs.setdefault(name, [])

        def callback(step: int, metrics: dict) -> None:
            rows.append({"step": step, **metrics})
            self.show()

        return callback

    def figure(self):
        return plot_training_curves(self.runs, self.panels, self.title)

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
