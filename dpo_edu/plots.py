"""Figures for the course: pure functions that take numbers and return a matplotlib Figure.

They run no experiment (at most an exact formula from ``toy``) and never touch global pyplot
state (``Figure()`` rather than ``plt.figure()``), so a notebook can show one, a widget can redraw
one, and a test can inspect one. The explorers in ``widgets`` call these. Every figure is drawn
in one style, ``THEME``.
"""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from . import toy
from .bradley_terry import Recovery

# The course's style, for figures shown at 100 px an inch in a notebook cell about 1,000 px wide
# (a laptop's): ``themed`` applies it while a figure is built; pyplot's global settings stay as
# they are.
THEME = {"figure.dpi": 100, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12,
         "lines.linewidth": 1.6, "lines.markersize": 5}
CAPTION_STYLE = {"fontsize": 9, "style": "italic", "color": "0.3"}  # a note under a figure


def themed(plot):
    """``plot`` with its figure built under ``THEME`` (a ``matplotlib.rc_context``)."""

    @functools.wraps(plot)
    def themed_plot(*args, **kwargs):
        with matplotlib.rc_context(THEME):
            return plot(*args, **kwargs)

    return themed_plot


def _figure(panels: int = 1, width: float = 5.0, height: float = 3.6, per_row: int = 3):
    """A Figure of ``panels`` axes of ``width`` × ``height`` inches in rows of at most ``per_row``,
    balanced (4 panels: 2 + 2; 5: 3 + 2); the axes in reading order."""
    rows = -(-panels // per_row)  # ⌈panels / per_row⌉
    columns = -(-panels // rows)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for spare in axes[panels:]:
        spare.remove()
    return fig, list(axes[:panels])


def _caption(fig: Figure, text: str) -> None:
    """``text`` under the figure, in ``CAPTION_STYLE``; the layout makes room for it."""
    fig.supxlabel(text, wrap=True, **CAPTION_STYLE)


@themed
def plot_bt_recovery(recovery: Recovery) -> Figure:
    """Fitted against hidden rewards, both centred: on the diagonal = recovered up to a shift."""
    fig, (ax,) = _figure()
    true = (recovery.true - recovery.true.mean()).numpy()
    fitted = recovery.fitted.numpy()
    lim = 1.15 * max(np.abs(true).max(), np.abs(fitted).max())
    ax.plot([-lim, lim], [-lim, lim], color="gray", lw=1, ls="--", label="perfect recovery")
    ax.scatter(true, fitted, s=40, zorder=3, label="items")
    ax.set(
        xlabel="hidden reward − mean",
        ylabel="fitted reward (mean zero)",
        xlim=(-lim, lim),
        ylim=(-lim, lim),
        title=f"{recovery.n_comparisons:,} comparisons: RMS error {recovery.error:.3f}",
    )
    ax.legend(loc="upper left")
    return fig


@themed
def plot_bt_error_curve(counts, errors) -> Figure:
    """Recovery error against the number of comparisons (log–log), with a 1/√n slope beside it."""
    fig, (ax,) = _figure()
    counts, errors = np.asarray(counts, dtype=float), np.asarray(errors, dtype=float)
    ax.loglog(counts, errors, "o-", label="median RMS error")
    ax.loglog(counts, errors[0] * np.sqrt(counts[0] / counts), color="gray", ls="--",
              label=r"$\propto 1/\sqrt{n}$")
    ax.set(xlabel="comparisons n", ylabel="RMS error (centred)",
           title="Bradley–Terry MLE: error shrinks with data")
    ax.legend()
    return fig


@themed
def plot_optimal_policy(ref: Tensor, reward: Tensor, beta: float, betas: Tensor) -> Figure:
    """Left: π_ref, π* and r for one prompt. Right: the exact reward–KL curve over ``betas``, with
    the current β marked."""
    bandit = toy.Bandit(ref=ref[None], reward=reward[None])
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, beta)
    curve_kl, curve_reward = toy.reward_kl_curve(bandit, betas)
    fig, (left, right) = _figure(2)
    y = np.arange(bandit.n_responses)
    left.bar(y - 0.2, ref.numpy(), width=0.4, label=r"$\pi_{ref}$", color="tab:gray")
    left.bar(y + 0.2, pi_star[0].numpy(), width=0.4, label=r"$\pi^*$", color="tab:blue")
    left.set(xlabel="response y", ylabel="probability", ylim=(0, 1),
             title=rf"$\beta$ = {beta:.3g}")
    left.set_xticks(y)
    twin = left.twinx()
    twin.plot(y, reward.numpy(), "D", color="tab:red", label="r(y)")
    twin.set_ylabel("reward r(y)", color="tab:red")
    handles = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    left.legend(handles=handles, loc="upper left")
    right.plot(curve_kl.numpy(), curve_reward.numpy(), color="tab:blue",
               label=r"$\pi^*_\beta$ as $\beta$ varies")
    kl, expected = (toy.kl_divergence(pi_star, bandit.ref).item(),
                    toy.expected_reward(pi_star, bandit.reward).item())
    right.plot([kl], [expected], "o", color="tab:orange", ms=10, label=rf"$\beta$ = {beta:.3g}")
    right.set(xlabel=r"KL($\pi^*$ ‖ $\pi_{ref}$)", ylabel=r"E$_{\pi^*}$[r]",
              title="The reward–KL frontier")
    right.legend(loc="lower right")
    return fig


@themed
def plot_convergence(histories: dict[str, list[float]], ylabel: str, title: str,
                     log_y: bool = True) -> Figure:
    """Curves by name over training steps (e.g. max |π − π*| per trainer); log y axis by default."""
    fig, (ax,) = _figure(width=6)
    for name, values in histories.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    return fig


@themed
def plot_dpo_loss(margin: float, label_smoothing: float, span: float = 6.0) -> Figure:
    """DPO-family losses and DPO's gradient weight against the implicit-reward margin
    h = r̂_w − r̂_l."""
    fig, (left, right) = _figure(2)
    h = np.linspace(-span, span, 400)
    log_sigmoid = -np.logaddexp(0.0, -h)  # log σ(h), stable
    eps = label_smoothing
    left.plot(h, -log_sigmoid, label="DPO: −log σ(h)")
    left.plot(h, -(1 - eps) * log_sigmoid - eps * (-np.logaddexp(0.0, h)),
              label=f"cDPO, ε = {eps:.2f}")
    # (u − 1/(2β))² with u = h/β
    left.plot(h, (h - 0.5) ** 2, label=r"IPO $\times\beta^2$: (h − ½)²")
    left.plot(h, np.maximum(0.0, 1 - h), label="hinge: max(0, 1 − h)")
    left.axvline(margin, color="black", lw=1)
    left.set(xlabel=r"margin h = $\hat r_w - \hat r_l$", ylabel="loss", ylim=(0, 4),
             title="Losses vs margin")
    left.legend()
    weight = 1 / (1 + np.exp(h))  # σ(r̂_l − r̂_w) = σ(−h)
    right.plot(h, weight, label=r"$\sigma(\hat r_l - \hat r_w)$ (paper §4)")
    right.plot(h, 1 - weight, ls="--", color="gray",
               label=r"$\sigma(\hat r_w - \hat r_l)$ (appendix Eq. 21 slip)")
    right.plot([margin], [1 / (1 + np.exp(margin))], "o", color="tab:orange", ms=10)
    right.set(xlabel=r"margin h", ylabel="gradient weight", ylim=(0, 1),
              title="How hard DPO pushes this pair")
    right.legend()
    return fig


@themed
def plot_implicit_reward(true_reward, implicit_reward) -> Figure:
    """Implicit reward β log π/π_ref against the true reward, one colour per prompt: parallel lines
    of slope 1."""
    fig, (ax,) = _figure()
    true_reward, implicit_reward = np.asarray(true_reward), np.asarray(implicit_reward)
    for x in range(true_reward.shape[0]):
        order = np.argsort(true_reward[x])
        ax.plot(true_reward[x, order], implicit_reward[x, order], "o-", label=f"prompt {x}")
    ax.set(xlabel="true reward r(x, y)", ylabel=r"implicit reward $\beta \log \pi/\pi_{ref}$")
    ax.set_title("Equal up to a per-prompt shift f(x)")
    ax.legend()
    return fig


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean of the last ``window`` values at each point (of fewer at the start): a per-step
    metric's trend. ``m_t = (v_{t−w+1} + … + v_t) / w``."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(values)
    sums[window:] = sums[window:] - sums[:-window]  # the right side is computed first
    return sums / np.minimum(np.arange(1, len(values) + 1), window)


# y-axis words for the metrics the notebooks plot (any other metric: its own name)
METRIC_LABELS = {"loss": "loss", "eval_loss": "loss", "loss/policy": "loss",
                 "mean_token_accuracy": "token accuracy", "accuracy": "pair accuracy",
                 "eval_accuracy": "pair accuracy", "rewards/accuracies": "accuracy",
                 "rewards/margins": "reward margin",
                 "logps/chosen": "log π(y | x), summed", "logps/rejected": "log π(y | x), summed",
                 "eval/reward": "ground-truth reward", "eval/kl": "KL(π ‖ π_ref), nats",
                 "objective/kl": "KL(π ‖ π_ref), nats", "objective/kl_coef": "KL coefficient β",
                 "objective/scores": "score s(x, y)", "policy/clipfrac": "fraction clipped"}
STYLES = ["-", "--", ":", "-."]  # a metric's line style when several runs share a panel


@themed
def plot_training_curves(runs: dict[str, list[dict]], panels: list[list[str]], title: str = "",
                         smooth: int = 20, caption: str = "") -> Figure:
    """One axis per panel, in rows of at most three; in each, every listed metric of every run
    against its ``step``, and a y label in words (``METRIC_LABELS``).

    ``runs``: run name → metric rows as the trainers log them (rows without a metric are skipped;
    where the steps start again, as a setting's next seed under the same name, the curve breaks).
    One run: a colour a metric. Several: a colour a run, named in a legend that takes the grid's
    next cell, and a line style a metric. ``smooth``: long noisy curves are drawn faint under their
    moving average (0 or 1: never), which the caption says. ``caption``: a note under the figure.
    """
    several = len(runs) > 1
    fig, axes = _figure(len(panels) + several, width=3.3, height=2.6)
    palette = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"].colors
    colours, smoothed = {}, False  # the runs drawn, and their colours
    for ax, metrics in zip(axes, panels):
        shown = {}  # this panel's metrics that have points: their legend entries
        for run_index, (run, rows) in enumerate(runs.items()):
            colour = palette[run_index % len(palette)]
            for metric_index, metric in enumerate(metrics):
                points = [(row["step"], row[metric]) for row in rows if metric in row]
                if not points:
                    continue
                style = ({"color": colour, "ls": STYLES[metric_index % len(STYLES)]} if several
                         else {"color": f"C{metric_index}", "ls": "-"})
                smoothed |= _curve(ax, *zip(*points), smooth, style)
                colours[run] = colour
                shown[metric] = {**style, "color": "0.3"} if several else style
        words = dict.fromkeys(METRIC_LABELS.get(m, m) for m in metrics)
        ax.set(xlabel="step", ylabel=" / ".join(words), title=", ".join(metrics))
        if len(shown) > 1:
            ax.legend([Line2D([], [], **style) for style in shown.values()], list(shown))
    if several:
        axes[-1].axis("off")
        axes[-1].legend([Line2D([], [], color=c) for c in colours.values()], list(colours),
                        loc="center", ncol=1 if len(colours) <= 12 else 2, title="runs")
    if title:
        fig.suptitle(title)
    note = f"Faint: every step; solid: the mean of the last {smooth} steps" if smoothed else ""
    if caption or note:
        _caption(fig, ". ".join(filter(None, (caption.rstrip("."), note))) + ".")
    return fig


def _curve(ax, steps, values, smooth: int, style: dict) -> bool:
    """One metric of one run: with markers when short, faint under its moving average when long
    (``plot_training_curves``); broken where the steps start again. True when it was smoothed."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    pieces = np.split(np.arange(len(steps)), np.flatnonzero(np.diff(steps) <= 0) + 1)

    def joined(arrays):  # one line, NaN between the pieces
        return np.concatenate([np.append(a, np.nan) for a in arrays])[:-1]

    x, y = joined([steps[p] for p in pieces]), joined([values[p] for p in pieces])
    if len(steps) < 30:
        ax.plot(x, y, marker=".", **style)
        return False
    if smooth > 1 and len(steps) >= 5 * smooth:
        ax.plot(x, y, lw=0.6, alpha=0.25, **style)
        ax.plot(x, joined([moving_average(values[p], smooth) for p in pieces]), **style)
        return True
    ax.plot(x, y, **style)
    return False


def centred(scores) -> np.ndarray:
    """``scores`` minus their mean: all a Bradley–Terry score of one prompt's completions says (it
    is defined only up to a shift, notebook 01)."""
    scores = np.asarray(scores, dtype=float)
    return scores - scores.mean()


@themed
def plot_prompt_samples(prompt: str, rewards, model_scores=None) -> Figure:
    """The ground-truth reward p(positive) of each sampled completion of one prompt, as bars; with
    ``model_scores``, the reward model's r_φ as points, ``centred``: only its differences between
    completions of one prompt mean anything, and bars from 0 would invent a scale."""
    fig, (ax,) = _figure(width=6)
    index = np.arange(len(rewards))
    ax.bar(index, rewards, width=0.6, color="tab:blue", label="ground truth p(positive)")
    ax.set(xlabel="completion", ylabel="ground truth p(positive)", ylim=(0, 1),
           title=f"“{prompt}” …")
    ax.set_xticks(index)
    if model_scores is not None:
        shifted = centred(model_scores)
        lim = 1.2 * np.abs(shifted).max() or 1.0  # symmetric about the mean
        twin = ax.twinx()
        twin.axhline(0.0, color="tab:orange", lw=0.8, ls=":")
        twin.plot(index, shifted, "D", color="tab:orange", ms=8,
                  label="reward model r_φ − its mean (a shift means nothing)")
        twin.set(ylim=(-lim, lim))
        twin.set_ylabel("r_φ − its mean", color="tab:orange")
        fig.legend(loc="outside lower center", ncol=2)
    return fig


METHOD_COLOURS = {"DPO": "C0", "IPO": "C9", "cDPO": "C4", "PPO": "C1", "PPO-GT": "C3",
                  "Preferred-FT": "C2", "Unlikelihood": "C5", "Best-of-N": "C7",
                  "RLOO": "C6", "GRPO": "C8", "Online DPO": "navy"}


@themed
def plot_study(study: dict, shipped: dict | None = None, methods=None,
               budget: float | None = None) -> Figure:
    """A frontier study (``study.study_json``): every method's evaluations (faint, seeds averaged),
    its frontier through the chosen points, and its reading at each budget with a 95 % interval;
    a ``shipped`` study drawn dashed and pale beside it; ``budget`` marked."""
    fig, (ax,) = _figure(width=7.0, height=4.6)
    methods = methods or [m for m in METHOD_COLOURS
                          if any(p["method"] == m for p in study["points"])]
    for source, faint in ((shipped, True), (study, False)):
        if source is None:
            continue
        origin = source["reference"]["reward"]
        for method in methods:
            colour, alpha = METHOD_COLOURS.get(method, "k"), 0.35 if faint else 1.0
            chosen = sorted(source["table"]["selected"].get(method, []),
                            key=lambda p: p["report_kl"])
            if not chosen:
                continue
            if not faint:  # each (setting, step) over its seeds: the cloud the frontier is drawn on
                cloud = _seed_means(p for p in source["points"] if p["method"] == method)
                ax.scatter(*zip(*cloud), s=10, color=colour, alpha=0.25, lw=0)
            kl = [0.0] + [p["report_kl"] for p in chosen]
            reward = [origin] + [p["report_reward"] for p in chosen]
            label = method if not faint else (  # one legend entry for a shipped study
                f"dashed: the {source['preset']} study" if method == methods[0] else None)
            ax.plot(kl, reward, color=colour, alpha=alpha, ls="--" if faint else "-",
                    marker="" if faint else "o", ms=4, label=label)
            for row in source["table"]["rows"]:
                if row["method"] == method and row["low"] is not None:  # value ± its interval
                    ax.errorbar(row["budget"], row["value"], [[row["value"] - row["low"]],
                                [row["high"] - row["value"]]], color=colour, alpha=alpha, capsize=3,
                                fmt="none" if faint else "D", ms=4)
    ax.axhline(study["reference"]["reward"], color="gray", ls=":", lw=1, label="π_ref")
    if budget is not None:
        ax.axvline(budget, color="k", lw=0.8, ls="--")
    ax.set(xlabel="sequence KL(π ‖ π_ref), report prompts (nats)", ylabel="ground-truth reward",
           title="Reward–KL frontier: chosen on select prompts, read on report prompts")
    fig.legend(loc="outside right upper")
    return fig


def _seed_means(points) -> list[tuple[float, float]]:
    """(KL, reward) of each (setting, step), its seeds averaged."""
    groups: dict = {}
    for p in points:
        groups.setdefault((p["setting"], p["step"]), []).append((p["kl"], p["reward"]))
    return [tuple(np.mean(values, axis=0)) for values in groups.values()]


@themed
def plot_overoptimisation(runs: list[dict]) -> Figure:
    """Over-optimisation along PPO runs (``study`` runs with ``eval/rm_score``): the ground-truth
    reward and the reward model's score of the same samples as the KL grows, seeds averaged."""
    fig, axes = _figure(2, width=4.6, height=3.6)
    settings = dict.fromkeys(run["setting"] for run in runs)
    for colour, setting in enumerate(settings):
        rows = [row for run in runs if run["setting"] == setting for row in run["metrics"]
                if "eval/rm_score" in row]
        steps = sorted({row["step"] for row in rows})
        means = [np.mean([[r["eval/kl"], r["eval/reward"], r["eval/rm_score"]] for r in rows
                          if r["step"] == step], axis=0) for step in steps]
        kl, truth, score = zip(*means)
        for ax, values in zip(axes, (truth, score)):
            ax.plot(kl, values, marker="o", color=f"C{colour}", label=setting)
    axes[0].set(xlabel="KL(π ‖ π_ref)", ylabel="ground-truth reward", title="what we want")
    axes[1].set(xlabel="KL(π ‖ π_ref)", ylabel="reward model's score r_φ", title="what PPO climbs")
    axes[1].legend()
    return fig


@themed
def plot_displacement(steps, chosen, rejected, ches=None) -> Figure:
    """Likelihood displacement (notebook 07): each tracked pair's change of log π(y_w) and
    log π(y_l) since π_ref, (evaluations × pairs) arrays, thin, with their mean; with ``ches``
    (pairs,), a third panel of CHES against the final change of log π(y_w)."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    fig, axes = _figure(2 if ches is None else 3, width=4.0, height=3.2)
    sides = ((chosen, "y_w", "chosen", "C0"), (rejected, "y_l", "rejected", "C3"))
    for ax, (values, y, side, colour) in zip(axes, sides):
        ax.plot(steps, values, color="grey", lw=0.5, alpha=0.3)
        ax.plot(steps, values.mean(1), color=colour, lw=2, label="mean")
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="DPO step", ylabel=f"log π({y}) − log π_ref({y})",
               title=f"{y} ({side}): {np.mean(values[-1] < 0):.0%} fell")
        ax.legend()
    if ches is not None:
        axes[2].scatter(ches, chosen[-1], s=6, alpha=0.5)
        axes[2].axhline(0, color="k", lw=0.8)
        axes[2].set(xlabel="CHES under π_ref", ylabel="final change of log π(y_w)",
                    title="a predictor, before training")
    return fig


@themed
def plot_kl_estimators(estimates: dict, exact_mean: float) -> Figure:
    """Histograms of per-sequence KL estimates (name → values), the exact KL's mean marked."""
    fig, axes = _figure(len(estimates), width=3.2, height=2.8)
    for ax, (name, values) in zip(axes, estimates.items()):
        values = np.asarray(values, dtype=float)
        ax.hist(values, bins=30, color="C0", alpha=0.7)
        ax.axvline(exact_mean, color="k", lw=1.5, label=f"KL {exact_mean:.2f}")
        ax.axvline(values.mean(), color="C3", ls="--", label=f"mean {values.mean():.2f}")
        ax.set(xlabel=f"{name} summed over a response", ylabel="samples", title=name)
        ax.legend()
    return fig

