"""Sampling completions: batched, left-padded, with the KV cache, stopping row by row at EOS.

Every method samples through one ``Generation``: π_ref's preference pairs, PPO's rollouts and every
evaluation, so each scores exactly what the policy produced (DPO paper §6.1).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .models import encode_pairs, position_ids_from_mask
from .progress import progress_bar
from .validate import check_int, check_positive


@dataclass(frozen=True)
class Generation:
    """How completions are sampled, by every method alike."""

    max_new_tokens: int = 24  # tokens sampled per completion; a row stops earlier at EOS
    temperature: float = 1.0  # T: logits / T before the softmax (1.0 samples the policy itself)

    def __post_init__(self):
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_positive("temperature", self.temperature)


def sampling_probs(logits: Tensor, temperature: float) -> Tensor:
    """Next-token distribution softmax(logits / T), in float32."""
    temperature = check_positive("temperature", temperature)
    # Temperature: p_i ∝ exp(z_i / T). T = 1 samples the policy itself (the π in every KL and
    # log-prob); T < 1 sharpens towards greedy decoding as T → 0, T > 1 flattens towards uniform.
    return torch.softmax(logits.float() / temperature, dim=-1)


def _forward_cached(model, cache_name, input_ids, attention_mask, position_ids, cache):
    """One forward pass that reuses and returns the KV cache.

    ``cache_name`` is ``past_key_values`` before transformers 5.
    """
    kwargs = {cache_name: cache, "use_cache": True}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                **kwargs)
    return out.logits[:, -1], out[cache_name]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    return_ids: bool = False,
    progress: bool | None = None,
):
    """Completions of ``prompts`` (texts, without prompt or EOS); ``temperature=0`` is greedy.

    A seed fixes the samples for a given ``batch_size``. ``return_ids`` adds ``ids``
    (n, max_new_tokens), pads after a row's EOS, and ``mask``, 1 on generated tokens, EOS included.
    """
    if temperature != 0:
        check_positive("temperature", temperature)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    n_positions = getattr(model.config, "n_positions", None)
    cache_name = ("cache" if "cache" in inspect.signature(model.forward).parameters
                  else "past_key_values")
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    all_ids, all_mask = [], []
    starts = range(0, len(prompts), batch_size)
    try:
        for start in progress_bar(starts, desc="generate",
                          disable=not progress if progress is not None else len(starts) < 2):
            chunk = list(prompts[start : start + batch_size])
            batch = encode_pairs(tokenizer, chunk, [[]] * len(chunk))  # left-padded prompts
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            if n_positions is not None and ids.shape[1] + max_new_tokens > n_positions:
                raise ValueError(
                    f"max_new_tokens ({max_new_tokens}) + the longest prompt "
                    f"({ids.shape[1]} tokens) "
                    f"exceeds the model's n_positions ({n_positions})"
                )
            # left padding: positions count the real tokens only
            positions = position_ids_from_mask(mask)
            cache, new, alive = None, [], []
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                logits, cache = _forward_cached(model, cache_name, ids, mask, positions, cache)
                if temperature == 0:
                    token = logits.argmax(-1)
                else:
                    probs = sampling_probs(logits, temperature)
                    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                alive.append(~done)
                token = torch.where(done, pad, token)  # a stopped row emits only pads (masked)
                new.append(token)
                done = done | (token == eos)  # stop at EOS, row by row
                if done.all():
                    break
                # KV cache: feed only the new token; the mask grows by a column, the position by 1
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                ids, positions = token[:, None], positions[:, -1:] + 1
            out = torch.full((len(chunk), max_new_tokens), pad, dtype=torch.long)
            out_mask = torch.zeros((len(chunk), max_new_tokens), dtype=torch.long)
            out[:, : len(new)] = torch.stack(new, dim=1).cpu()
            out_mask[:, : len(new)] = torch.stack(alive, dim=1).long().cpu()
            all_ids.append(out)
            all_mask.append(out_mask)
    finally:
        model.train(was_training)
    ids = torch.cat(all_ids) if all_ids else torch.empty(0, max_new_tokens, dtype=torch.long)
    mask = torch.cat(all_mask) if all_mask else torch.empty(0, max_new_tokens, dtype=torch.long)
    texts = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(ids, mask)]
    return (texts, ids, mask) if return_ids else texts


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts to sample from, as a list; an error names the first one that is not a str."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompts[{i}] must be a non-empty str, got {prompt!r}")
    return list(prompts)


class Samples(NamedTuple):
    """Completions as a policy drew them, ready to score and to train on."""

    prompts: list[str]
    texts: list[str]  # the completions, decoded, without EOS
    responses: list[list[int]]  # their token ids, EOS included where the policy emitted it
    batch: dict  # encode_pairs of (prompt, response) on the policy's device: [pads, x | y, pads]
    ended: Tensor  # (rows,) bool: the response ends with EOS (else it was cut at max_new_tokens)


@torch.no_grad()
def sample(policy, tokenizer, prompts: Sequence[str], generation: Generation, seed: int) -> Samples:
    """One completion of each prompt, drawn in one batch (repeat a prompt to draw a group)."""
    texts, ids, sampled = generate(policy, tokenizer, prompts, generation.max_new_tokens,
                                   generation.temperature, seed=seed, batch_size=len(prompts),
                                   return_ids=True, progress=False)
    responses = [row[m.bool()].tolist() for row, m in zip(ids, sampled)]  # EOS included: an action
    device = policy.get_input_embeddings().weight.device
    batch = {k: v.to(device) for k, v in encode_pairs(tokenizer, prompts, responses).items()}
    ended = torch.tensor([r[-1] == tokenizer.eos_token_id for r in responses], device=device)
    return Samples(list(prompts), texts, responses, batch, ended)
