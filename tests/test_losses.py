"""Tests for dpo_edu.losses: DPO / cDPO / IPO / hinge and the Bradley–Terry loss.

Expected numbers are written out in plain Python ``math`` on a small batch, never via torch.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_edu import losses


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z))


# A batch of three pairs, summed response log-probs.
PC = [-1.0, -2.0, -3.0]  # policy, chosen
PR = [-2.0, -1.0, -4.0]  # policy, rejected
RC = [-1.5, -1.5, -3.5]  # reference, chosen
RR = [-1.0, -1.5, -3.0]  # reference, rejected
BETA = 0.1
# Worked by hand: chosen log-ratios 0.5, −0.5, 0.5; rejected −1.0, 0.5, −1.0; u = 1.5, −1.0, 1.5.
U = [1.5, -1.0, 1.5]


def _batch(requires_grad: bool = False):
    pc = torch.tensor(PC, dtype=torch.float64, requires_grad=requires_grad)
    pr = torch.tensor(PR, dtype=torch.float64, requires_grad=requires_grad)
    return pc, pr, torch.tensor(RC, dtype=torch.float64), torch.tensor(RR, dtype=torch.float64)


def test_hand_worked_log_ratio_differences():
    """The batch's u = (π_c − ref_c) − (π_r − ref_r) worked by hand is right (guards the constants below)."""
    assert [(a - b) - (c - d) for a, b, c, d in zip(PC, RC, PR, RR)] == U


# --------------------------------------------------------------------------- values at zero margin


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 3.0])
def test_losses_at_policy_equal_reference(beta):
    """Policy = reference: sigmoid gives log 2, IPO (1/(2β))², hinge 1, cDPO log 2 (any ε), metrics zero."""
    logps = torch.tensor([-3.0, -7.5, -0.2, -12.0], dtype=torch.float64)
    other = torch.tensor([-4.0, -1.5, -2.2, -10.0], dtype=torch.float64)
    args = (logps, other, logps.clone(), other.clone(), beta)
    loss, metrics = losses.dpo_loss(*args)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-14)
    assert losses.dpo_loss(*args, loss_type="ipo")[0].item() == pytest.approx((1 / (2 * beta)) ** 2, rel=1e-14)
    assert losses.dpo_loss(*args, loss_type="hinge")[0].item() == pytest.approx(1.0, rel=1e-14)
    assert losses.dpo_loss(*args, label_smoothing=0.3)[0].item() == pytest.approx(math.log(2), rel=1e-14)
    assert metrics["rewards/chosen"] == metrics["rewards/rejected"] == metrics["rewards/margins"] == 0.0
    assert metrics["rewards/accuracies"] == 0.0  # a tie is not a correct ordering (strict >)


# --------------------------------------------------------------------------- each variant by hand


def test_sigmoid_loss_hand_value():
    """Sigmoid DPO: mean −log σ(β u) over the batch."""
    expected = sum(-_log_sigmoid(BETA * u) for u in U) / 3
    loss, _ = losses.dpo_loss(*_batch(), BETA)
    assert loss.item() == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.49])
def test_cdpo_loss_hand_value(eps):
    """cDPO: mean of −(1 − ε) log σ(h) − ε log σ(−h), h = β u."""
    expected = sum(-(1 - eps) * _log_sigmoid(BETA * u) - eps * _log_sigmoid(-BETA * u) for u in U) / 3
    loss, _ = losses.dpo_loss(*_batch(), BETA, label_smoothing=eps)
    assert loss.item() == pytest.approx(expected, rel=1e-14)


def test_ipo_loss_hand_value():
    """IPO: mean (u − 1/(2β))² — with β = 0.1 the target margin is 5."""
    expected = ((1.5 - 5) ** 2 + (-1.0 - 5) ** 2 + (1.5 - 5) ** 2) / 3  # = (12.25 + 36 + 12.25)/3
    loss, _ = losses.dpo_loss(*_batch(), BETA, loss_type="ipo")
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(20.1666666666666, rel=1e-12)


def test_hinge_loss_hand_value():
    """Hinge: mean max(0, 1 − β u); with β = 2 the first and last pairs are past the margin (loss 0)."""
    beta = 2.0
    expected = (max(0.0, 1 - 2 * 1.5) + max(0.0, 1 - 2 * -1.0) + max(0.0, 1 - 2 * 1.5)) / 3  # = 3/3
    loss, _ = losses.dpo_loss(*_batch(), beta, loss_type="hinge")
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    assert expected == 1.0


def test_sigmoid_loss_is_bradley_terry_on_implicit_rewards():
    """DPO's loss is the Bradley–Terry loss (paper Eq. 2) with r̂ = β log π/π_ref plugged in (Eq. 7)."""
    pc, pr, rc, rr = _batch()
    dpo, _ = losses.dpo_loss(pc, pr, rc, rr, BETA)
    bt = losses.bradley_terry_loss(BETA * (pc - rc), BETA * (pr - rr))
    assert dpo.item() == pytest.approx(bt.item(), rel=1e-14)


def test_bradley_terry_loss_hand_value():
    """Bradley–Terry reward loss: mean −log σ(r_w − r_l)."""
    chosen = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    rejected = torch.tensor([0.0, 2.0, -0.5], dtype=torch.float64)
    expected = (-_log_sigmoid(1.0) - _log_sigmoid(-2.0) - _log_sigmoid(0.0)) / 3
    assert losses.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match=r"chosen_rewards \(3,\).*rejected_rewards \(2,\)"):
        losses.bradley_terry_loss(chosen, rejected[:2])


# --------------------------------------------------------------------------- metrics


def test_metrics_names_and_values():
    """TRL-named metrics: β-scaled mean log-ratios, their margin, ordering accuracy, mean policy log-probs."""
    _, metrics = losses.dpo_loss(*_batch(), BETA)
    assert set(metrics) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    }
    chosen = [BETA * (p - r) for p, r in zip(PC, RC)]  # 0.05, −0.05, 0.05
    rejected = [BETA * (p - r) for p, r in zip(PR, RR)]  # −0.1, 0.05, −0.1
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3, rel=1e-12)
    assert metrics["rewards/rejected"] == pytest.approx(sum(rejected) / 3, rel=1e-12)
    assert metrics["rewards/margins"] == pytest.approx(BETA * sum(U) / 3, rel=1e-12)
    assert metrics["rewards/accuracies"] == pytest.approx(2 / 3)
    assert metrics["logps/chosen"] == pytest.approx(-2.0)
    assert metrics["logps/rejected"] == pytest.approx(-7 / 3)
    assert all(isinstance(v, float) for v in metrics.values())


# --------------------------------------------------------------------------- gradient (paper §4)


def test_sigmoid_gradient_matches_paper_section_4_formula():
    """∂L/∂log π(y_w) = −β σ(r̂_l − r̂_w)/N and ∂L/∂log π(y_l) = +β σ(r̂_l − r̂_w)/N (not Eq. 21's σ(r̂_w − r̂_l))."""
    pc, pr, rc, rr = _batch(requires_grad=True)
    loss, _ = losses.dpo_loss(pc, pr, rc, rr, BETA)
    loss.backward()
    n = 3
    by_hand = [BETA * _sigmoid(-BETA * u) / n for u in U]  # σ(r̂_l − r̂_w) = σ(−β u)
    assert pc.grad.tolist() == pytest.approx([-g for g in by_hand], rel=1e-12)
    assert pr.grad.tolist() == pytest.approx(by_hand, rel=1e-12)

    implicit_chosen, implicit_rejected = BETA * (pc.detach() - rc), BETA * (pr.detach() - rr)
    weight = losses.dpo_gradient_weight(implicit_chosen, implicit_rejected)
    torch.testing.assert_close(pc.grad, -BETA * weight / n, rtol=1e-12, atol=0)
    torch.testing.assert_close(pr.grad, BETA * weight / n, rtol=1e-12, atol=0)

    # The appendix's Eq. 21 swaps y_w and y_l inside σ: it disagrees wherever the margin is nonzero.
    eq21 = torch.sigmoid(implicit_chosen - implicit_rejected)
    assert not torch.allclose(pc.grad, -BETA * eq21 / n, rtol=1e-3, atol=0)
    assert (pc.grad - (-BETA * eq21 / n)).abs().min() > 1e-4


def test_dpo_gradient_weight_hand_values():
    """σ(r̂_l − r̂_w): ½ on a tie, large when the pair is ordered wrongly, small when right."""
    chosen = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    expected = [0.5, _sigmoid(-2.0), _sigmoid(2.0)]
    assert losses.dpo_gradient_weight(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-14)


def test_cdpo_gradient_hand_value():
    """cDPO's gradient w.r.t. log π(y_w) is −β/N [(1 − ε) σ(−h) − ε σ(h)]: it vanishes at σ(h) = 1 − ε."""
    eps = 0.2
    pc, pr, rc, rr = _batch(requires_grad=True)
    losses.dpo_loss(pc, pr, rc, rr, BETA, label_smoothing=eps)[0].backward()
    expected = [-BETA / 3 * ((1 - eps) * _sigmoid(-BETA * u) - eps * _sigmoid(BETA * u)) for u in U]
    assert pc.grad.tolist() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_beta_raises(beta):
    """β must be a finite number > 0; the error names beta."""
    with pytest.raises(ValueError, match=r"^beta must be a finite number > 0"):
        losses.dpo_loss(*_batch(), beta)


def test_non_finite_input_raises_naming_the_tensor_and_index():
    """A NaN or −inf log-prob raises, naming which argument and where."""
    pc, pr, rc, rr = _batch()
    pr[1] = float("nan")
    with pytest.raises(ValueError, match=r"policy_rejected_logps has a non-finite value nan at index \(1,\)"):
        losses.dpo_loss(pc, pr, rc, rr, BETA)
    pc, pr, rc, rr = _batch()
    rc[2] = -float("inf")
    with pytest.raises(ValueError, match=r"ref_chosen_logps has a non-finite value -inf at index \(2,\)"):
        losses.dpo_loss(pc, pr, rc, rr, BETA)


def test_shape_mismatch_raises_naming_the_tensor():
    """Tensors of different lengths raise, listing each argument with its shape."""
    pc, pr, rc, rr = _batch()
    with pytest.raises(ValueError, match=r"shapes must match.*ref_rejected_logps \(2,\)"):
        losses.dpo_loss(pc, pr, rc, rr[:2], BETA)


def test_bad_loss_type_raises():
    """An unknown loss_type raises, naming loss_type and the choices."""
    with pytest.raises(ValueError, match=r"loss_type must be one of \('sigmoid', 'ipo', 'hinge'\), got 'dpo'"):
        losses.dpo_loss(*_batch(), BETA, loss_type="dpo")


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.9, float("nan")])
def test_label_smoothing_out_of_range_raises(eps):
    """label_smoothing must lie in [0, 0.5); the error names label_smoothing."""
    with pytest.raises(ValueError, match=r"^label_smoothing must be in \[0, 0\.5\)"):
        losses.dpo_loss(*_batch(), BETA, label_smoothing=eps)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_only_with_sigmoid(loss_type):
    """label_smoothing with IPO or hinge is refused rather than silently ignored."""
    with pytest.raises(ValueError, match=rf"label_smoothing applies to the sigmoid loss only, not '{loss_type}'"):
        losses.dpo_loss(*_batch(), BETA, loss_type=loss_type, label_smoothing=0.1)


def test_the_losses_name_a_nan_an_empty_batch_and_mismatched_shapes():
    """Issue 15: bradley_terry_loss(NaN) and ppo_policy_loss(NaN) returned nan, dpo_loss on empty tensors nan,
    dpo_gradient_weight a raw torch error."""
    from dpo_edu.losses import bradley_terry_loss, dpo_gradient_weight, dpo_loss, ppo_policy_loss, ppo_value_loss

    with pytest.raises(ValueError, match=r"rejected_rewards has a non-finite value nan at index \(1,\)"):
        bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="chosen_rewards is empty"):
        bradley_terry_loss(torch.tensor([]), torch.tensor([]))
    empty = torch.tensor([])
    with pytest.raises(ValueError, match=r"policy_chosen_logps is empty \(shape \(0,\)\)"):
        dpo_loss(empty, empty, empty, empty, beta=0.1)
    with pytest.raises(ValueError, match="shapes must match"):
        dpo_gradient_weight(torch.zeros(3), torch.zeros(2))
    logps, mask = torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 0, 0]])
    advantages = torch.tensor([[1.0, 1.0, math.nan], [1.0, math.nan, math.nan]])  # NaN only where masked out
    loss, _ = ppo_policy_loss(logps, logps, advantages, mask)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"advantages has a non-finite value nan at index \(0, 2\)"):
        ppo_policy_loss(logps, logps, advantages, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"returns has a non-finite value inf at index \(0, 0\)"):
        ppo_value_loss(logps, logps, torch.full((2, 3), math.inf), mask)
