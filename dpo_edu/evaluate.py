"""Evaluating a policy as the DPO paper does (§6.1, Fig. 2): sample completions of held-out prompts,
score them with the ground-truth reward, and measure how far the policy moved from π_ref.

Two estimates of the sequence KL(π ‖ π_ref) on the sampled responses y ~ π(·|x):

    exact per token   Σ_t Σ_v π(v | x, y_<t) [log π(v | x, y_<t) − log π_ref(v | x, y_<t)]
    sampled           Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)

Both are unbiased for the sequence KL; the first sums each step's exact KL (never negative, lower
variance), the second is the single-sample log-ratio (negative on some samples). Both are computed
on the distribution actually sampled, softmax(logits / T).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .models import encode_pairs, generate, next_token_logps


@torch.no_grad()
def sequence_kl(policy, ref_model, batch: dict[str, Tensor], temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(exact per-token KL summed over the response, sampled log-ratio) per row of an ``encode_pairs`` batch."""
    logp = next_token_logps(policy, batch["input_ids"], batch["attention_mask"], temperature)
    logq = next_token_logps(ref_model, batch["input_ids"], batch["attention_mask"], temperature).to(logp.device)
    scored = batch["response_mask"][:, 1:].to(logp.device).bool()
    exact = (logp.exp() * (logp - logq)).sum(-1)  # KL of the next-token distributions at each position
    tokens = batch["input_ids"][:, 1:, None].to(logp.device)
    sampled = (logp.gather(-1, tokens) - logq.gather(-1, tokens)).squeeze(-1)
    return torch.where(scored, exact, 0.0).sum(-1).cpu(), torch.where(scored, sampled, 0.0).sum(-1).cpu()


def evaluate_policy(
    policy,
    ref_model,
    tokenizer,
    prompts: Sequence[str],
    reward: Callable[[list[str]], Tensor | Sequence[float]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    kl_batch_size: int = 64,
) -> tuple[dict[str, float], list[dict]]:
    """Sample one completion per prompt (``batch_size`` rows at a time) and return (metrics, samples).

    The exact KL holds a few [rows, tokens, vocabulary] float32 tensors at once, so it runs
    ``kl_batch_size`` rows at a time whatever the sampling batch (64 rows of gpt2's 50,257-token vocabulary
    and ~55 tokens: ~0.7 GiB each; 400 at once would take ~20 GiB).

    Metrics: ``eval/reward`` (mean ground-truth reward of prompt ⊕ completion), ``eval/kl`` (mean exact
    sequence KL), ``eval/kl_sampled`` (mean sampled log-ratio) and ``eval/length`` (mean response tokens,
    EOS included). Samples: one dict per prompt with its completion, reward and KL.
    """
    texts, ids, mask = generate(
        policy, tokenizer, prompts, max_new_tokens, temperature, seed=seed, batch_size=batch_size, return_ids=True
    )
    rewards = torch.as_tensor(reward([p + c for p, c in zip(prompts, texts)]), dtype=torch.float32)  # or a list
    exact, sampled = [], []
    for start in range(0, len(prompts), kl_batch_size):
        rows = range(start, min(start + kl_batch_size, len(prompts)))
        responses = [ids[i][mask[i].bool()].tolist() for i in rows]
        batch = encode_pairs(tokenizer, [prompts[i] for i in rows], responses)
        kl, log_ratio = sequence_kl(policy, ref_model, batch, temperature)
        exact.append(kl)
        sampled.append(log_ratio)
    exact, sampled = torch.cat(exact), torch.cat(sampled)
    metrics = {
        "eval/reward": rewards.mean().item(),
        "eval/kl": exact.mean().item(),
        "eval/kl_sampled": sampled.mean().item(),
        "eval/length": mask.sum(-1).float().mean().item(),
    }
    samples = [
        {"prompt": p, "completion": c, "reward": r, "kl": k}
        for p, c, r, k in zip(prompts, texts, rewards.tolist(), exact.tolist())
    ]
    return metrics, samples
