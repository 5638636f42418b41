"""DPO on a tiny GPT-2: log 2 at the reference, every parameter learns, the reference log-probs are
computed once and never touched, one forward pass equals two, truncation is counted, a NaN names its
step, and a resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import pytest
import torch

from dpo_edu import models
from dpo_edu.dpo import (DPOConfig, collate_pairs, evaluate_pairs, pair_logps, precompute_reference_logps,
                         preference_loss, tokenize_pairs, train_dpo)
from dpo_edu.presets import PRESETS, get_preset
from dpo_edu.training import TrainConfig

PROMPTS = ["The movie was", "I", "This film is a", "Acting", "What a", "Not", "The plot", "One of the best"]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen completions praise, rejected ones pan, of random lengths."""
    rng = random.Random(seed)

    def words(pool):
        return " " + " ".join(rng.choice(pool) for _ in range(rng.randint(1, 5)))

    return [{"prompt": rng.choice(PROMPTS), "chosen": words(["great", "wonderful", "superb", "fun"]),
             "rejected": words(["awful", "boring", "dull", "bad"]), "prompt_id": i} for i in range(n)]


def _config(**changes) -> DPOConfig:
    base = dict(lr=1e-3, batch_size=4, steps=4, beta=0.1, max_length=48, progress=False, log_every=1)
    return DPOConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def prepared(tiny_lm):
    """16 pairs with their reference log-probs, computed once from the tiny GPT-2 (π_ref)."""
    ref, tokenizer = tiny_lm
    with torch.no_grad():
        pairs, report = precompute_reference_logps(ref, tokenizer, _pairs(16), _config(), batch_size=5)
    assert report.kept == 16 and not report.truncated
    return pairs


def _train(tiny_lm, pairs, config, **kwargs):
    ref, tokenizer = tiny_lm
    return train_dpo(copy.deepcopy(ref), tokenizer, pairs, config, **kwargs)  # the fixture is shared: a copy


def test_loss_is_log_2_when_the_policy_is_the_reference(tiny_lm, prepared, one_thread):
    _, metrics = _train(tiny_lm, prepared, _config(steps=1))
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # −log σ(0)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert metrics[0][name] == pytest.approx(0.0, abs=1e-5)
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate", "epoch"} <= set(metrics[0])


def test_every_parameter_changes_margins_rise_and_the_reference_stays(tiny_lm, prepared, one_thread):
    ref, _ = tiny_lm
    stored = copy.deepcopy(prepared)
    ref_weights = {name: p.detach().clone() for name, p in ref.named_parameters()}
    policy = copy.deepcopy(ref)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    policy, metrics = train_dpo(policy, tiny_lm[1], prepared, _config(lr=1e-2, steps=8, batch_size=8))
    for name, p in policy.named_parameters():
        assert not torch.equal(before[name], p), f"{name} did not change"
    margins = [m["rewards/margins"] for m in metrics]
    assert margins[-1] > margins[0] + 0.1 and metrics[-1]["loss"] < math.log(2)
    assert metrics[-1]["rewards/accuracies"] > 0.5
    assert prepared == stored  # the precomputed log π_ref are data: training never rewrites them
    for name, p in ref.named_parameters():
        assert torch.equal(ref_weights[name], p), name


def test_reference_logps_equal_sequence_logps_of_each_pair_alone(tiny_lm, prepared, one_thread):
    ref, tokenizer = tiny_lm
    for pair in prepared[:6]:
        for side in ("chosen", "rejected"):
            batch = models.encode_pairs(tokenizer, [pair["prompt"]], [pair[side]], append_eos=True)
            with torch.no_grad():
                alone = models.response_logps(ref, batch).sequence_logps.item()
            assert pair[f"ref_{side}_logps"] == pytest.approx(alone, rel=1e-6)  # float32 sums of ~40 terms
    assert prepared[3]["prompt_id"] == 3  # the record's other fields travel with it


def test_one_concatenated_pass_equals_two_separate_passes(tiny_lm, prepared, one_thread):
    ref, tokenizer = tiny_lm
    rows, _ = tokenize_pairs(tokenizer, prepared[:5], max_length=48)
    batch = collate_pairs(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 10  # chosen rows, then rejected rows
    with torch.no_grad():
        chosen, rejected, n_w, n_l = pair_logps(ref, tokenizer, rows)
        prompts = [r["prompt_ids"] for r in rows]
        for side, ours, tokens in (("chosen", chosen, n_w), ("rejected", rejected, n_l)):
            alone = models.encode_pairs(tokenizer, prompts, [r[f"{side}_ids"] for r in rows])  # left-padded prompts
            torch.testing.assert_close(ours, models.response_logps(ref, alone).sequence_logps, atol=1e-5, rtol=1e-6)
            assert tokens.tolist() == [len(r[f"{side}_ids"]) for r in rows]
        bucketed = pair_logps(ref, tokenizer, rows, buckets=3)  # rows sorted by length, three forward passes
        for ours, theirs in zip(bucketed, (chosen, rejected, n_w, n_l)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
    assert all(r["chosen_ids"][-1] == tokenizer.eos_token_id for r in rows)  # EOS closes every response


def test_truncation_and_dropped_pairs_are_counted(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    pairs = [{"prompt": "I", "chosen": " good", "rejected": " bad"},
             {"prompt": "The movie was", "chosen": " great great great great great great", "rejected": " bad"},
             {"prompt": "one two three four five six seven eight nine", "chosen": " a", "rejected": " b"}]
    prompt_len = len(tokenizer("one two three four five six seven eight nine")["input_ids"])
    rows, report = tokenize_pairs(tokenizer, pairs, max_length=prompt_len)
    assert [r["index"] for r in rows] == [0, 1] and report.skipped_rows == [2] and report.kept == 2
    assert report.truncated == {f"chosen cut to fit max_length={prompt_len} tokens": 1}
    assert all(len(r["prompt_ids"]) + len(r["chosen_ids"]) <= prompt_len for r in rows)
    assert rows[1]["chosen_ids"][-1] != tokenizer.eos_token_id  # cut: its EOS went with its end
    config = _config(max_length=prompt_len)
    out, ref_report = precompute_reference_logps(ref, tokenizer, pairs, config, verbose=False)
    assert len(out) == 2 and ref_report.skipped_rows == [2] and "kept 2 of 3" in str(ref_report)
    with pytest.raises(ValueError, match=r"pairs \[1\] do not fit config.max_length=3"):
        train_dpo(copy.deepcopy(ref), tokenizer, out, _config(max_length=3))  # not the precompute's max_length


def test_ipo_is_length_normalised_and_cdpo_smooths(one_thread):
    chosen, rejected = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -19.0]), torch.tensor([-12.5, -16.0])
    n_w, n_l = torch.tensor([4, 8]), torch.tensor([2, 5])
    beta = 0.1
    loss, metrics = preference_loss(chosen, rejected, ref_chosen, ref_rejected, n_w, n_l, _config(loss_type="ipo"))
    u = (chosen - ref_chosen) / n_w - (rejected - ref_rejected) / n_l  # average log-ratio per token
    assert loss.item() == pytest.approx(((u - 1 / (2 * beta)) ** 2).mean().item(), rel=1e-6)
    summed = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    assert metrics["rewards/margins"] == pytest.approx(summed.mean().item(), rel=1e-6)  # rewards stay summed
    smooth, _ = preference_loss(chosen, rejected, ref_chosen, ref_rejected, n_w, n_l, _config(label_smoothing=0.2))
    h = summed
    cdpo = -(0.8 * torch.nn.functional.logsigmoid(h) + 0.2 * torch.nn.functional.logsigmoid(-h)).mean()
    assert smooth.item() == pytest.approx(cdpo.item(), rel=1e-6)


def test_non_finite_loss_names_the_step_and_the_batch(tiny_lm, prepared, one_thread):
    ref, tokenizer = tiny_lm
    policy = copy.deepcopy(ref)

    def poison(step, row):
        if step == 2:
            with torch.no_grad():
                policy.transformer.ln_f.weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 \(epoch 0, batch 2, rows \[\d+"):
        train_dpo(policy, tokenizer, prepared, _config(steps=5), callback=poison)
    bad = copy.deepcopy(prepared)
    bad[5]["ref_rejected_logps"] = float("nan")
    with pytest.raises(ValueError, match=r"pairs\[5\]\['ref_rejected_logps'\] must be a finite number"):
        train_dpo(copy.deepcopy(ref), tokenizer, bad, _config())


def test_resume_equals_the_uninterrupted_run_and_the_seed_fixes_it(tiny_lm, prepared, tmp_path, one_thread):
    config = _config(steps=7, batch_size=5, save_every=3, warmup_steps=2)  # 16 pairs: 4 batches per epoch
    full_model, full = _train(tiny_lm, prepared, config)
    assert _train(tiny_lm, prepared, config)[1] == full  # same seed: every float equal
    assert _train(tiny_lm, prepared, _config(steps=7, batch_size=5, seed=1))[1] != full

    class Interrupt(Exception):
        pass

    def stop(step, row):
        if step == 5:
            raise Interrupt  # the checkpoint holds step 3

    with pytest.raises(Interrupt):
        _train(tiny_lm, prepared, config, callback=stop, checkpoint_dir=tmp_path)
    resumed_model, resumed = _train(tiny_lm, prepared, config, checkpoint_dir=tmp_path)
    assert resumed == full
    for (name, a), b in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name


def test_evaluate_pairs_reports_held_out_pair_metrics_in_an_eval_fn(tiny_lm, prepared, one_thread):
    """evaluate_pairs as train_dpo's eval_fn (make_eval_fn's reward and KL: test_evaluate.py)."""
    ref, tokenizer = tiny_lm
    policy = copy.deepcopy(ref)
    config = _config(steps=4, eval_every=2, eval_batch_size=4)
    eval_fn = lambda: evaluate_pairs(policy, tokenizer, prepared[12:], config)  # noqa: E731
    before = eval_fn()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)  # π = π_ref
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    _, metrics = train_dpo(policy, tokenizer, prepared[:12], config, eval_fn=eval_fn)
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert "eval_rewards/margins" in evals[-1] and evals[-1]["eval_loss"] != pytest.approx(math.log(2), abs=1e-5)
    held = evaluate_pairs(policy, tokenizer, prepared[12:], config)
    assert held["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], abs=1e-6)
    one_by_one = evaluate_pairs(policy, tokenizer, prepared[12:], _config(eval_batch_size=1))
    assert one_by_one["eval_loss"] == pytest.approx(held["eval_loss"], abs=1e-5)  # the batch size changes nothing
    with pytest.raises(ValueError, match="pairs is empty"):
        evaluate_pairs(policy, tokenizer, [], config)


def test_bad_setups_raise_naming_the_problem(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    with pytest.raises(ValueError, match=r"pairs\[0\] has no ref_chosen_logps / ref_rejected_logps"):
        train_dpo(copy.deepcopy(ref), tokenizer, _pairs(2), _config())
    with pytest.raises(ValueError, match="config must be a DPOConfig"):
        train_dpo(copy.deepcopy(ref), tokenizer, [], TrainConfig())
    with pytest.raises(ValueError, match=r"config.max_length \(100\) exceeds the model's n_positions \(64\)"):
        precompute_reference_logps(ref, tokenizer, _pairs(2), _config(max_length=100))
    with pytest.raises(ValueError, match=r"row 1, field 'chosen': is missing"):
        tokenize_pairs(tokenizer, [_pairs(1)[0], {"prompt": "a"}], 24)
    good = _pairs(1)[0]
    for bad, message in (({**good, "chosen": None}, "row 1, field 'chosen': must be a str, got NoneType"),
                         ({**good, "chosen": ""}, "row 1, field 'chosen': is empty"),
                         ({**good, "rejected": good["chosen"]}, "row 1, field 'rejected': equals chosen")):
        with pytest.raises(ValueError, match=message):  # issue 15: the precompute trained on these silently
            precompute_reference_logps(ref, tokenizer, [good, bad], _config())
    for bad in (dict(loss_type="kto"), dict(beta=0.0), dict(label_smoothing=0.5),
                dict(loss_type="ipo", label_smoothing=0.1), dict(max_length=1)):
        with pytest.raises(ValueError):
            _config(**bad)


def test_preset_dpo_configs_and_their_overrides():
    for preset in PRESETS.values():
        config = preset.dpo
        assert isinstance(config, DPOConfig) and config.max_length <= preset.model.n_positions
        assert config.steps is None  # as many steps as dpo.epochs passes over the pairs take
    changed = get_preset("ci", {"dpo.beta": 0.5, "dpo.length_buckets": 2, "dpo.lr": 1e-3}, verbose=False).dpo
    assert changed == dataclasses.replace(PRESETS["ci"].dpo, beta=0.5, length_buckets=2, lr=1e-3)
    with pytest.raises(ValueError, match="it is now 'dpo.beta'"):
        get_preset("ci", {"dpo_beta": 0.5}, verbose=False)
    with pytest.raises(ValueError, match="preset field 'dpo.bogus' cannot be set"):
        get_preset("ci", {"dpo.bogus": 1}, verbose=False)
    with pytest.raises(ValueError, match="preset field 'dpo.beta'"):  # DPOConfig's own check, named
        get_preset("ci", {"dpo.beta": 0.0}, verbose=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["ci"].dpo.beta = 1.0
