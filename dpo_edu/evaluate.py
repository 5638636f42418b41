"""Evaluating a policy as the DPO paper does (§6.1, Fig. 2): sample held-out prompts, score the
samples with the ground-truth reward, and measure the sequence KL(π ‖ π_ref) on them:

    exact    Σ_t Σ_v π(v | x, y_<t) [log π(v | x, y_<t) − log π_ref(v | x, y_<t)]  (never < 0)
    sampled  Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)                     (one sample)

Both are unbiased for the sequence KL, on the distribution sampled: softmax(logits / T).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .models import encode_pairs, load_policy, response_logps
from .sampling import Generation, generate


@torch.no_grad()
def sequence_kl(policy, ref_model, batch: dict[str, Tensor],
                temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(exact per-token KL summed over the response, sampled log-ratio) per row.

    ``batch`` is an ``encode_pairs`` batch.
    """
    p = response_logps(policy, batch, temperature, dists=True)
    q = response_logps(ref_model, batch, temperature, dists=True)
    # (N,): the KL at each token
    exact = (p.dists.exp() * (p.dists - q.dists.to(p.dists.device))).sum(-1)
    per_row = torch.zeros(p.mask.shape, device=exact.device).masked_scatter(p.mask, exact)
    return per_row.sum(-1).cpu(), (p.logps - q.logps.to(p.logps.device)).sum(-1).cpu()


@torch.no_grad()
def evaluate_policy(
    policy,
    ref_model,
    tokenizer,
    prompts: Sequence[str],
    reward: Callable[[list[str]], Tensor | Sequence[float]],
    generation: Generation,
    seed: int = 0,
    batch_size: int = 64,
    kl_batch_size: int = 64,
) -> tuple[dict[str, float], list[dict]]:
    """``(metrics, samples)`` of one completion per prompt: ``eval/reward``, ``eval/kl`` (exact),
    ``eval/kl_sampled`` and ``eval/length`` (response tokens, EOS included), means over the prompts.

    The exact KL runs ``kl_batch_size`` rows at a time (it holds [rows, tokens, vocab] tensors).
    """
    temperature = generation.temperature
    texts, ids, mask = generate(policy, tokenizer, prompts, generation.max_new_tokens, temperature,
                                seed=seed, batch_size=batch_size, return_ids=True)
    rewards = torch.as_tensor(reward([p + c for p, c in zip(prompts, texts)]),  # or a list
                              dtype=torch.float32)
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


def make_eval_fn(policy, tokenizer, prompts: Sequence[str], reward: Callable, ref,
                 generation: Generation, seed: int = 0,
                 batch_size: int = 64) -> Callable[[], dict]:
    """An ``eval_fn`` for ``train_loop``: :func:`evaluate_policy` with the same seed each time.

    ``ref`` is π_ref, a model or a folder loaded at each evaluation and freed after (no second model
    in memory while training). The latest samples are kept in ``eval_fn.samples``.
    """
    if not isinstance(ref, nn.Module) and not Path(ref).is_dir():
        raise ValueError(f"ref must be a model or a folder holding one, got {ref!r}")

    def reference() -> nn.Module:
        if isinstance(ref, nn.Module):
            return ref
        weights = policy.get_input_embeddings().weight
        with torch.random.fork_rng(devices=[]):  # loading must not move the training's random state
            return load_policy(ref, tokenizer, device=str(weights.device),
                               dtype=str(weights.dtype).removeprefix("torch.")).eval()

    def eval_fn() -> dict:
        metrics, eval_fn.samples = evaluate_policy(policy, reference(), tokenizer, list(prompts),
                                                   reward, generation, seed=seed,
                                                   batch_size=batch_size)
        return metrics

    eval_fn.samples = []
    return eval_fn
