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

from .kl import token_kl
from .models import encode_pairs, load_policy
from .reward_model import score as reward_model_score
from .sampling import Generation, generate
from .validate import check_int


def sequence_kl(policy, ref_model, batch: dict[str, Tensor],
                temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(exact per-token KL summed over the response, sampled log-ratio k1) per row, on the CPU.

    ``batch`` is an ``encode_pairs`` batch.
    """
    estimates = token_kl(policy, ref_model, batch, temperature)
    return estimates.sequence("exact"), estimates.sequence("k1")


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
    samples_per_prompt: int = 1,
    reward_model=None,
) -> tuple[dict, list[dict]]:
    """``(metrics, samples)`` of ``samples_per_prompt`` completions a prompt: means of the reward,
    exact and sampled KL, length (and r_φ's score with a ``reward_model``), and ``eval/prompts``,
    each prompt's means (the bootstrap's units); ``samples``: each prompt's first completion."""
    check_int("samples_per_prompt", samples_per_prompt, 1)
    temperature, m = generation.temperature, samples_per_prompt
    repeated = [prompt for prompt in prompts for _ in range(m)]  # [x0 × m, x1 × m, ...]
    texts, ids, mask = generate(policy, tokenizer, repeated, generation.max_new_tokens, temperature,
                                seed=seed, batch_size=batch_size, return_ids=True)
    rewards = torch.as_tensor(reward([p + c for p, c in zip(repeated, texts)]),  # or a list
                              dtype=torch.float32)
    responses = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]  # EOS where sampled
    exact, sampled = [], []
    for start in range(0, len(repeated), kl_batch_size):
        rows = slice(start, start + kl_batch_size)
        batch = encode_pairs(tokenizer, repeated[rows], responses[rows])
        kl, log_ratio = sequence_kl(policy, ref_model, batch, temperature)
        exact.append(kl)
        sampled.append(log_ratio)
    exact, sampled, lengths = torch.cat(exact), torch.cat(sampled), mask.sum(-1).float()
    values = {"reward": rewards, "kl": exact, "length": lengths}
    if reward_model is not None:  # r_φ of the samples' own tokens
        values["rm_score"] = reward_model_score(reward_model, tokenizer, repeated, responses)
    metrics = {"eval/reward": rewards.mean().item(), "eval/kl": exact.mean().item(),
               "eval/kl_sampled": sampled.mean().item(), "eval/length": lengths.mean().item()}
    if reward_model is not None:
        metrics["eval/rm_score"] = values["rm_score"].mean().item()
    metrics["eval/prompts"] = {name: v.reshape(len(prompts), m).mean(1).tolist()  # (prompts,)
                               for name, v in values.items()}
    samples = [{"prompt": p, "completion": c, "reward": r, "kl": k} for p, c, r, k in
               zip(repeated[::m], texts[::m], rewards[::m].tolist(), exact[::m].tolist())]
    return metrics, samples


def make_eval_fn(policy, tokenizer, prompts: Sequence[str] | dict[str, Sequence[str]],
                 reward: Callable, ref, generation: Generation, seed: int = 0, batch_size: int = 64,
                 samples_per_prompt: int = 1, reward_model=None) -> Callable[[], dict]:
    """An ``eval_fn`` for ``train_loop``: :func:`evaluate_policy` with the same seed each time.

    ``prompts``: a list, or disjoint named sets ({"select": …, "report": …}); the metrics are the
    "report" set's, ``eval/prompts`` holds each set's per-prompt means. ``ref``: π_ref, a model or
    a folder loaded at each evaluation (no second model in memory while training). The latest
    samples (the report set's) are kept in ``eval_fn.samples``.
    """
    if not isinstance(ref, nn.Module) and not Path(ref).is_dir():
        raise ValueError(f"ref must be a model or a folder holding one, got {ref!r}")
    splits = dict(prompts) if isinstance(prompts, dict) else {"report": list(prompts)}
    if "report" not in splits:
        raise ValueError(f"prompts needs a 'report' set, got {sorted(splits)}")

    def reference() -> nn.Module:
        if isinstance(ref, nn.Module):
            return ref
        weights = policy.get_input_embeddings().weight
        with torch.random.fork_rng(devices=[]):  # loading must not move the training's random state
            return load_policy(ref, tokenizer, device=str(weights.device),
                               dtype=str(weights.dtype).removeprefix("torch.")).eval()

    def eval_fn() -> dict:
        ref_model, per_prompt = reference(), {}
        for name, split in splits.items():
            metrics, samples = evaluate_policy(policy, ref_model, tokenizer, list(split), reward,
                                               generation, seed=seed, batch_size=batch_size,
                                               samples_per_prompt=samples_per_prompt,
                                               reward_model=reward_model)
            per_prompt[name] = metrics.pop("eval/prompts")
            if name == "report":
                report, eval_fn.samples = metrics, samples
        return {**report, "eval/prompts": per_prompt}

    eval_fn.samples = []
    return eval_fn


def distinct_n(responses: Sequence[Sequence[int]], n: int = 2) -> float:
    """Mean over responses of distinct n-grams / n-grams, in tokens: 1 when no n-gram repeats
    within a response, near 1/len for one that loops on a token ("great great great …")."""
    check_int("n", n, 1)
    ratios = []
    for tokens in responses:
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    if not ratios:
        raise ValueError(f"no response has {n} tokens: distinct-{n} is undefined")
    return sum(ratios) / len(ratios)
