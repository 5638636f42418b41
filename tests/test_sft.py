"""Supervised fine-tuning on a tiny GPT-2: the loss is the hand-computed one, pads never count, every
parameter learns, and an interrupted run resumes to the same numbers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dpo_edu import checkpoints, models, training
from dpo_edu.presets import PRESETS, get_preset
from dpo_edu.sft import IGNORE_INDEX, SFTConfig, collate, encode_texts, evaluate_sft, lm_loss_sum, train_sft


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def texts(short_reviews):
    return short_reviews


@pytest.fixture(scope="module")
def model_config():
    return dataclasses.replace(get_preset("ci", verbose=False).model, n_layer=1, n_embd=32, n_head=2, vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer(texts, model_config):
    return models.train_tokenizer(texts, model_config.vocab_size, model_max_length=model_config.n_positions)


@pytest.fixture
def make_model(model_config, tokenizer):
    def make(seed: int = 0, shake: float = 0.0):
        model = models.build_model(model_config, tokenizer, seed)
        if shake:  # random init (std 0.02) is nearly uniform: shake the weights so logits differ a lot
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(seed + 1)
                for p in model.parameters():
                    p.add_(shake * torch.randn_like(p))
        return model

    return make


def _config(**changes) -> SFTConfig:
    base = dict(lr=3e-3, batch_size=4, steps=6, warmup_steps=0, max_length=24, progress=False, log_every=1)
    return SFTConfig(**{**base, **changes})


def _hand_nll(model, ids: list[int]) -> tuple[float, int]:
    """Oracle: one unpadded sequence, Σ_{t ≥ 1} −log softmax(logits[t − 1])[ids[t]] and the count, float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(1, len(ids))), len(ids) - 1


# --- batches -------------------------------------------------------------------------------------------


def test_encode_appends_eos_and_cuts(tokenizer):
    short, long = encode_texts(tokenizer, ["Great film.", "word " * 50], max_length=10)
    assert short == tokenizer("Great film.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(long) == 10 and tokenizer.eos_token_id not in long  # cut short: it did not end there
    with pytest.raises(ValueError, match=r"texts\[1\] must be a non-empty string"):
        encode_texts(tokenizer, ["fine", ""], max_length=10)
    with pytest.raises(ValueError, match="max_length"):
        encode_texts(tokenizer, ["fine"], max_length=1)


def test_collate_left_pads_and_scores_neither_pads_nor_first_tokens():
    batch = collate([[5, 6, 7], [8, 9]], pad_token_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 9]]
    with pytest.raises(ValueError, match=r"sequences\[0\] has 1 token"):
        collate([[5]], pad_token_id=1)


def test_padded_batch_loss_equals_each_sequence_alone(make_model, tokenizer, texts):
    model = make_model(shake=0.3).eval()
    sequences = encode_texts(tokenizer, texts[:5], max_length=30)
    sequences[1], sequences[3] = sequences[1][:4], sequences[3][:11]  # very different lengths: lots of padding
    batch = collate(sequences, tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).sum() > 20
    with torch.no_grad():
        nll, count, _ = lm_loss_sum(model, batch)
    alone = [_hand_nll(model, seq) for seq in sequences]
    assert count == sum(n for _, n in alone)
    assert nll.item() == pytest.approx(sum(v for v, _ in alone), rel=1e-5)
    # The loss is the token-weighted mean: Σ NLL / Σ tokens, not the mean of per-sequence means.
    assert (nll / count).item() == pytest.approx(sum(v for v, _ in alone) / sum(n for _, n in alone), rel=1e-5)
    # Whatever token sits in a pad position, nothing changes: pads are masked and never scored.
    garbage = dict(batch, input_ids=torch.where(batch["attention_mask"].bool(), batch["input_ids"], 7))
    with torch.no_grad():
        assert lm_loss_sum(model, garbage)[0].item() == pytest.approx(nll.item(), rel=1e-6)


# --- training ------------------------------------------------------------------------------------------


def test_every_parameter_changes_and_the_loss_falls(make_model, tokenizer, texts):
    model = make_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, metrics = train_sft(model, tokenizer, texts[:4], _config(lr=1e-2, steps=8))  # one batch, repeated
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p), f"{name} did not change"
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < 0.8 * losses[0]
    assert math.log(len(tokenizer)) == pytest.approx(losses[0], rel=0.1)  # random init ≈ uniform over the vocab
    assert {"loss", "mean_token_accuracy", "tokens", "grad_norm", "learning_rate", "epoch"} <= set(metrics[0])
    assert all(m["tokens"] == metrics[0]["tokens"] for m in metrics)  # the same 4 reviews every step


def test_same_seed_same_metrics(make_model, tokenizer, texts):
    runs = [train_sft(make_model(), tokenizer, texts[:10], _config(steps=4))[1] for _ in range(2)]
    assert runs[0] == runs[1]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(make_model, tokenizer, texts, tmp_path):
    config = _config(steps=7, save_every=3, warmup_steps=2, batch_size=3)  # 10 texts: 4 batches per epoch
    full_model, full = train_sft(make_model(), tokenizer, texts[:10], config)

    class Interrupt(Exception):
        pass

    def stop(step, row):
        if step == 4:
            raise Interrupt  # the checkpoint holds step 3; step 4 is redone after the restart

    with pytest.raises(Interrupt):
        train_sft(make_model(), tokenizer, texts[:10], config, callback=stop, checkpoint_dir=tmp_path)
    resumed_model, resumed = train_sft(make_model(seed=5), tokenizer, texts[:10], config, checkpoint_dir=tmp_path)
    assert resumed == full  # every float of every step, exactly
    for (name, a), b in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name
    # The checkpoint holds the weights as a state_dict (no model folder): those of the finished run.
    saved = torch.load(tmp_path / "last" / checkpoints.STATE_FILE, weights_only=False)
    assert saved["step"] == 7 and not (tmp_path / "last" / "model").exists()
    assert saved["model"].keys() == full_model.state_dict().keys()
    for name, a in full_model.state_dict().items():
        assert torch.equal(saved["model"][name], a), name


def test_non_finite_loss_names_step_and_batch(make_model, tokenizer, texts):
    model = make_model()

    def poison(step, row):
        if step == 2:
            with torch.no_grad():
                model.transformer.ln_f.weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 \(epoch 0, batch 2, rows \[\d+"):
        train_sft(model, tokenizer, texts[:20], _config(steps=5), callback=poison)


def test_eval_loss_and_perplexity(make_model, tokenizer, texts):
    model = make_model()
    held_out = texts[50:60]
    before = evaluate_sft(model, tokenizer, held_out, max_length=24, batch_size=3)
    assert before["eval_perplexity"] == pytest.approx(math.exp(before["eval_loss"]))
    assert before["eval_perplexity"] == pytest.approx(len(tokenizer), rel=0.1)  # uniform: perplexity = vocab size
    _, metrics = train_sft(model, tokenizer, texts[:50], _config(steps=10, lr=1e-2, batch_size=8, eval_every=5),
                           eval_texts=held_out)
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [5, 10]
    assert evals[-1]["eval_loss"] < before["eval_loss"]
    again = evaluate_sft(model, tokenizer, held_out, max_length=24)["eval_loss"]
    assert again == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)
    # Sequences evaluated one at a time give the same token-weighted loss as batches.
    one_by_one = evaluate_sft(model, tokenizer, held_out, max_length=24, batch_size=1)["eval_loss"]
    assert one_by_one == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)


def test_train_sft_rejects_bad_setups(make_model, tokenizer, texts):
    with pytest.raises(ValueError, match=r"config.max_length \(200\) exceeds the model's n_positions \(128\)"):
        train_sft(make_model(), tokenizer, texts[:4], _config(max_length=200))
    with pytest.raises(ValueError, match="config must be an SFTConfig"):
        train_sft(make_model(), tokenizer, texts[:4], training.TrainConfig())
    with pytest.raises(ValueError, match="max_length"):
        SFTConfig(max_length=1)


def test_presets_hold_an_sft_config_that_fits_their_model():
    for preset in PRESETS.values():
        assert isinstance(preset.sft, SFTConfig)
        assert preset.sft.max_length <= preset.model.n_positions
    ci = get_preset("ci", {"sft.steps": 3, "sft.max_length": 32}, verbose=False)
    assert (ci.sft.steps, ci.sft.max_length) == (3, 32)
    assert dataclasses.replace(ci.sft, steps=PRESETS["ci"].sft.steps, max_length=PRESETS["ci"].sft.max_length) == (
        PRESETS["ci"].sft)  # nothing else changed
    with pytest.raises(ValueError, match="did you mean sft.steps"):
        get_preset("ci", {"sft.stepz": 3}, verbose=False)
    with pytest.raises(ValueError, match=r"preset field 'sft.max_length': max_length"):
        get_preset("ci", {"sft.max_length": 1}, verbose=False)
