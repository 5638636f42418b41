"""The cost meter counts the tokens each forward pass reads, and which of them are backpropagated."""

import copy

import torch

from dpo_edu import models
from dpo_edu.cost import CostMeter


def test_counts_forward_and_backward_tokens(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    policy = copy.deepcopy(policy)
    batch = models.encode_pairs(tokenizer, ["The film", "A"], [" was fine", " mess"])
    tokens = batch["input_ids"].numel()
    with CostMeter(policy) as cost:
        with torch.no_grad():
            models.sequence_logps(policy, **batch)  # forward only
        models.sequence_logps(policy, **batch).sum().backward()  # forward + backward
    summary = cost.summary()
    assert summary["forward_tokens"] == 2 * tokens and summary["backward_tokens"] == tokens
    # Two tiny passes can take under 5 ms on a fast machine, so the rounded summary may say 0.0 s.
    assert cost.seconds > 0 and summary["seconds"] == round(cost.seconds, 2)
    assert summary["peak_memory_mb"] > 10


def test_sampling_with_the_kv_cache_counts_one_token_per_row_per_step(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    prompts = ["The film", "A good"]
    width = models.encode_pairs(tokenizer, prompts, [[], []])["input_ids"].shape[1]
    with CostMeter(policy) as cost:
        _, ids, mask = models.generate(policy, tokenizer, prompts, max_new_tokens=5, seed=0, return_ids=True)
    steps = int(mask.sum(0).gt(0).sum())  # sampling stops early only when every row has stopped
    assert cost.forward_tokens == 2 * width + 2 * (steps - 1) and cost.backward_tokens == 0


def test_a_meter_can_be_entered_twice(tiny_lm):
    policy, tokenizer = tiny_lm
    meter = CostMeter(policy)
    batch = models.encode_pairs(tokenizer, ["x"], [" y"])
    for _ in range(2):
        with meter, torch.no_grad():
            models.sequence_logps(policy, **batch)
    assert meter.forward_tokens == 2 * batch["input_ids"].numel()


def test_counts_a_trainer_that_calls_the_transformer_body_directly(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    batch = models.encode_pairs(tokenizer, ["The film"], [" was fine"])
    with CostMeter(policy) as cost, torch.no_grad():
        policy.base_model(input_ids=batch["input_ids"])  # as dpo.response_logps does
    assert cost.forward_tokens == batch["input_ids"].numel()
