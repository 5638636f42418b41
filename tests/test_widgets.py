"""Explorers: moving a slider changes the readout and redraws the figure."""

import pytest

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
