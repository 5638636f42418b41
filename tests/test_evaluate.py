"""Evaluation: the sequence KL of samples against hand computations, and the metrics of evaluate_policy."""

import copy

import pytest
import torch

from dpo_edu import evaluate, models

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
    metrics, samples = evaluate.evaluate_policy(policy, ref, tokenizer, prompts, reward, max_new_tokens=6, batch_size=8)
    assert set(metrics) == {"eval/reward", "eval/kl", "eval/kl_sampled", "eval/length"}
    assert len(samples) == len(prompts)
    assert metrics["eval/reward"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))
    assert all(s["reward"] == (s["prompt"] + s["completion"]).count("e") for s in samples)
    assert all(s["kl"] >= 0 for s in samples) and metrics["eval/kl"] > 0
    assert 1 <= metrics["eval/length"] <= 6
    # Both estimators target the same KL: over 32 samples their means agree within a loose band.
    assert metrics["eval/kl_sampled"] == pytest.approx(metrics["eval/kl"], rel=0.5, abs=0.5)


def test_evaluate_policy_of_the_reference_has_zero_kl(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    metrics, _ = evaluate.evaluate_policy(ref, ref, tokenizer, PROMPTS, lambda t: torch.zeros(len(t)), 4, batch_size=3)
    assert metrics["eval/kl"] == 0 and metrics["eval/kl_sampled"] == 0


def test_the_kl_chunk_changes_neither_the_samples_nor_the_kl(tiny_lm, one_thread):
    ref, tokenizer = tiny_lm
    policy = shaken(ref, scale=0.1)
    reward = lambda texts: torch.zeros(len(texts))  # noqa: E731
    one_go = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS * 3, reward, 6, batch_size=12, kl_batch_size=12)
    chunks = evaluate.evaluate_policy(policy, ref, tokenizer, PROMPTS * 3, reward, 6, batch_size=12, kl_batch_size=5)
    assert [s["completion"] for s in chunks[1]] == [s["completion"] for s in one_go[1]]
    assert [s["kl"] for s in chunks[1]] == pytest.approx([s["kl"] for s in one_go[1]], abs=1e-5)
    assert chunks[0]["eval/kl_sampled"] == pytest.approx(one_go[0]["eval/kl_sampled"], abs=1e-5)
