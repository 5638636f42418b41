"""Schulman's KL estimators against exact expectations, and the per-token estimates of a tiny GPT-2 against the
evaluation's sequence KL and an independent log-softmax."""

import math

import pytest
import torch

from dpo_edu import evaluate, kl, models


def test_hand_values_at_one_ratio():
    logps, ref_logps = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # r = π_ref/π = 1/2
    assert kl.k1(logps, ref_logps).item() == pytest.approx(math.log(2))
    assert kl.k2(logps, ref_logps).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl.k3(logps, ref_logps).item() == pytest.approx(0.5 - 1 + math.log(2))


@pytest.mark.parametrize("far", [False, True])
def test_k1_and_k3_are_unbiased_k2_is_not_when_far_apart(far):
    generator = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(50, generator=generator, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(50, generator=generator, dtype=torch.float64) * (3.0 if far else 0.1), 0)
    exact = (p * (p.log() - q.log())).sum()
    expect = {name: (p * getattr(kl, name)(p.log(), q.log())).sum() for name in ("k1", "k2", "k3")}  # E_{y~π}
    assert expect["k1"].item() == pytest.approx(exact.item(), rel=1e-9)
    assert expect["k3"].item() == pytest.approx(exact.item(), rel=1e-9)
    assert (kl.k3(p.log(), q.log()) >= 0).all() and (kl.k1(p.log(), q.log()) < 0).any()  # k1 < 0 where q > p
    assert abs(expect["k2"].item() - exact.item()) > (0.1 * exact.item() if far else 0)  # biased far from π_ref
    if not far:
        assert expect["k2"].item() == pytest.approx(exact.item(), rel=0.05)  # ½(log r)² ≈ KL near π_ref


def test_token_kl_of_a_tiny_gpt2(tiny_lm):
    policy, tokenizer = tiny_lm
    torch.manual_seed(0)
    other = models.build_model(models.ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                                  vocab_size=len(tokenizer)), tokenizer, seed=5).eval()
    batch = models.encode_pairs(tokenizer, ["A film", "It was a"], [" so good", " bad one, really bad"],
                                append_eos=True)
    estimates = kl.token_kl(other, policy, batch)
    assert estimates.mask.sum() == int(batch["response_mask"].sum())  # every response token, EOS included
    assert (estimates.exact[estimates.mask] > 0).all() and (estimates.exact[~estimates.mask] == 0).all()
    # exact KL at a token, independently: a plain log-softmax of the full logits of each model
    with torch.no_grad():
        positions = models.position_ids_from_mask(batch["attention_mask"])
        p, q = (m(**{k: batch[k] for k in ("input_ids", "attention_mask")}, position_ids=positions)
                .logits[:, :-1].float().log_softmax(-1) for m in (other, policy))
    by_hand = (p.exp() * (p - q)).sum(-1)
    torch.testing.assert_close(estimates.exact[estimates.mask], by_hand[estimates.mask], rtol=1e-4, atol=1e-5)
    targets = batch["input_ids"][:, 1:, None]
    sampled = p.gather(-1, targets)[..., 0] - q.gather(-1, targets)[..., 0]
    torch.testing.assert_close(estimates.k1[estimates.mask], sampled[estimates.mask], rtol=1e-4, atol=1e-5)
    exact, log_ratio = evaluate.sequence_kl(other, policy, batch)  # the evaluation reads the same estimates
    torch.testing.assert_close(exact, estimates.sequence("exact"))
    torch.testing.assert_close(log_ratio, estimates.sequence("k1"))
    same = kl.token_kl(policy, policy, batch)
    for name in ("exact", "k1", "k2", "k3"):
        assert getattr(same, name).abs().max() < 1e-6  # π = π_ref: every estimate is 0
