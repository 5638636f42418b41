"""Evaluation: the sequence KL of samples against hand computations, the metrics of evaluate_policy, and
make_eval_fn inside a trainer."""

import copy
import random

import pytest
import torch

from dpo_edu import evaluate, models
from dpo_edu.dpo import DPOConfig, precompute_reference_logps, train_dpo
from dpo_edu.sampling import Generation

PROMPTS = ["The movie was", "I did not", "Acting", "What a"]


def shaken(model, scale=0.3, seed=1):
    """A copy of ``model`` with noise on every weight: a policy that has moved away from the reference."""
    other = copy.deepcopy(model)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other.eval()


def test_kl_is_zero_at_the_reference(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    batch = models.encode_pairs(tokenizer, PROMPTS, [" good fun", " like it", " was", " mess"])
    exact, sampled = evaluate.sequence_kl(ref, ref, batch)
    assert torch.equal(exact, torch.zeros(4)) and torch.equal(sampled, torch.zeros(4))


def test_kl_matches_a_hand_loop_over_tokens(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy = shaken(ref)
    prompts, responses = PROMPTS[:2], [" good fun", " like it at all"]
    exact, sampled = evaluate.sequence_kl(policy, ref, models.encode_pairs(tokenizer, prompts, responses), 0.7)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            lp = torch.log_softmax(policy(input_ids=ids).logits[0].double() / 0.7, -1)
            lq = torch.log_softmax(ref(input_ids=ids).logits[0].double() / 0.7, -1)
        kl = sum((lp[t - 1].exp() * (lp[t - 1] - lq[t - 1])).sum().item() for t in range(len(p_ids), ids.shape[1]))
        ratio = sum((lp[t - 1, ids[0, t]] - lq[t - 1, ids[0, t]]).item() for t in range(len(p_ids), ids.shape[1]))
        assert exact[row].item() == pytest.approx(kl, abs=1e-4)
        assert sampled[row].item() == pytest.approx(ratio, abs=1e-4)
        assert kl > 0


def test_evaluate_policy_reports_reward_kl_and_samples(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy = shaken(ref, scale=0.1)
    prompts = PROMPTS * 8
    reward = lambda texts: torch.tensor([float(t.count("e")) for t in texts])  # noqa: E731
    metrics, samples = evaluate.evaluate_policy(policy, ref, tokenizer, prompts, reward, Generation(max_new_tokens=6),
                                                batch_size=8)
    assert set(metrics) == {"eval/reward", "eval/kl", "eval/kl_sampled", "eval/length", "eval/prompts"}
    assert metrics["eval/prompts"] == {"reward": [s["reward"] for s in samples], "kl": [s["kl"] for s in samples],
                                       "length": metrics["eval/prompts"]["length"]}  # one sample a prompt
    assert len(samples) == len(prompts)
    assert metrics["eval/reward"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))
    assert all(s["reward"] == (s["prompt"] + s["completion"]).count("e") for s in samples)
    assert all(s["kl"] >= 0 for s in samples) and metrics["eval/kl"] > 0
    assert 1 <= metrics["eval/length"] <= 6
    # Both estimators target the same KL: over 32 samples their means agree within a loose band.
    assert metrics["eval/kl_sampled"] == pytest.approx(metrics["eval/kl"], rel=0.5, abs=0.5)


def test_evaluate_policy_of_the_reference_has_zero_kl(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    metrics, _ = evaluate.evaluate_policy(ref, ref, tokenizer, PROMPTS, lambda t: torch.zeros(len(t)), Generation(4),
                                          batch_size=3)
    assert metrics["eval/kl"] == 0 and metrics["eval/kl_sampled"] == 0


def test_the_kl_chunk_changes_neither_the_samples_nor_the_kl(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy = shaken(ref, scale=0.1)
    reward = lambda texts: torch.zeros(len(texts))  # noqa: E731
    one_go = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS * 3, reward, Generation(6), batch_size=12,
                                     kl_batch_size=12)
    chunks = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS * 3, reward, Generation(6), batch_size=12,
                                     kl_batch_size=5)
    assert [s["completion"] for s in chunks[1]] == [s["completion"] for s in one_go[1]]
    assert [s["kl"] for s in chunks[1]] == pytest.approx([s["kl"] for s in one_go[1]], abs=1e-5)
    assert chunks[0]["eval/kl_sampled"] == pytest.approx(one_go[0]["eval/kl_sampled"], abs=1e-5)


# --- make_eval_fn: the eval_fn every trainer takes ---------------------------------------------------------


def _count_e(texts):
    return torch.tensor([float(t.count("e")) for t in texts])


def test_eval_fn_reports_reward_and_kl_with_ref_a_folder_or_a_model(tiny_lm, tmp_path, one_thread):
    ref, tokenizer = tiny_lm
    folder = models.save_policy(ref, tokenizer, tmp_path / "sft")
    policy = copy.deepcopy(ref)
    generation = Generation(max_new_tokens=5)
    from_folder = evaluate.make_eval_fn(policy, tokenizer, PROMPTS, _count_e, folder, generation, batch_size=4)
    from_model = evaluate.make_eval_fn(policy, tokenizer, PROMPTS, _count_e, ref, generation, batch_size=4)
    assert from_folder.samples == []
    before = from_folder()
    assert set(before) == {"eval/reward", "eval/kl", "eval/kl_sampled", "eval/length", "eval/prompts"}
    assert set(before["eval/prompts"]) == {"report"}  # a list of prompts is one set, the report set
    assert before["eval/kl"] == pytest.approx(0.0, abs=1e-5)  # π = π_ref: no KL yet
    assert from_model() == before  # the folder holds the same π_ref
    # Inside a trainer: every eval_every steps and after the last, the same seed each time
    pairs = [{"prompt": p, "chosen": " great fun", "rejected": " dull and bad"} for p in PROMPTS * 2]
    config = DPOConfig(lr=1e-2, batch_size=4, steps=4, eval_every=2, max_length=48, progress=False)
    pairs, _ = precompute_reference_logps(ref, tokenizer, pairs, config, verbose=False)
    _, metrics = train_dpo(policy, tokenizer, pairs, config, eval_fn=from_folder)
    evals = [m for m in metrics if "eval/kl" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert evals[-1]["eval/kl"] > 0 and evals[-1]["eval/kl"] > evals[0]["eval/kl"] - 1e-6
    assert len(from_folder.samples) == len(PROMPTS)
    assert {"prompt", "completion", "reward", "kl"} <= set(from_folder.samples[0])
    assert [s["prompt"] for s in from_folder.samples] == PROMPTS
    alone, samples = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS, _count_e, generation, batch_size=4)
    per_prompt = alone.pop("eval/prompts")  # evaluate_policy, seed 0; its per-prompt means under the set's name
    assert {k: evals[-1][k] for k in alone} == alone and from_folder.samples == samples
    assert evals[-1]["eval/prompts"] == {"report": per_prompt}
    assert from_model() == {**alone, "eval/prompts": {"report": per_prompt}} and from_model.samples == samples
    with pytest.raises(ValueError, match="ref must be a model or a folder"):
        evaluate.make_eval_fn(policy, tokenizer, PROMPTS, _count_e, tmp_path / "missing", generation)


def test_eval_fn_leaves_the_training_random_state_untouched(tiny_lm, tmp_path, one_thread):
    ref, tokenizer = tiny_lm
    # A folder as gpt2's: one embedding row short (no pad), so loading it grows the embeddings from the RNG
    short = copy.deepcopy(ref)
    short.resize_token_embeddings(len(tokenizer) - 1)
    short.save_pretrained(tmp_path / "gpt2_like")
    state = torch.get_rng_state()
    models.load_policy(tmp_path / "gpt2_like", tokenizer)
    assert not torch.equal(torch.get_rng_state(), state)  # a plain load does move it: the trap is real
    eval_fn = evaluate.make_eval_fn(copy.deepcopy(ref), tokenizer, PROMPTS, _count_e, tmp_path / "gpt2_like",
                                    Generation(max_new_tokens=5))
    torch.manual_seed(123)
    random.seed(123)
    state, python_state = torch.get_rng_state(), random.getstate()
    first = eval_fn()
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == python_state
    completions = [s["completion"] for s in eval_fn.samples]
    torch.manual_seed(456)  # nor does the training's random state change what is sampled (its own seed)
    again = eval_fn()
    assert [s["completion"] for s in eval_fn.samples] == completions
    assert (again["eval/reward"], again["eval/length"]) == (first["eval/reward"], first["eval/length"])


def test_several_samples_per_prompt_are_averaged_prompt_by_prompt(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy, generation = shaken(ref, scale=0.1), Generation(max_new_tokens=6)
    reward = lambda texts: torch.tensor([float(t.count("e")) for t in texts])  # noqa: E731
    metrics, samples = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS, reward, generation, seed=3,
                                                batch_size=16, samples_per_prompt=4)
    # the same draws as the prompts repeated 4 times, one sample each
    flat, every = evaluate.evaluate_policy(policy, ref, tokenizer, [p for p in PROMPTS for _ in range(4)], reward,
                                           generation, seed=3, batch_size=16)
    for name in ("reward", "kl", "length"):
        by_prompt = torch.tensor(flat["eval/prompts"][name]).reshape(len(PROMPTS), 4).mean(1)
        assert metrics["eval/prompts"][name] == pytest.approx(by_prompt.tolist(), abs=1e-6), name
    assert metrics["eval/reward"] == pytest.approx(flat["eval/reward"], abs=1e-6)
    assert samples == every[::4] and [s["prompt"] for s in samples] == PROMPTS  # each prompt's first sample
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS, reward, generation, samples_per_prompt=0)


def test_eval_fn_reports_the_report_set_and_every_sets_prompts(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy, generation = shaken(ref, scale=0.1), Generation(max_new_tokens=5)
    splits = {"select": PROMPTS[:2], "report": PROMPTS[2:]}
    eval_fn = evaluate.make_eval_fn(policy, tokenizer, splits, _count_e, ref, generation, seed=1, batch_size=4,
                                    samples_per_prompt=2)
    result = eval_fn()
    report, samples = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS[2:], _count_e, generation, seed=1,
                                               batch_size=4, samples_per_prompt=2)
    select, _ = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS[:2], _count_e, generation, seed=1,
                                         batch_size=4, samples_per_prompt=2)
    assert result == {**{k: v for k, v in report.items() if k != "eval/prompts"},
                      "eval/prompts": {"select": select["eval/prompts"], "report": report["eval/prompts"]}}
    assert eval_fn.samples == samples
    with pytest.raises(ValueError, match="'report' set"):
        evaluate.make_eval_fn(policy, tokenizer, {"select": PROMPTS}, _count_e, ref, generation)


def test_distinct_n_counts_repeated_token_n_grams():
    from dpo_edu.evaluate import distinct_n

    assert distinct_n([[1, 2, 3, 4]]) == 1.0  # no bigram repeats
    assert distinct_n([[7, 7, 7, 7]]) == pytest.approx(1 / 3)  # (7, 7) three times: a loop
    assert distinct_n([[7, 7, 7, 7], [1, 2, 3, 4], [5]], n=2) == pytest.approx((1 / 3 + 1) / 2)  # [5]: no bigram
    assert distinct_n([[1, 2, 1, 2, 1]], n=1) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="no response has 3 tokens"):
        distinct_n([[1, 2], [3]], n=3)
