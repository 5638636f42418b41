"""Sampling (sampling.py): Generation, the temperature's distribution, and generate against a no-cache loop."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dpo_edu import models, sampling
from dpo_edu.sampling import Generation

PROMPTS = ["I saw t", "I watched this film last night and", "Bad", "One of the best films I have seen"]


@pytest.fixture(scope="module")
def tiny(tiny_lm):
    """The tiny GPT-2 with its weights shaken, so that its logits are far from uniform."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)  # tiny_lm is shared: shake a copy
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # random init (std 0.02) is nearly uniform: too easy an oracle
    return model.eval(), tokenizer


def test_generation_defaults_checks_and_frozen():
    assert (Generation().max_new_tokens, Generation().temperature) == (24, 1.0)
    for bad in (dict(max_new_tokens=0), dict(max_new_tokens=2.5), dict(temperature=0.0), dict(temperature=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Generation(**bad)
    generation = Generation(max_new_tokens=8, temperature=0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        generation.temperature = 1.0
    assert dataclasses.replace(generation, temperature=1.0) == Generation(max_new_tokens=8)


def test_sampling_probs_divide_logits_by_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.bfloat16)
    for t in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits.float() / t, -1)
        torch.testing.assert_close(sampling.sampling_probs(logits, t), expected)
    assert sampling.sampling_probs(logits, 1e-3)[0, 0].item() == pytest.approx(1.0)  # T → 0+: greedy
    assert sampling.sampling_probs(logits, 1e3).max().item() == pytest.approx(0.25, abs=1e-3)  # T → ∞: uniform
    with pytest.raises(ValueError, match="temperature"):
        sampling.sampling_probs(logits, 0.0)


def test_generate_is_deterministic_for_a_seed(tiny):
    model, tok = tiny
    first = sampling.generate(model, tok, PROMPTS, max_new_tokens=8, seed=3, batch_size=2, return_ids=True)
    again = sampling.generate(model, tok, PROMPTS, max_new_tokens=8, seed=3, batch_size=2, return_ids=True)
    other = sampling.generate(model, tok, PROMPTS, max_new_tokens=8, seed=4, batch_size=2, return_ids=True)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert first[1].shape == (len(PROMPTS), 8) and len(first[0]) == len(PROMPTS)


def test_low_temperature_approaches_greedy_and_greedy_matches_a_no_cache_loop(tiny):
    model, tok = tiny
    greedy = sampling.generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0, return_ids=True)[1]
    cold = sampling.generate(model, tok, PROMPTS, max_new_tokens=6, temperature=1e-4, seed=7, return_ids=True)[1]
    assert torch.equal(greedy, cold)
    # Oracle: each prompt alone, no padding, no KV cache, argmax appended one token at a time.
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
                if ids[-1] == tok.eos_token_id:
                    break
        produced = greedy[i][: len(ids) - len(tok(prompt)["input_ids"])].tolist()
        assert produced == ids[len(tok(prompt)["input_ids"]) :]


def test_rows_stop_at_eos_and_what_follows_is_masked(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    stop_at = torch.tensor([1, 3, 99, 0])  # decoding step at which each row is forced to emit EOS
    step = {"n": 0}

    def force_eos(module, inputs, logits):  # a logits processor in a hook: row i says EOS at step stop_at[i]
        logits = logits.clone()
        logits[stop_at == step["n"], -1, tok.eos_token_id] = 1e4
        step["n"] += 1
        return logits

    model.lm_head.register_forward_hook(force_eos)
    texts, ids, mask = sampling.generate(model, tok, PROMPTS, max_new_tokens=5, seed=0, return_ids=True)
    for i, stop in enumerate(stop_at.tolist()):
        if stop < 5:
            assert ids[i, stop].item() == tok.eos_token_id
            assert mask[i, : stop + 1].tolist() == [1] * (stop + 1)  # EOS is part of the response
            assert (ids[i, stop + 1 :] == tok.pad_token_id).all() and (mask[i, stop + 1 :] == 0).all()
        else:
            assert (mask[i] == 1).all() and (ids[i] != tok.eos_token_id).all()
        assert texts[i] == tok.decode(ids[i, mask[i].bool()], skip_special_tokens=True)
        assert models.EOS_TOKEN not in texts[i] and models.PAD_TOKEN not in texts[i]
    assert texts[3] == ""


def test_generate_rejects_prompts_longer_than_the_model_reads(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="n_positions"):
        sampling.generate(model, tok, ["word " * 40], max_new_tokens=40)
    with pytest.raises(ValueError, match="temperature"):
        sampling.generate(model, tok, ["ok"], max_new_tokens=2, temperature=-1.0)
