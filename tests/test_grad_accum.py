"""Gradient accumulation: k micro-batches, each backward weighted by its share of the rows, give the
gradient, the loss and the metrics of one big batch (a regression model, and DPO on the tiny GPT-2)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dpo_edu import training
from dpo_edu.dpo import DPOConfig, precompute_reference_logps, train_dpo
from dpo_edu.training import Batch, TrainConfig, accumulate_gradients


def _regression_step(model):
    def step_fn(items):
        x = torch.tensor([[a, b] for a, b, _ in items])
        y = torch.tensor([t for _, _, t in items])
        error = model(x).squeeze(-1) - y
        return (error**2).mean(), {"mean_error": error.mean().item()}

    return step_fn


@pytest.mark.parametrize("micro_batches", [2, 3, 7])
def test_micro_batches_give_the_big_batch_gradient(micro_batches, one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    items = [(float(i), float(i % 3), 2.0 * i - 1.0) for i in range(7)]  # 7 rows: uneven parts when k = 2, 3
    batch = Batch(step=0, epoch=0, index=0, rows=list(range(7)), items=items)
    grads, results = {}, {}
    for k in (1, micro_batches):
        model.zero_grad(set_to_none=True)
        results[k] = accumulate_gradients(_regression_step(model), batch, k)
        grads[k] = [p.grad.clone() for p in model.parameters()]
    for big, accumulated in zip(grads[1], grads[micro_batches]):
        torch.testing.assert_close(accumulated, big, atol=1e-5, rtol=1e-5)
    assert results[micro_batches][0] == pytest.approx(results[1][0], rel=1e-6)  # the batch's mean loss
    assert results[micro_batches][1]["mean_error"] == pytest.approx(results[1][1]["mean_error"], rel=1e-5)


def test_accumulated_dpo_training_follows_the_big_batch_run(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    pairs = [{"prompt": p, "chosen": " great fun" * (1 + i % 3), "rejected": " dull" * (1 + i % 2)}
             for i, p in enumerate(["The movie was", "I", "What a", "Acting"] * 3)]
    base = dict(lr=1e-3, batch_size=6, steps=3, max_length=48, progress=False, grad_clip=None)
    prepared, _ = precompute_reference_logps(ref, tokenizer, pairs, DPOConfig(**base), verbose=False)
    runs, grads = {}, {}
    for k in (1, 3):
        policy = copy.deepcopy(ref)

        def keep(step, row, policy=policy, k=k):  # after the last step, .grad still holds its gradient
            grads[k] = {name: p.grad.clone() for name, p in policy.named_parameters()}

        _, runs[k] = train_dpo(policy, tokenizer, prepared, DPOConfig(**base, grad_accum_steps=k), callback=keep)
    for name in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
        for big, accumulated in zip(runs[1], runs[3]):
            assert accumulated[name] == pytest.approx(big[name], rel=1e-4, abs=1e-6), name
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[3][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_grad_accum_steps_is_checked():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match=r"grad_accum_steps \(8\) must be ≤ batch_size \(4\)"):
        TrainConfig(batch_size=4, grad_accum_steps=8)
    assert training.TrainConfig().grad_accum_steps == 1
