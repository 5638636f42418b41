"""Supervised fine-tuning (SFT): GPT-2 learns IMDb reviews and becomes π_ref (DPO paper §3, §6.1).

    L_SFT(θ) = −(1/N) Σ_i Σ_t log π_θ(y_i,t | y_i,<t),   N = the tokens scored (token-weighted)

Each review ends with EOS (the model learns to stop); rows are left-padded, pads never scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import position_ids_from_mask
from .training import TrainConfig, minimize, train_loop
from .validate import check_int

IGNORE_INDEX = -100  # label of a position that is not scored (F.cross_entropy's ignore_index)


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on review texts; the shared fields are documented in TrainConfig."""

    lr: float = 1e-3  # peak lr for a random-init tiny GPT-2; ~5e-5 suits pretrained gpt2
    batch_size: int = 16  # reviews per optimiser step
    warmup_steps: int = 10  # steps of linear warmup
    max_length: int = 64  # tokens per review, EOS included; longer ones are cut (and lose EOS)
    eval_batch_size: int = 32  # reviews per forward pass when evaluating held-out texts

    def __post_init__(self):
        super().__post_init__()
        check_int("max_length", self.max_length, 2)  # a token to predict, one to predict it from
        check_int("eval_batch_size", self.eval_batch_size, 1)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text followed by EOS, cut to ``max_length`` tokens."""
    check_int("max_length", max_length, 2)
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"texts[{i}] must be a non-empty string, got {text!r}")
    if getattr(tokenizer, "truncation_side", "right") != "right":
        raise ValueError("tokenizer.truncation_side must be 'right': a review is cut at its end")
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True,
                    max_length=max_length)["input_ids"]
    # EOS closes the review: the model learns to stop. A review cut short loses it (it did not
    # end there).
    return [seq + [tokenizer.eos_token_id] if len(seq) < max_length else seq for seq in ids]


def collate(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 where nothing is scored).

    A row ``[pad, pad, a, b, c]`` gets labels ``[−100, −100, −100, b, c]``: pads are never scored,
    nor is the first real token, which no real token precedes.
    """
    if not sequences:
        raise ValueError("sequences is empty")
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, seq in enumerate(sequences):
        if len(seq) < 2:
            raise ValueError(f"sequences[{i}] has {len(seq)} token(s): "
                             "at least 2 are needed to score one")
        left = width - len(seq)
        ids[i, left:] = torch.as_tensor(list(seq))
        mask[i, left:] = 1
        labels[i, left + 1 :] = ids[i, left + 1 :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss_sum(model, batch: dict[str, Tensor]) -> tuple[Tensor, int, int]:
    """``(Σ −log π(token), tokens scored, tokens right by argmax)`` of a collated batch; float32."""
    device = model.get_input_embeddings().weight.device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    # Left padding: positions count real tokens only, so "<pad> <pad> The" puts "The" at position 0.
    logits = model(input_ids=ids, attention_mask=mask,
                   position_ids=position_ids_from_mask(mask)).logits
    # Logits at t predict token t + 1: drop the last logits and the first label so they line up.
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")  # Σ_t −log π_θ(y_t | y_<t)
    scored = targets != IGNORE_INDEX
    correct = int((logits.argmax(-1)[scored] == targets[scored]).sum())
    return nll, int(scored.sum()), correct


@torch.no_grad()
def evaluate_sft(model, tokenizer, texts: Sequence[str], max_length: int = 64,
                 batch_size: int = 32) -> dict:
    """Held-out ``eval_loss`` (token-weighted NLL in nats), ``eval_perplexity`` = exp(eval_loss) and
    ``eval_mean_token_accuracy`` (argmax = next token)."""
    check_int("batch_size", batch_size, 1)
    sequences = encode_texts(tokenizer, texts, max_length)
    if not sequences:
        raise ValueError("texts is empty: nothing to evaluate")
    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, 0
    try:
        for start in range(0, len(sequences), batch_size):
            nll, n, c = lm_loss_sum(model, collate(sequences[start : start + batch_size],
                                                   tokenizer.pad_token_id))
            total, count, correct = total + nll.item(), count + n, correct + c
    finally:
        model.train(was_training)
    loss = total / count
    # min: no overflow when diverged
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0)),
            "eval_mean_token_accuracy": correct / count}


def train_sft(model, tokenizer, texts: Sequence[str], config: SFTConfig | None = None,
              callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
              eval_texts: Sequence[str] | None = None):
    """Fine-tune ``model`` on ``texts`` (in place); returns ``(model, metrics)``, a dict per step.

    Logs ``loss``, ``mean_token_accuracy``, ``tokens`` (scored), ``grad_norm``, ``learning_rate``,
    ``epoch``; with ``eval_texts``, ``evaluate_sft``'s metrics (see ``training.train_loop``).
    """
    config = config if config is not None else SFTConfig()
    if not isinstance(config, SFTConfig):
        raise ValueError(f"config must be an SFTConfig, got {type(config).__name__}")
    n_positions = getattr(model.config, "n_positions", None)
    if n_positions is not None and config.max_length > n_positions:
        raise ValueError(f"config.max_length ({config.max_length}) exceeds the model's "
                         f"n_positions ({n_positions})")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer needs a pad token distinct from EOS "
                         "(models.load_tokenizer adds one)")
    sequences = encode_texts(tokenizer, texts, config.max_length)  # ≥ 2 tokens: a first + EOS

    def loss_fn(rows: list[list[int]]):
        nll, n, correct = lm_loss_sum(model, collate(rows, tokenizer.pad_token_id))
        loss = nll / n  # L_SFT: the token-weighted mean over the whole batch
        return loss, {"mean_token_accuracy": correct / n, "tokens": n}

    eval_fn = None
    if eval_texts is not None:
        def eval_fn():
            return evaluate_sft(model, tokenizer, eval_texts, config.max_length,
                                config.eval_batch_size)

    metrics = train_loop(model, sequences, minimize(loss_fn, config.grad_accum_steps), config,
                         callback=callback, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="SFT")
    return model, metrics
