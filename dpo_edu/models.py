"""GPT-2 policies, their tokenizer, and the log-probabilities every loss reads (DPO paper §6.1).

    log π(y|x) = Σ_t log π(y_t | x, y_<t)        over the RESPONSE tokens only, in float32

The tiny GPT-2 of ``ci``/``cpu`` is built here and read back through ``from_pretrained``, as
``gpt2`` is from the Hub. The traps (pad ≠ EOS, left padding, the prompt/response boundary,
float32, temperature) are handled where the comments say: docs/notes.md#models.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .validate import check_int, check_positive

EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text, also its beginning-of-text
PAD_TOKEN = "<|pad|>"  # our own padding token, distinct from EOS
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class ModelConfig:
    """The policy a preset starts from: a Hub model, or random weights of these shapes."""

    name: str = "tiny"  # "tiny": a GPT-2 built here; else a Hub id ("gpt2", "gpt2-large")
    random_init: bool = True  # random weights + the local tokenizer (always for "tiny")
    n_layer: int = 4  # transformer blocks (gpt2: 12)
    n_head: int = 4  # attention heads per block; n_embd must be a multiple of it (gpt2: 12)
    n_embd: int = 128  # width of the residual stream (gpt2: 768)
    n_positions: int = 128  # longest sequence the model reads, prompt + response (gpt2: 1024)
    vocab_size: int = 2000  # tokens of the byte-level BPE trained on the reviews (random_init only)
    device: str = "cpu"  # "cpu" or "cuda"
    dtype: str = "float32"  # dtype of the weights; log-probs are float32 whatever it is

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "n_positions"):
            check_int(name, getattr(self, name), 1)
        check_int("vocab_size", self.vocab_size, 258)  # 256 bytes + EOS + pad
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.name == "tiny" and not self.random_init:
            raise ValueError("random_init must be True for model 'tiny': "
                             "it has no pretrained weights")
        if not isinstance(getattr(torch, str(self.dtype), None), torch.dtype):
            raise ValueError(f"dtype must name a torch dtype such as 'float32', got {self.dtype!r}")


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers on port 443 and HF_HUB_OFFLINE is not set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False  # huggingface_hub's own rule
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def train_tokenizer(texts: Sequence[str], vocab_size: int, save_dir=None,
                    model_max_length: int = 1024):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("texts must hold at least one text to train the tokenizer on")
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be ≥ 258 (256 bytes + EOS + pad), got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # bytes: no unknown token
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,  # as GPT-2: <|endoftext|> also opens a text
        # pad ≠ EOS: if pad were EOS, every mask built from `ids != pad_token_id` would also hide
        # the real EOS tokens, and a model trained with it never learns to stop.
        pad_token=PAD_TOKEN,
        # prompts are left-padded so that every row's last column is its last real token
        padding_side="left",
        model_max_length=model_max_length,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def gpt2_config(config: ModelConfig, vocab_size: int, pad_token_id: int, eos_token_id: int):
    """A ``GPT2Config`` of the config's shapes (the ``gpt2`` preset's are GPT-2 small's)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        # No dropout: then π_θ = π_ref exactly at the first step (DPO loss log 2), as TRL's
        # disable_dropout.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_model(config: ModelConfig, tokenizer, seed: int = 0):
    """A random ``GPT2LMHeadModel`` of the config's shapes and the tokenizer's vocabulary."""
    from transformers import GPT2LMHeadModel

    config = gpt2_config(config, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    _set_special_ids(model, tokenizer)
    return model


def _set_special_ids(model, tokenizer) -> None:
    for config in (model.config, model.generation_config):
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id


@contextmanager
def quiet_progress():
    """transformers' own bars ("Loading weights", "Writing model shards") off inside the block,
    then as they were: a notebook shows one bar per long step, the course's own."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def load_local_or_hub(load, source, cache_dir):
    """``load(source)`` for a local folder or a Hub id.

    Offline, a Hub id is looked up in the cache only and fails fast with a short message.
    """
    if Path(source).is_dir():
        with quiet_progress():
            return load(source)
    # offline: look in the cache only, rather than retry the Hub for half a minute
    offline = not hub_reachable()
    try:
        with quiet_progress():
            return load(source, cache_dir=cache_dir, local_files_only=offline)
    except OSError:
        if not offline:
            raise  # online, the original error says what is wrong (a misspelt name, say)
        raise OSError(
            f"cannot load {source!r}: the Hugging Face Hub is unreachable and it is not cached. "
            "Use the `cpu` preset (the tiny GPT-2, no download), or random_init=True."
        ) from None


def load_tokenizer(source, cache_dir=None):
    """The tokenizer of a folder or the Hub (``"gpt2"``), with a pad token distinct from EOS."""
    from transformers import AutoTokenizer

    tokenizer = load_local_or_hub(AutoTokenizer.from_pretrained, str(source), cache_dir)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # pad ≠ EOS: gpt2 ships no pad token; the common fix `pad = eos` hides every real EOS
        # (see above).
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(source, tokenizer=None, device: str = "cpu", dtype: str = "float32",
                cache_dir=None):
    """A causal LM from a folder or the Hub, its embeddings grown to the tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM

    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"dtype must name a torch dtype such as 'float32' or 'bfloat16', "
                         f"got {dtype!r}")
    model = load_local_or_hub(AutoModelForCausalLM.from_pretrained, str(source), cache_dir)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source, cache_dir)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # gpt2 + <|pad|>: a row never predicted
    _set_special_ids(model, tokenizer)
    return model.to(device=device, dtype=getattr(torch, dtype))


def load_pretrained(source, device: str = "cpu", dtype: str = "float32", cache_dir=None):
    """``(policy, tokenizer)`` from a run folder or the Hub."""
    tokenizer = load_tokenizer(source, cache_dir)
    return load_policy(source, tokenizer, device, dtype, cache_dir), tokenizer


def save_policy(model, tokenizer, save_dir) -> Path:
    """Model and tokenizer into one folder, read by ``load_pretrained`` (and by transformers)."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return save_dir


def init_policy(config: ModelConfig, texts: Sequence[str], save_dir, seed: int = 0, cache_dir=None):
    """``(policy, tokenizer)`` before SFT: the Hub's pretrained model, or random weights.

    With ``random_init``: a tokenizer trained on ``texts`` and random weights, saved in
    ``save_dir`` and read back as the Hub's are.
    """
    if not config.random_init:
        return load_pretrained(config.name, config.device, config.dtype, cache_dir)
    tokenizer = train_tokenizer(texts, config.vocab_size, model_max_length=config.n_positions)
    save_policy(build_model(config, tokenizer, seed), tokenizer, save_dir)
    return load_pretrained(save_dir, config.device, config.dtype)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position of each token among the real ones of its row (pads get 0)."""
    # Left padding: in "<pad> <pad> The movie", "The" must sit at position 0 as if unpadded;
    # GPT-2's default arange would put it at 2 and change every logit (its position embeddings are
    # absolute). cumsum − 1 counts the real tokens so far; pads before the first get −1, clamped
    # to 0 (they are masked).
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_ids(tokenizer, item) -> list[int]:
    """Token ids of a text; a sequence of ids (a sampled completion) passes through unchanged."""
    return (tokenizer(item, add_special_tokens=False)["input_ids"] if isinstance(item, str)
            else list(item))


def encode_pairs(tokenizer, prompts: Sequence, responses: Sequence,
                 append_eos: bool = False) -> dict[str, Tensor]:
    """One batch of (prompt, response) rows: ``[pads, prompt | response, pads]``.

    Prompts are left-padded, responses right-padded after them, so every response starts in one
    column; ``response_mask`` is 1 on response tokens. Texts or lists of ids, tokenized apart.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length, "
                         f"got {len(prompts)} and {len(responses)}")
    prompt_ids = [token_ids(tokenizer, p) for p in prompts]
    response_ids = [token_ids(tokenizer, r) + ([tokenizer.eos_token_id] if append_eos else [])
                    for r in responses]
    for i, ids in enumerate(prompt_ids):
        if not ids:  # the first response token needs a prompt position whose logits predict it
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
    width_p = max(map(len, prompt_ids))
    width_r = max(map(len, response_ids))
    pad = tokenizer.pad_token_id
    rows, masks, responses_mask = [], [], []
    for p, r in zip(prompt_ids, response_ids):
        left, right = width_p - len(p), width_r - len(r)
        rows.append([pad] * left + p + r + [pad] * right)
        masks.append([0] * left + [1] * (len(p) + len(r)) + [0] * right)
        responses_mask.append([0] * width_p + [1] * len(r) + [0] * right)
    return {
        "input_ids": torch.tensor(rows, dtype=torch.long),
        "attention_mask": torch.tensor(masks, dtype=torch.long),
        "response_mask": torch.tensor(responses_mask, dtype=torch.long),
    }


class TokenLogps(NamedTuple):
    """Per-token scores of responses; column t of a (B, L − 1) tensor is for token t + 1."""

    logps: Tensor  # (B, L − 1) log π_T(token t + 1 | tokens ≤ t) at response tokens, 0 elsewhere
    mask: Tensor  # (B, L − 1) bool: the columns that predict a response token (EOS included)
    entropy: Tensor | None  # (B, L − 1) H(π_T(· | tokens ≤ t)), no gradient; with entropy=True
    values: Tensor | None  # (B, L − 1) V(tokens ≤ t) of a value head; with value_head
    dists: Tensor | None  # (N, V) log π_T(· | tokens ≤ t) at the N masked columns; with dists=True

    @property
    def sequence_logps(self) -> Tensor:
        """(B,) log π(y|x) = Σ_t log π(y_t | x, y_<t)."""
        return self.logps.sum(-1)


def response_states(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(states, scored)``: the last hidden state h(x, y_<t) that predicts each response token,
    (N, H) in row order, and the (B, L − 1) bool mask of where they sit (``TokenLogps.mask``)."""
    device = model.get_input_embeddings().weight.device
    ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    # (B, L, H): the last hidden state at every position
    hidden = model.base_model(input_ids=ids, attention_mask=attention,
                              position_ids=position_ids_from_mask(attention)).last_hidden_state
    scored = batch["response_mask"].to(device)[:, 1:].bool()  # the state at t predicts t + 1
    return hidden[:, :-1][scored], scored  # (N, H), N response tokens in the batch


def response_logps(model, batch: dict[str, Tensor], temperature: float = 1.0, value_head=None,
                   entropy: bool = False, dists: bool = False) -> TokenLogps:
    """log π_T(y_t | x, y_<t) of each response token of an ``encode_pairs``-style batch, in float32.

    Prompt and padding are masked, EOS is scored when it is in the response; positions come from the
    attention mask, so any padding works. The LM head runs only where a response token is predicted.
    """
    ids, attention, response = (batch[k] for k in ("input_ids", "attention_mask", "response_mask"))
    if not (ids.shape == attention.shape == response.shape):
        raise ValueError(f"input_ids {tuple(ids.shape)}, attention_mask {tuple(attention.shape)} "
                         f"and response_mask {tuple(response.shape)} must have the same shape")
    if response[:, 0].any():
        raise ValueError("response_mask marks column 0, but no logits predict the first token "
                         "of a row")
    if (response.bool() & ~attention.bool()).any():
        raise ValueError("response_mask marks tokens that attention_mask hides")
    states, scored = response_states(model, batch)
    device, ids = states.device, ids.to(states.device)
    # float32: a 50k-token log-softmax in bfloat16 keeps ~3 digits, too few for DPO's log-ratios
    logits = (model.get_output_embeddings()(states).float()
              / check_positive("temperature", temperature))
    normaliser = logits.logsumexp(-1)  # (N,)
    # log softmax at y_t
    token = logits.gather(-1, ids[:, 1:][scored][:, None]).squeeze(-1) - normaliser

    def spread(per_token: Tensor) -> Tensor:  # (N,) → (B, L − 1), zeros off the response
        return torch.zeros(scored.shape, device=device,
                           dtype=per_token.dtype).masked_scatter(scored, per_token)

    entropies = None
    if entropy:
        with torch.no_grad():  # a diagnostic: no second (N, V) tensor kept for the backward pass
            log_dist = logits - normaliser[:, None]
            entropies = spread(-(log_dist.exp() * log_dist).sum(-1))  # H_t = −Σ_v π_T(v) log π_T(v)
    values = None if value_head is None else spread(value_head(states))  # V(x, y_<t)
    return TokenLogps(spread(token), scored, entropies, values,
                      logits - normaliser[:, None] if dists else None)


def chunked_logps(model, batch: dict[str, Tensor], temperature: float, chunk: int,
                  value_head=None, entropy: bool = False) -> TokenLogps:
    """``response_logps`` of a batch, ``chunk`` rows at a time (logits are (tokens, vocab))."""
    parts = [response_logps(model, {k: v[s : s + chunk] for k, v in batch.items()}, temperature,
                            value_head, entropy)
             for s in range(0, len(batch["input_ids"]), chunk)]
    joined = ([getattr(part, name) for part in parts] for name in TokenLogps._fields)
    return TokenLogps(*(None if values[0] is None else torch.cat(values) for values in joined))
