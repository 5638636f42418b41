"""The cost meter counts the tokens each forward pass reads, and which of them are backpropagated."""

import copy
import gc
import time
import weakref

import torch

from dpo_edu import models, sampling
from dpo_edu.cost import CostMeter


def test_counts_forward_and_backward_tokens(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    policy = copy.deepcopy(policy)
    batch = models.encode_pairs(tokenizer, ["The film", "A"], [" was fine", " mess"])
    tokens = batch["input_ids"].numel()
    with CostMeter(policy) as cost:
        with torch.no_grad():
            assert models.response_logps(policy, batch).sequence_logps.shape == (2,)  # forward only
        models.response_logps(policy, batch).sequence_logps.sum().backward()  # forward + backward
    summary = cost.summary()
    assert summary["forward_tokens"] == 2 * tokens and summary["backward_tokens"] == tokens
    # Two tiny passes can take under 5 ms on a fast machine, so the rounded summary may say 0.0 s.
    assert cost.seconds > 0 and summary["seconds"] == round(cost.seconds, 2)
    assert summary["peak_memory_mb"] >= cost.weights_mb > 0


def test_sampling_with_the_kv_cache_counts_one_token_per_row_per_step(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    prompts = ["The film", "A good"]
    width = models.encode_pairs(tokenizer, prompts, [[], []])["input_ids"].shape[1]
    with CostMeter(policy) as cost:
        _, ids, mask = sampling.generate(policy, tokenizer, prompts, max_new_tokens=5, seed=0, return_ids=True)
    steps = int(mask.sum(0).gt(0).sum())  # sampling stops early only when every row has stopped
    assert cost.forward_tokens == 2 * width + 2 * (steps - 1) and cost.backward_tokens == 0


def test_a_meter_can_be_entered_twice(tiny_lm):
    policy, tokenizer = tiny_lm
    meter = CostMeter(policy)
    batch = models.encode_pairs(tokenizer, ["x"], [" y"])
    for _ in range(2):
        with meter, torch.no_grad():
            assert models.response_logps(policy, batch).sequence_logps.shape == (1,)
    assert meter.forward_tokens == 2 * batch["input_ids"].numel()


def test_counts_a_trainer_that_calls_the_transformer_body_directly(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    batch = models.encode_pairs(tokenizer, ["The film"], [" was fine"])
    with CostMeter(policy) as cost, torch.no_grad():
        policy.base_model(input_ids=batch["input_ids"])  # as models.response_logps does
    assert cost.forward_tokens == batch["input_ids"].numel()


def test_a_model_deleted_mid_run_is_freed_and_still_counted_until_then(tiny_lm, one_thread):
    policy, tokenizer = tiny_lm
    ref = copy.deepcopy(policy)
    alive = weakref.ref(ref)
    batch = models.encode_pairs(tokenizer, ["The film"], [" was fine"])
    with CostMeter(policy, ref) as cost, torch.no_grad():
        assert models.response_logps(ref, batch).sequence_logps.shape == (1,)
        del ref  # as dpo_run does after the reference precompute
        gc.collect()
        assert alive() is None  # the meter holds no reference of its own
        assert models.response_logps(policy, batch).sequence_logps.shape == (1,)
    assert cost.forward_tokens == 2 * batch["input_ids"].numel()


def test_cpu_models_are_measured_by_resident_memory_even_where_cuda_exists(tiny_lm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with CostMeter(tiny_lm[0]) as cost:
        held = torch.ones(100 * 2**20 // 4)  # 100 MiB, touched
        time.sleep(0.1)
    del held
    assert not cost._cuda and cost.peak_memory_mb > 90  # RSS, not a CUDA allocator that holds nothing


def test_cpu_peak_is_the_weights_plus_what_the_run_adds_not_what_the_process_held_before():
    model = torch.nn.Linear(1024, 1024)  # 1024 × 1025 float32 = 4.0 MiB
    before = torch.ones(200 * 2**20 // 4)  # 200 MiB the notebook already held: not this run's
    with CostMeter(model) as idle:
        time.sleep(0.1)
    assert idle.weights_mb == 1024 * 1025 * 4 / 2**20
    assert idle.weights_mb <= idle.peak_memory_mb < idle.weights_mb + 50
    with CostMeter(model) as busy:
        held = torch.ones(300 * 2**20 // 4)  # 300 MiB the run allocates
        time.sleep(0.1)
        del held
    assert busy.weights_mb + 280 < busy.peak_memory_mb < busy.weights_mb + 350
    del before


def test_cpu_peak_sees_memory_that_an_earlier_run_freed_and_this_one_reuses():
    def churn():  # 200 tensors of 256 KiB, 50 MiB in all: below glibc's mmap threshold, from the heap
        held = [torch.ones(64, 1024) for _ in range(200)]
        time.sleep(0.1)
        return held

    for _ in range(3):
        churn()  # freed into the heap, where the next allocation would find it without growing
    with CostMeter(torch.nn.Linear(8, 8)) as cost:
        churn()
    assert cost.peak_memory_mb > 45


def test_a_paused_block_adds_no_resident_memory_peak(tiny_lm):
    with CostMeter(tiny_lm[0]) as cost:
        baseline = cost.peak_memory_mb
        with cost.paused():
            held = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched, while paused
            time.sleep(0.2)  # several 20 ms samples
            del held
        time.sleep(0.1)
    assert cost.peak_memory_mb < baseline + 200
