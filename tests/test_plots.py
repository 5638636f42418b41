"""The figures are pure functions of their inputs: check what they draw, not how it looks."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from dpo_edu import bradley_terry, plots, toy


def test_bt_recovery_plots_centred_rewards_against_fit():
    recovery = bradley_terry.recovery_experiment(5, 300, seed=1)
    fig = plots.plot_bt_recovery(recovery)
    points = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], (recovery.true - recovery.true.mean()).numpy())
    np.testing.assert_allclose(points[:, 1], recovery.fitted.numpy())
    assert "300 comparisons" in fig.axes[0].get_title()


def test_error_curve_reference_line_falls_as_one_over_sqrt_n():
    fig = plots.plot_bt_error_curve([100, 400], [0.2, 0.1])
    reference = fig.axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(reference, [0.2, 0.1])  # 0.2·√(100/400)


def test_optimal_policy_bars_are_pi_ref_and_pi_star():
    bandit = toy.random_bandit(1, 4, seed=2)
    fig = plots.plot_optimal_policy(bandit.ref[0], bandit.reward[0], 0.5, torch.logspace(-1, 1, 5, dtype=torch.float64))
    left = fig.axes[0]
    heights = [patch.get_height() for patch in left.patches]
    pi_star = toy.optimal_policy(bandit.ref, bandit.reward, 0.5)[0]
    np.testing.assert_allclose(heights, np.concatenate([bandit.ref[0].numpy(), pi_star.numpy()]))
    frontier = [ax for ax in fig.axes if ax.get_title() == "The reward–KL frontier"][0]
    marker = frontier.lines[1]
    assert marker.get_xdata()[0] == pytest.approx(toy.kl_divergence(pi_star[None], bandit.ref).item())


def test_dpo_loss_marks_the_gradient_weight_at_the_margin():
    fig = plots.plot_dpo_loss(margin=2.0, label_smoothing=0.1)
    weight_ax = fig.axes[1]
    assert weight_ax.lines[2].get_ydata()[0] == pytest.approx(1 / (1 + np.exp(2.0)))
    h, dpo = fig.axes[0].lines[0].get_data()
    np.testing.assert_allclose(dpo, np.log1p(np.exp(-h)))  # −log σ(h)


@pytest.mark.parametrize("log_y", [True, False])
def test_convergence_draws_one_curve_per_run(log_y):
    fig = plots.plot_convergence({"a": [1.0, 0.1], "b": [2.0, 0.2, 0.02]}, "error", "t", log_y=log_y)
    assert isinstance(fig, Figure)
    assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [2, 3]
    assert fig.axes[0].get_yscale() == ("log" if log_y else "linear")


def test_implicit_reward_one_line_per_prompt():
    reward = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    fig = plots.plot_implicit_reward(reward, reward - 3)
    assert len(fig.axes[0].lines) == 2


def test_training_curves_skip_rows_without_the_metric():
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "eval_loss": 0.7}]
    fig = plots.plot_training_curves({"SFT": rows}, [["loss", "eval_loss"]])
    lines = fig.axes[0].lines
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [2]]


def test_moving_average_is_the_trailing_mean():
    values = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    expected = [4.0, 3.0, 4.0, 8 / 3, 14 / 3]  # the mean of up to 3 values ending at each point
    np.testing.assert_allclose(plots.moving_average(values, 3), expected)
    np.testing.assert_allclose(plots.moving_average(values, 1), values)


def test_long_curves_are_smoothed_and_a_run_keeps_its_colour():
    rng = np.random.default_rng(0)
    rows = [{"step": step, "logps/chosen": -10 + rng.normal(), "logps/rejected": -12 + rng.normal()}
            for step in range(1, 41)]
    runs = {"DPO β=0.1": rows, "DPO β=1": rows[:10]}
    fig = plots.plot_training_curves(runs, [["logps/chosen", "logps/rejected"]], smooth=5)
    raw_chosen, mean_chosen, raw_rejected, mean_rejected, short_chosen, short_rejected = fig.axes[0].lines
    chosen = [row["logps/chosen"] for row in rows]
    np.testing.assert_allclose(raw_chosen.get_ydata(), chosen)
    assert raw_chosen.get_alpha() < 0.5 and mean_chosen.get_alpha() is None
    np.testing.assert_allclose(mean_chosen.get_ydata()[4:], np.convolve(chosen, np.ones(5) / 5, mode="valid"))
    assert mean_chosen.get_color() == mean_rejected.get_color() != short_chosen.get_color()
    assert (mean_chosen.get_linestyle(), mean_rejected.get_linestyle()) == ("-", "--")
    assert len(short_chosen.get_xdata()) == 10 and short_chosen.get_marker() == "."  # short: raw, with markers
    # the panel's legend names its metrics' line styles; the next cell names the runs' colours
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["logps/chosen", "logps/rejected"]
    runs_legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in runs_legend.get_texts()] == ["DPO β=0.1", "DPO β=1"]
    assert [line.get_color() for line in runs_legend.get_lines()] == [mean_chosen.get_color(), short_chosen.get_color()]
    assert fig.get_supxlabel() == "Faint: every step; solid: the mean of the last 5 steps."
    unsmoothed = plots.plot_training_curves(runs, [["logps/chosen"]], smooth=0)
    assert len(unsmoothed.axes[0].lines) == 2 and unsmoothed.get_supxlabel() == ""


NOTEBOOK_05_DASHBOARD = [["eval/reward"], ["eval/kl"], ["loss", "loss/policy"],
                         ["rewards/margins", "rewards/accuracies"], ["logps/chosen", "logps/rejected"]]


def _dashboard_rows(evals=3, steps=36):
    """Two settings as notebook 05's dashboard gets them: every step's training metrics and, every
    ``steps / evals`` steps, an evaluation; two seeds of one setting under one name, one after the other."""
    def run(offset):
        return [{"step": s, "loss": 0.7 - s / 100 + offset, "rewards/margins": s / 10, "rewards/accuracies": 0.6,
                 "logps/chosen": -40.0, "logps/rejected": -42.0 - s / 10,
                 **({"eval/reward": 0.5 + s / 100 + offset, "eval/kl": s / 5} if s % (steps // evals) == 0 else {})}
                for s in range(1, steps + 1)]
    return {"DPO β=0.1": run(0.0) + run(0.01), "DPO β=1": run(0.1)}


def test_training_curves_are_a_grid_that_reads_at_a_laptops_width():
    """Issue 16: notebook 05's five panels were one row 20 inches wide, shown ~1,000 px wide with legends ~5 px
    tall. Now rows of at most three (the runs' legend in the spare cell), 100 px an inch, ≤ 1,000 px wide,
    and a y label in words on every panel."""
    fig = plots.plot_training_curves(_dashboard_rows(), NOTEBOOK_05_DASHBOARD)
    panels, legend = fig.axes[:5], fig.axes[5]
    assert len(fig.axes) == 6
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes} == {(2, 3)}  # 2 rows × 3 columns
    assert fig.get_size_inches()[0] * fig.dpi <= 1000 and fig.dpi == plots.THEME["figure.dpi"]
    assert [ax.get_ylabel() for ax in panels] == ["ground-truth reward", "KL(π ‖ π_ref), nats", "loss",
                                                 "reward margin / accuracy", "log π(y | x), summed"]
    assert not legend.axison and len(legend.get_legend().get_texts()) == 2
    one_run = plots.plot_training_curves({"SFT": _dashboard_rows()["DPO β=1"]}, [["loss"], ["x"], ["y"], ["z"]])
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in one_run.axes} == {(2, 2)}  # 4 panels: 2 × 2
    assert [ax.get_ylabel() for ax in one_run.axes] == ["loss", "x", "y", "z"]  # unknown metrics: their names


def test_training_curves_draw_every_evaluation_and_break_between_seeds():
    """Every evaluation row is a point; a setting's second seed starts a new piece of the same line (a NaN
    between), not a stroke back from its last step to step 1."""
    runs = _dashboard_rows()
    fig = plots.plot_training_curves(runs, NOTEBOOK_05_DASHBOARD)
    seeds, one_seed = fig.axes[0].lines
    evals = [(row["step"], row["eval/reward"]) for row in runs["DPO β=0.1"] if "eval/reward" in row]
    assert len(evals) == 6 and seeds.get_marker() == "."
    x, y = seeds.get_data()
    assert np.isnan(x[3]) and np.isnan(y[3])
    np.testing.assert_allclose(np.delete(seeds.get_xydata(), 3, axis=0), evals)
    assert len(one_seed.get_xdata()) == 3


def test_every_figure_is_drawn_in_the_course_theme_without_touching_pyplot():
    before = dict(matplotlib.rcParams)
    assert all(hasattr(f, "__wrapped__") for name, f in vars(plots).items() if name.startswith("plot_"))
    with matplotlib.rc_context({"legend.fontsize": 5, "xtick.labelsize": 5, "figure.dpi": 50}):
        fig = plots.plot_training_curves({"SFT": [{"step": 1, "loss": 1.0, "eval_loss": 1.2}]},
                                         [["loss", "eval_loss"]], caption="Drawn from the saved metrics")
    ax = fig.axes[0]
    assert fig.dpi == 100 and ax.get_legend().get_texts()[0].get_fontsize() == plots.THEME["legend.fontsize"]
    assert ax.xaxis.get_major_ticks()[0].label1.get_fontsize() == plots.THEME["xtick.labelsize"]
    assert ax.yaxis.label.get_fontsize() == plots.THEME["axes.labelsize"]
    assert fig.get_supxlabel() == "Drawn from the saved metrics."  # the caption, under the panels
    assert fig._supxlabel.get_fontsize() == plots.CAPTION_STYLE["fontsize"]
    assert dict(matplotlib.rcParams) == before


def test_prompt_samples_draw_the_reward_model_centred_as_points():
    """Issue 16: r_φ is defined up to a shift (notebook 01), so it is not drawn as bars from 0: as points,
    minus their mean over the completions, on an axis symmetric about 0 that says so."""
    scores = [2.0, 3.0, 1.0, 6.0]  # mean 3
    fig = plots.plot_prompt_samples("The film", [0.1, 0.9, 0.5, 0.3], model_scores=scores)
    truth, twin = fig.axes
    np.testing.assert_allclose([p.get_height() for p in truth.patches], [0.1, 0.9, 0.5, 0.3])
    assert truth.get_ylim() == (0, 1) and not twin.patches
    points = [line for line in twin.lines if line.get_marker() == "D"][0]
    np.testing.assert_allclose(points.get_xydata(), [[0, -1.0], [1, 0.0], [2, -2.0], [3, 3.0]])
    low, high = twin.get_ylim()
    assert low == -high and high >= 3.0 and "− its mean" in twin.get_ylabel()
    assert len(plots.plot_prompt_samples("The film", [0.5, 0.5]).axes) == 1
    plots.plot_prompt_samples("The film", [0.5, 0.5], model_scores=[1.0, 1.0])  # equal scores: still an axis


def _study(points, selected, rows, reference=0.5):
    """A study_json-shaped dict: report points, the chosen frontier points and the table's rows."""
    return {"preset": "ci", "reference": {"reward": reference}, "points": points,
            "table": {"selected": selected, "rows": rows, "budgets": sorted({r["budget"] for r in rows})}}


STUDY = _study(
    points=[{"method": "DPO", "setting": "β=0.1", "seed": s, "step": 5, "kl": 1.0 + s, "reward": 0.6 + s / 10}
            for s in (0, 1)] + [{"method": "PPO", "setting": "t", "seed": 0, "step": 2, "kl": 3.0, "reward": 0.8}],
    selected={"DPO": [{"setting": "β=0.1", "step": 5, "report_kl": 1.5, "report_reward": 0.65}],
              "PPO": [{"setting": "t", "step": 2, "report_kl": 3.0, "report_reward": 0.8}]},
    rows=[{"method": "DPO", "budget": 1.0, "value": 0.6, "low": 0.55, "high": 0.66, "status": "ok"},
          {"method": "PPO", "budget": 1.0, "value": 0.59, "low": 0.5, "high": 0.7, "status": "ok"},
          {"method": "DPO", "budget": 2.0, "value": None, "low": None, "high": None, "status": "not reached"},
          {"method": "PPO", "budget": 2.0, "value": 0.66, "low": None, "high": None,
           "status": "interval undetermined"}])


def test_study_plot_draws_each_frontier_from_pi_ref_its_cloud_and_its_intervals():
    fig = plots.plot_study(STUDY, shipped=STUDY, budget=2.0)
    ax = fig.axes[0]
    solid = {line.get_label(): line for line in ax.lines if line.get_linestyle() == "-"}
    np.testing.assert_allclose(solid["DPO"].get_xydata(), [[0.0, 0.5], [1.5, 0.65]])  # from π_ref at KL 0
    np.testing.assert_allclose(solid["PPO"].get_xydata(), [[0.0, 0.5], [3.0, 0.8]])
    dashed = [line for line in ax.lines if line.get_linestyle() == "--" and line.get_xdata()[0] == 0.0]
    assert len(dashed) == 2 and [line.get_label() for line in dashed][0] == "dashed: the ci study"
    clouds = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 1]
    assert any(np.allclose(points, [[1.5, 0.65]]) for points in clouds)  # DPO's two seeds averaged into one
    assert any(line.get_xdata()[0] == 2.0 and line.get_linestyle() == "--" and len(line.get_xdata()) == 2
               for line in ax.lines)  # the budget's marker
    one = plots.plot_study(STUDY, methods=["PPO"])
    assert {line.get_label() for line in one.axes[0].lines if line.get_linestyle() == "-"} == {"PPO"}


def test_overoptimisation_plots_truth_and_reward_model_score_along_the_kl():
    runs = [{"setting": "t3", "metrics": [{"step": s, "eval/kl": k + seed, "eval/reward": r, "eval/rm_score": m}
                                          for s, k, r, m in ((1, 1.0, 0.6, 0.1), (2, 3.0, 0.55, 0.9))]}
            for seed in (0, 1)]
    fig = plots.plot_overoptimisation(runs)
    truth, score = (ax.lines[0].get_xydata() for ax in fig.axes)
    np.testing.assert_allclose(truth, [[1.5, 0.6], [3.5, 0.55]])  # the two seeds averaged at each step
    np.testing.assert_allclose(score, [[1.5, 0.1], [3.5, 0.9]])


def test_displacement_draws_every_pair_its_mean_and_the_predictor():
    chosen = np.array([[0.0, 0.0, 0.0], [-1.0, 0.5, -2.0]])  # (evaluations, pairs)
    rejected = np.array([[0.0, 0.0, 0.0], [-3.0, -1.0, -4.0]])
    fig = plots.plot_displacement([0, 10], chosen, rejected, ches=[1.0, -1.0, 2.0])
    assert len(fig.axes) == 3
    mean = [line for line in fig.axes[0].lines if line.get_label() == "mean"][0]
    np.testing.assert_allclose(mean.get_ydata(), [0.0, -2.5 / 3])
    assert "67% fell" in fig.axes[0].get_title() and "100% fell" in fig.axes[1].get_title()
    np.testing.assert_allclose(fig.axes[2].collections[0].get_offsets(), [[1.0, -1.0], [-1.0, 0.5], [2.0, -2.0]])
    assert len(plots.plot_displacement([0, 10], chosen, rejected).axes) == 2


def test_kl_estimators_histograms_mark_the_exact_mean_and_each_mean():
    fig = plots.plot_kl_estimators({"k1": [1.0, -1.0, 3.0], "k3": [0.5, 1.5, 1.0]}, exact_mean=1.0)
    assert [ax.get_title() for ax in fig.axes] == ["k1", "k3"]
    assert [line.get_xdata()[0] for line in fig.axes[0].lines] == [1.0, 1.0]  # the KL, then k1's mean
