"""Interactive explorers: sliders wired to the pure figures of ``plots``.

Each ``explore_*`` returns a widget box: sliders, a one-line text readout (which a browser
test can read) and the figure, redrawn when a slider is released. Only ipywidgets APIs
common to 7.7 (Colab) and 8.x are used. In a notebook::

    explore_x() if INTERACTIVE else plots.plot_x(...)
"""

from __future__ import annotations

import html
import math
from itertools import combinations
from typing import Callable

import ipywidgets as widgets
import torch
from IPython.display import display
from matplotlib.figure import Figure

from . import bradley_terry, plots, study, toy

READOUT_CLASS = "dpo-edu-readout"


def explorer(controls: dict[str, widgets.Widget],
             render: Callable[..., tuple[Figure, str]]) -> widgets.VBox:
    """Wire ``controls`` to ``render(**values) -> (figure, readout text)``; draw once now."""
    output = widgets.Output()
    readout = widgets.HTML()
    readout.add_class(READOUT_CLASS)

    def update(_change=None):
        figure, text = render(**{name: control.value for name, control in controls.items()})
        readout.value = text
        with output:
            output.clear_output(wait=True)
            display(figure)

    for control in controls.values():
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(list(controls.values())), readout, output])


def _slider_style() -> dict:
    return {"continuous_update": False, "style": {"description_width": "initial"}}


def explore_bradley_terry(n_items: int = 8,
                          counts=(25, 50, 100, 200, 500, 1000, 2000, 5000, 10000), seed: int = 0):
    """Sliders: number of comparisons and reward scale → fitted vs hidden rewards."""

    def render(n_comparisons, reward_scale):
        recovery = bradley_terry.recovery_experiment(n_items, n_comparisons, reward_scale,
                                                     seed=seed)
        text = (f"n = {n_comparisons:,} comparisons, reward scale {reward_scale:.2f}: "
                f"RMS error {recovery.error:.3f}")
        return plots.plot_bt_recovery(recovery), text

    controls = {
        "n_comparisons": widgets.SelectionSlider(
            options=list(counts), value=counts[len(counts) // 2], description="comparisons",
            **_slider_style()
        ),
        "reward_scale": widgets.FloatSlider(
            value=1.0, min=0.1, max=5.0, step=0.1, description="reward scale", readout_format=".2f",
            **_slider_style()
        ),
    }
    return explorer(controls, render)


def explore_optimal_policy(ref, reward, beta: float = 1.0):
    """A β slider (log scale) → π_ref, π*, r and the reward–KL curve with the current β marked."""
    betas = torch.logspace(-2, 2, 81, dtype=ref.dtype)

    def render(beta):
        pi_star = toy.optimal_policy(ref[None], reward[None], beta)
        kl = toy.kl_divergence(pi_star, ref[None]).item()
        expected = toy.expected_reward(pi_star, reward[None]).item()
        text = (f"β = {beta:.2f}: KL(π*‖π_ref) = {kl:.3f}, E[r] = {expected:.3f}, "
                f"max π* = {pi_star.max().item():.3f}")
        return plots.plot_optimal_policy(ref, reward, beta, betas), text

    controls = {
        "beta": widgets.FloatLogSlider(
            value=beta, base=10, min=-2, max=2, step=0.05, description="β", readout_format=".2f",
            **_slider_style()
        )
    }
    return explorer(controls, render)


def explore_dpo_loss(margin: float = 0.0, label_smoothing: float = 0.1):
    """Sliders: margin h = r̂_w − r̂_l and cDPO's ε → the losses and DPO's gradient weight σ(−h)."""

    def render(margin, label_smoothing):
        loss = math.log1p(math.exp(-margin))  # −log σ(h)
        weight = 1 / (1 + math.exp(margin))  # σ(r̂_l − r̂_w)
        text = (f"margin h = {margin:.2f}: DPO loss {loss:.3f}, "
                f"gradient weight σ(−h) = {weight:.3f}")
        return plots.plot_dpo_loss(margin, label_smoothing), text

    controls = {
        "margin": widgets.FloatSlider(
            value=margin, min=-5.0, max=5.0, step=0.25, description="margin h",
            readout_format=".2f", **_slider_style()
        ),
        "label_smoothing": widgets.FloatSlider(
            value=label_smoothing, min=0.0, max=0.45, step=0.05, description="cDPO ε",
            readout_format=".2f", **_slider_style()
        ),
    }
    return explorer(controls, render)


def samples_table(sample: dict, model_scores=None) -> str:
    """HTML: one prompt's completions with their rewards (and r_φ minus its mean over them, as
    ``plots.plot_prompt_samples`` draws it), then its pairs as chosen ≻ rejected."""
    if model_scores is not None:
        model_scores = plots.centred(model_scores)
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(text)}</td><td>{reward:.3f}</td>"
        + (f"<td>{model_scores[i]:+.3f}</td>" if model_scores is not None else "")
        + "</tr>"
        for i, (text, reward) in enumerate(zip(sample["completions"], sample["rewards"]))
    )
    head = ("<tr><th>#</th><th>completion</th><th>reward</th>"
            + ("<th>r_φ − mean</th>" if model_scores is not None else ""))
    rewards = sample["rewards"]
    pairs = ", ".join(
        f"{i} ≻ {j}" if rewards[i] > rewards[j] else f"{j} ≻ {i}"
        for i, j in combinations(range(len(rewards)), 2)
        if rewards[i] != rewards[j]
    )
    return (f"<b>{html.escape(sample['prompt'])}</b> …<table>{head}</tr>{rows}</table>"
            f"pairs: {pairs}")


def explore_samples(samples: list[dict], model_scores: list[list[float]] | None = None):
    """A prompt slider → its completions, ground-truth rewards (and reward-model scores, minus their
    mean) and pairs.

    ``samples`` are rows of ``pairs/samples.jsonl``: ``{"prompt", "completions", "rewards"}``.
    """

    def render(prompt_index):
        sample = samples[prompt_index]
        scores = model_scores[prompt_index] if model_scores is not None else None
        figure = plots.plot_prompt_samples(sample["prompt"], sample["rewards"], scores)
        return figure, f"prompt {prompt_index}: " + samples_table(sample, scores)

    controls = {
        "prompt_index": widgets.IntSlider(
            value=0, min=0, max=len(samples) - 1, description="prompt", **_slider_style()
        )
    }
    return explorer(controls, render)


def explore_study(result: dict, shipped: dict | None = None):
    """Pick the methods shown and a KL budget → the frontier redrawn, and each method's reward
    there with its 95 % interval (``study.study_json``'s table; ``shipped`` drawn beside it)."""
    methods = [m for m in plots.METHOD_COLOURS if any(p["method"] == m for p in result["points"])]
    table = result["table"]

    def render(show, budget):
        chosen = methods if show == "all methods" else [show]
        figure = plots.plot_study(result, shipped, chosen, budget)
        rows = [r for r in table["rows"] if r["budget"] == budget and r["method"] in chosen]
        return figure, f"KL {budget:g}: " + "; ".join(map(study.reading, rows))

    controls = {
        "show": widgets.Dropdown(options=["all methods", *methods], description="show"),
        "budget": widgets.SelectionSlider(options=[(f"{b:g}", b) for b in table["budgets"]],
                                          description="KL budget", **_slider_style()),
    }
    return explorer(controls, render)
