"""The Bradley–Terry reward model r_φ(x, y): π_SFT's transformer with a scalar head (DPO paper §3).

    L_R(r_φ) = −E_(x, y_w, y_l) [ log σ(r_φ(x, y_w) − r_φ(x, y_l)) ]          (Eq. 2)

The head reads the last real token of prompt ⊕ response. Notes: docs/notes.md#reward-model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import save_json
from .losses import bradley_terry_loss
from .models import (encode_pairs, load_local_or_hub, position_ids_from_mask, quiet_progress,
                     token_ids)
from .preferences import EOS_RULES, pair_token_ids
from .training import TrainConfig, minimize, train_loop
from .validate import check_int

# the head's weight and offset; the backbone is a plain transformers folder
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Column of each row's last real token (the last 1 of its attention mask)."""
    if not attention_mask.bool().any(-1).all():
        raise ValueError("attention_mask has a row with no real token")
    # Right padding after the response: "[pad] x1 x2 y1 y2 [pad]" → column 4, not the last column 5.
    return attention_mask.shape[-1] - 1 - attention_mask.long().flip(-1).argmax(-1)


class RewardModel(nn.Module):
    """r_φ(x, y): a GPT-2 transformer (no LM head) and a linear head on the last real token."""

    def __init__(self, backbone: nn.Module, seed: int = 0):
        super().__init__()
        # e.g. GPT2Model: token ids → final hidden states (after the last LayerNorm)
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        # no bias: a shift cancels in r_w − r_l, its gradient is 0
        self.head = nn.Linear(hidden, 1, bias=False)
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the caller's RNG untouched
            torch.manual_seed(seed)
            # std 1/√(hidden + 1), as lm-human-preferences' reward head
            self.head.weight.normal_(0.0, 1.0 / (hidden + 1) ** 0.5)
        self.head.to(device=backbone.device, dtype=backbone.dtype)
        # r = head(h) − offset
        self.register_buffer("offset", torch.zeros((), device=backbone.device))

    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """One reward per row, float32, read at the row's last real token."""
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must have the same shape")
        n_positions = getattr(self.config, "n_positions", None)
        if n_positions is not None and input_ids.shape[1] > n_positions:
            raise ValueError(f"input_ids has {input_ids.shape[1]} columns, over the model's "
                             f"n_positions ({n_positions})")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        last = hidden[torch.arange(len(hidden), device=self.device),
                      last_token_index(attention_mask)]
        # r_φ(x, y) = w · h_last − offset
        return F.linear(last.float(), self.head.weight.float()).squeeze(-1) - self.offset

    @classmethod
    def from_policy(cls, source, tokenizer=None, seed: int = 0, cache_dir=None) -> "RewardModel":
        """A reward model on π_SFT's transformer from a folder, a Hub id or a policy (copied)."""
        if isinstance(source, nn.Module):
            backbone = copy.deepcopy(source.base_model)  # the GPT2Model of a GPT2LMHeadModel
        else:
            from transformers import AutoModel

            # AutoModel drops the LM head
            backbone = load_local_or_hub(AutoModel.from_pretrained, str(source), cache_dir)
        if (tokenizer is not None
            and len(tokenizer) > backbone.get_input_embeddings().num_embeddings):
            backbone.resize_token_embeddings(len(tokenizer))  # gpt2 + <|pad|>
        return cls(backbone, seed)

    def save_pretrained(self, save_dir) -> Path:
        """The backbone (a transformers folder), head and offset; ``from_pretrained`` reads them."""
        from safetensors.torch import save_file

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        with quiet_progress():
            self.backbone.save_pretrained(save_dir)
        save_file({"head.weight": self.head.weight.detach().contiguous().cpu(),
                   "offset": self.offset.cpu()}, str(save_dir / HEAD_FILE))
        save_json({"class": "dpo_edu.reward_model.RewardModel"}, save_dir / META_FILE,
                  indent=None)
        return save_dir

    @classmethod
    def from_pretrained(cls, load_dir, device: str | None = None) -> "RewardModel":
        """The reward model saved by ``save_pretrained`` in ``load_dir``."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        load_dir = Path(load_dir)
        if not (load_dir / HEAD_FILE).is_file():
            raise ValueError(f"load_dir {load_dir} holds no reward model ({HEAD_FILE} is missing); "
                             "build one with RewardModel.from_policy")
        with quiet_progress():
            model = cls(AutoModel.from_pretrained(load_dir))
        state = load_file(str(load_dir / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(state["head.weight"])
            model.offset.copy_(state["offset"])
        return model.to(device) if device is not None else model


@dataclass(frozen=True)
class RewardConfig(TrainConfig):
    """Bradley–Terry training on preference pairs; the shared fields are ``TrainConfig``'s."""

    lr: float = 3e-4  # peak AdamW lr (the tiny GPT-2; ~1e-5 suits a pretrained gpt2 backbone)
    batch_size: int = 16  # preference pairs per step (2 × batch_size sequences in one forward pass)
    center_rewards_coefficient: float = 0.0  # loss + c · E[(r_w + r_l)²]: pulls rewards to 0 (TRL)
    eval_batch_size: int = 32  # pairs per forward pass when evaluating
    append_eos: str = "auto"  # EOS after a response, as DPO's (preferences.eos_rule): r_φ reads it

    def __post_init__(self):
        super().__post_init__()
        if self.append_eos not in EOS_RULES:
            raise ValueError(f"append_eos must be one of {EOS_RULES}, got {self.append_eos!r}")
        c = self.center_rewards_coefficient
        if not (isinstance(c, (int, float)) and 0 <= c < float("inf")):
            raise ValueError(f"center_rewards_coefficient must be a finite number ≥ 0, got {c!r}")
        check_int("eval_batch_size", self.eval_batch_size, 1)


def _pair_rewards(model: RewardModel, tokenizer, batch) -> tuple[Tensor, Tensor]:
    """``(r(x, y_w), r(x, y_l))`` of tokenized pairs, chosen and rejected in ONE forward pass."""
    prompts = [p for p, _, _ in batch]
    enc = encode_pairs(tokenizer, prompts + prompts,
                       [c for _, c, _ in batch] + [r for _, _, r in batch])
    rewards = model(enc["input_ids"], enc["attention_mask"])
    return rewards[: len(batch)], rewards[len(batch) :]


def _pair_metrics(chosen: Tensor, rejected: Tensor, prefix: str = "") -> dict:
    """TRL RewardTrainer's names: accuracy, margin, min/mean/max reward."""
    both = torch.cat([chosen, rejected]).detach()
    return {f"{prefix}accuracy": (chosen > rejected).float().mean().item(),
            f"{prefix}margin": (chosen - rejected).mean().item(),
            f"{prefix}min_reward": both.min().item(), f"{prefix}mean_reward": both.mean().item(),
            f"{prefix}max_reward": both.max().item()}


@torch.no_grad()
def score(model: RewardModel, tokenizer, prompts: Sequence, responses: Sequence,
          batch_size: int = 32, ended: Sequence[bool] | None = None) -> Tensor:
    """r_φ(x, y) of each (prompt, response), float32 on the CPU; texts or token-id lists, with EOS
    appended to the responses ``ended`` marks (as the pairs the model learned from)."""
    check_int("batch_size", batch_size, 1)
    if ended is not None:
        responses = [token_ids(tokenizer, r) + [tokenizer.eos_token_id] * bool(stop)
                     for r, stop in zip(responses, ended)]
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(prompts), batch_size):
            enc = encode_pairs(tokenizer, prompts[s : s + batch_size],
                               responses[s : s + batch_size])
            out.append(model(enc["input_ids"], enc["attention_mask"]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def score_samples(score_fn, tokenizer, samples) -> Tensor:
    """s(x, y) of ``sampling.Samples``, float32 on their device: r_φ at the last token of y as
    sampled (EOS too where the policy emitted it, as in the pairs r_φ learned from), or any callable
    texts → rewards, read on prompt ⊕ completion (the ground truth, for PPO-GT)."""
    if isinstance(score_fn, RewardModel):
        raw = score(score_fn, tokenizer, samples.prompts, samples.responses)
    else:
        raw = score_fn([p + t for p, t in zip(samples.prompts, samples.texts)])
    raw = torch.as_tensor(raw, dtype=torch.float32).reshape(-1).to(samples.ended.device)
    if len(raw) != len(samples.prompts):
        raise ValueError(f"score_fn returned {len(raw)} scores for {len(samples.prompts)} texts")
    return raw


def fitting_pairs(model: RewardModel, tokenizer, pairs: Sequence[dict], append_eos: str
                  ) -> list[tuple[list[int], list[int], list[int]]]:
    """``pair_token_ids`` of the pairs; one longer than the model reads raises, naming it."""
    tokenized = pair_token_ids(tokenizer, pairs, append_eos)
    limit = getattr(model.config, "n_positions", None)
    for i, (prompt, *responses) in enumerate(tokenized):
        longest = len(prompt) + max(map(len, responses))
        if limit is not None and longest > limit:
            raise ValueError(f"pairs[{i}]: prompt + response is {longest} tokens, over the reward "
                             f"model's n_positions ({limit}); shorten or filter such pairs "
                             "(preferences.filter_pairs with tokenizer and max_tokens)")
    return tokenized


@torch.no_grad()
def pair_scores(model: RewardModel, tokenizer, pairs: Sequence[dict], batch_size: int = 32,
                append_eos: str = "auto") -> tuple[Tensor, Tensor]:
    """``(r(x, y_w), r(x, y_l))`` of preference records, read as training reads them."""
    tokenized = fitting_pairs(model, tokenizer, pairs, append_eos)
    if not tokenized:
        raise ValueError("pairs is empty: nothing to score")
    was_training = model.training
    model.eval()
    try:
        scored = [_pair_rewards(model, tokenizer, tokenized[s : s + batch_size])
                  for s in range(0, len(tokenized), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat([c for c, _ in scored]).cpu(), torch.cat([r for _, r in scored]).cpu()


def evaluate_reward_model(model: RewardModel, tokenizer, pairs: Sequence[dict],
                          batch_size: int = 32, append_eos: str = "auto") -> dict:
    """Held-out ``eval_loss`` (Eq. 2), ``eval_accuracy`` (r_w > r_l), ``eval_margin``, r's range."""
    chosen, rejected = pair_scores(model, tokenizer, pairs, batch_size, append_eos)
    return {"eval_loss": bradley_terry_loss(chosen, rejected).item(),
            **_pair_metrics(chosen, rejected, "eval_")}


def pair_accuracy(model: RewardModel, tokenizer, pairs: Sequence[dict],
                  batch_size: int = 32, append_eos: str = "auto") -> float:
    """Fraction of pairs with r(x, y_w) > r(x, y_l): the held-out accuracy of notebook 04."""
    return evaluate_reward_model(model, tokenizer, pairs, batch_size, append_eos)["eval_accuracy"]


@torch.no_grad()
def center_rewards(model: RewardModel, tokenizer, prompts: Sequence, responses: Sequence,
                   batch_size: int = 32) -> float:
    """Shift r so that its mean over these (prompt, response) texts is 0; returns the new offset.

    Bradley–Terry fixes r only up to a constant, so this changes no preference and no accuracy.
    """
    mean = score(model, tokenizer, prompts, responses, batch_size).mean()
    model.offset += mean.to(model.offset.device)  # r' = r − mean  (r = head(h) − offset)
    return model.offset.item()


def train_reward_model(model: RewardModel, tokenizer, pairs: Sequence[dict],
                       config: RewardConfig | None = None,
                       callback: Callable[[int, dict], None] | None = None,
                       eval_pairs: Sequence[dict] | None = None, checkpoint_dir=None):
    """Fit ``model`` to preference pairs (in place) by Eq. 2; returns ``(model, metrics)``.

    ``metrics``: a dict per step (``loss``, ``accuracy``, ``margin``, reward range, ``grad_norm``,
    …), with ``eval_pairs`` the same prefixed ``eval_``. ``checkpoint_dir`` checkpoints and resumes.
    """
    config = config if config is not None else RewardConfig()
    if not isinstance(config, RewardConfig):
        raise ValueError(f"config must be a RewardConfig, got {type(config).__name__}")
    if not isinstance(model, RewardModel):
        raise ValueError(f"model must be a RewardModel (RewardModel.from_policy), "
                         f"got {type(model).__name__}")
    tokenized = fitting_pairs(model, tokenizer, pairs, config.append_eos)

    def loss_fn(rows):
        chosen, rejected = _pair_rewards(model, tokenizer, rows)
        loss = bradley_terry_loss(chosen, rejected)  # −E log σ(r_w − r_l)   (Eq. 2)
        if config.center_rewards_coefficient:
            # Eisenstein et al. (2023), as TRL: + c · E[(r_w + r_l)²] pins the free shift near 0.
            loss = loss + config.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
        return loss, _pair_metrics(chosen, rejected)

    eval_fn = None
    if eval_pairs is not None:
        def eval_fn():
            return evaluate_reward_model(model, tokenizer, eval_pairs, config.eval_batch_size,
                                         config.append_eos)

    metrics = train_loop(model, tokenized, minimize(loss_fn, config.grad_accum_steps), config,
                         callback=callback, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="reward model")
    return model, metrics
