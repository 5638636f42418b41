"""Explorers: moving a slider changes the readout and redraws the figure."""

from dpo_edu import toy, widgets


def controls_readout(box):
    return box.children[0].children, box.children[1]


def test_optimal_policy_readout_follows_beta():
    bandit = toy.random_bandit(1, 5, seed=3)
    box = widgets.explore_optimal_policy(bandit.ref[0], bandit.reward[0], beta=1.0)
    (beta,), readout = controls_readout(box)
    assert readout.value.startswith("β = 1.00")
    assert widgets.READOUT_CLASS in readout._dom_classes
    beta.value = 10.0
    kl_at_10 = toy.kl_divergence(toy.optimal_policy(bandit.ref, bandit.reward, 10.0), bandit.ref).item()
    assert readout.value.startswith("β = 10.00") and f"KL(π*‖π_ref) = {kl_at_10:.3f}" in readout.value


def test_bradley_terry_readout_follows_both_sliders():
    box = widgets.explore_bradley_terry(n_items=5, counts=(50, 5000))
    (count, scale), readout = controls_readout(box)
    assert readout.value.startswith("n = 5,000 comparisons")  # starts mid-range
    count.value = 50
    assert readout.value.startswith("n = 50 comparisons")
    scale.value = 3.0
    assert "reward scale 3.00" in readout.value


def test_dpo_loss_readout_shows_loss_and_weight():
    box = widgets.explore_dpo_loss(margin=0.0)
    (margin, _), readout = controls_readout(box)
    assert "DPO loss 0.693" in readout.value and "σ(−h) = 0.500" in readout.value
    margin.value = 2.0
    assert "σ(−h) = 0.119" in readout.value


def test_every_slider_waits_for_release():
    bandit = toy.random_bandit(1, 3, seed=0)
    for box in (widgets.explore_dpo_loss(), widgets.explore_optimal_policy(bandit.ref[0], bandit.reward[0])):
        for control in controls_readout(box)[0]:
            assert control.continuous_update is False


def test_explorer_redraws_on_change():
    calls = []

    def render(x):
        calls.append(x)
        return None, f"x = {x}"

    import ipywidgets

    slider = ipywidgets.IntSlider(value=1)
    box = widgets.explorer({"x": slider}, render)
    slider.value = 4
    assert calls == [1, 4] and box.children[1].value == "x = 4"


def test_samples_explorer_lists_completions_and_pairs():
    samples = [
        {"prompt": "The film", "completions": [" a", " b", " c", " d"], "rewards": [0.1, 0.9, 0.5, 0.5]},
        {"prompt": "I <3", "completions": [" w", " x", " y", " z"], "rewards": [0.4, 0.3, 0.2, 0.1]},
    ]
    box = widgets.explore_samples(samples)
    (prompt,), readout = controls_readout(box)
    assert "<b>The film</b>" in readout.value and "1 ≻ 0" in readout.value
    assert "2 ≻ 3" not in readout.value and "3 ≻ 2" not in readout.value  # a tie makes no pair
    prompt.value = 1
    assert "I &lt;3" in readout.value and "0 ≻ 3" in readout.value  # the prompt is HTML-escaped


def test_samples_explorer_reads_the_reward_model_minus_its_mean():
    """r_φ is defined up to a shift: the readout, like the figure, gives it minus its mean over the completions."""
    samples = [{"prompt": "The film", "completions": [" a", " b", " c"], "rewards": [0.1, 0.9, 0.5]}]
    box = widgets.explore_samples(samples, model_scores=[[4.0, 7.0, 4.0]])
    _, readout = controls_readout(box)
    assert "<th>r_φ − mean</th>" in readout.value
    assert [cell in readout.value for cell in ("<td>-1.000</td>", "<td>+2.000</td>")] == [True, True]


def test_study_explorer_reads_the_table_at_the_chosen_budget():
    from test_plots import STUDY

    box = widgets.explore_study(STUDY, STUDY)
    (show, budget), readout = controls_readout(box)
    assert readout.value == "KL 1: DPO 0.600 [0.550, 0.660]; PPO 0.590 [0.500, 0.700]"
    budget.value = 2.0
    assert readout.value == "KL 2: DPO not reached; PPO 0.660 (interval undetermined)"
    show.value = "PPO"
    assert readout.value == "KL 2: PPO 0.660 (interval undetermined)"
    assert list(show.options) == ["all methods", "DPO", "PPO"]


def test_live_curves_keep_every_run():
    from dpo_edu.live import LiveCurves

    dashboard = LiveCurves([["loss"]])
    dashboard.run("a")(1, {"loss": 1.0})
    dashboard.run("b")(1, {"loss": 2.0})
    dashboard.run("a")(2, {"loss": 0.5})
    expected = {"a": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], "b": [{"step": 1, "loss": 2.0}]}
    assert dashboard.runs == expected
    assert len(dashboard.figure().axes[0].lines) == 2


def test_live_curves_draw_every_evaluation_and_other_rows_at_most_every_few_seconds():
    """A trainer may call back every step; drawing a dashboard takes most of a second. Rows with an evaluation are
    drawn at once, others once ``every_seconds`` have passed; every row is kept either way."""
    from dpo_edu.live import LiveCurves

    dashboard = LiveCurves([["loss"], ["eval/reward"]], caption="As they train", every_seconds=3600)
    drawn = []
    dashboard.show = lambda: drawn.append(sum(map(len, dashboard.runs.values())))  # rows seen at each drawing
    callback = dashboard.run("DPO")
    for step in range(1, 7):
        callback(step, {"loss": 1.0 / step, **({"eval/reward": 0.5} if step % 3 == 0 else {})})
    assert drawn == [1, 3, 6] and len(dashboard.runs["DPO"]) == 6  # the first row, then each evaluation
    assert dashboard.figure().get_supxlabel() == "As they train."
    every_row = LiveCurves([["loss"]], every_seconds=0)
    every_row.show = lambda: drawn.append("row")
    every_row(1, {"loss": 1.0})
    every_row(2, {"loss": 0.5})
    assert drawn[-2:] == ["row", "row"]
