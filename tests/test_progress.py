"""The progress bars: tqdm's text in a terminal; in a notebook one HTML display updated in place, never a widget
(a widget makes JupyterLab create a kernel subshell, and the kernel then reads "idle" while a cell trains)."""

from __future__ import annotations

import sys

import IPython.display
import pytest
from tqdm.std import tqdm

from dpo_edu import progress


class Handle:
    """What ``display(..., display_id=True)`` returns: the shown bundles, the first and every update."""

    def __init__(self, shown: list):
        self.shown = shown

    def update(self, bundle, raw):
        assert raw
        self.shown.append(bundle)


@pytest.fixture
def notebook(monkeypatch):
    """A kernel as the bars see it: ``in_notebook()`` true and ``display`` recorded; yields the displays made."""
    displays = []

    def display(bundle, raw, display_id):
        assert raw and display_id is True
        displays.append(Handle([bundle]))
        return displays[-1]

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    return displays


def test_outside_a_notebook_the_bar_is_tqdms_text(capsys):
    assert not progress.in_notebook()  # pytest runs no kernel
    bar = progress.progress_bar(total=3, desc="train")
    assert type(bar) is tqdm
    bar.update(3)
    bar.close()
    assert "train: 100%" in capsys.readouterr().err


def test_in_a_notebook_the_bar_is_one_html_display_updated_in_place(notebook):
    modules = set(sys.modules)
    bar = progress.progress_bar(total=4, desc="train", mininterval=0)
    for _ in range(4):
        bar.set_postfix(loss="0.69", refresh=False)
        bar.update(1)
    bar.close()
    (handle,) = notebook  # one display: every later state replaced it
    first, last = handle.shown[0], handle.shown[-1]
    assert '<progress value="0" max="4"' in first["text/html"] and "train:" in first["text/html"]
    assert '<progress value="4" max="4"' in last["text/html"]
    assert "4/4" in last["text/html"] and "loss=0.69" in last["text/html"]
    assert last["text/plain"].startswith("train: 100%") and "loss=0.69" in last["text/plain"]
    assert len(handle.shown) >= 5  # drawn at each update (mininterval 0) and at the close
    assert not any(name.startswith("ipywidgets") for name in set(sys.modules) - modules)


def test_a_bar_iterates_draws_its_final_count_and_a_nested_one_is_cleared(notebook):
    outer = progress.progress_bar(range(2), desc="runs")  # drawn at most twice a second: not at each item
    for _ in outer:
        inner = progress.progress_bar(total=3, desc="train")
        inner.update(3)
        inner.close()
    runs, train, again = notebook
    assert '<progress value="2" max="2"' in runs.shown[-1]["text/html"]  # the close draws the last count
    assert train.shown[-1] == again.shown[-1] == {"text/plain": ""}  # nested: cleared when done


def test_a_disabled_bar_shows_nothing(notebook):
    bar = progress.progress_bar(total=3, disable=True)
    bar.update(3)
    bar.close()
    assert notebook == []
