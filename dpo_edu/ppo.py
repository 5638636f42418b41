"""RLHF with PPO: maximise a reward minus a KL penalty to π_ref, the pipeline DPO replaces.

DPO paper §3 (RL fine-tuning phase, Eq. 3): max_π E_x,y~π [r_φ(x, y)] − β KL(π(·|x) ‖ π_ref(·|x)), solved
with PPO (Schulman et al., 2017) as Ziegler et al. (2019) and Stiennon et al. (2020) did, following Huang et al.
(2023), "The N Implementation Details of RLHF with PPO". One PPO *step* is one rollout and its optimisation:

1. rollout: y ~ π_θ(·|x) for ``batch_size`` prompts (KV cache, logits / T, stop at EOS, mask what follows);
   log π_θ(y_t), V_t and log π_ref(y_t) recomputed by one no-grad forward pass each, with the same T;
2. score s(x, y): the reward model r_φ at its last token, or the ground-truth reward (PPO-GT: pass the
   sentiment callable instead of the reward model); normalised, s̃ = (s − μ₀)/σ₀ with μ₀, σ₀ of the first
   rollout (samples of π_ref), as lm-human-preferences normalises its reward model, so that β weighs KL
   against the score's spread on π_ref whatever the reward's units; optionally a penalty replaces s̃ when
   y has no EOS (``missing_eos_penalty``);
3. per-token rewards  r_t = −β (log π_θ(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)) + [t = last] s̃(x, y);
4. GAE: δ_t = r_t + γ V_t+1 − V_t, A_t = δ_t + γλ A_t+1 (γ = 1, λ = 0.95), returns R_t = A_t + V_t; A whitened;
5. ``ppo_epochs`` passes of shuffled minibatches: loss = L^CLIP + vf_coef · L^V (``losses.ppo_*_loss``);
6. β ← β (1 + clip(KL / target − 1, ±0.2) · n / horizon) (Ziegler et al., adaptive) or β fixed.

The value function is a scalar head on the POLICY's last hidden state (a shared backbone), initialised to zero.
The classic choice (lm-human-preferences; Stiennon et al.) is a separate value model initialised from the reward
model; TRL's first PPOTrainer (``AutoModelForCausalLMWithValueHead``, its GPT-2 IMDb sentiment example) and trlx
share the trunk as here. Sharing costs one transformer pass per minibatch instead of two and one model in memory
instead of two, which is what fits PPO in the CPU budget, and PPO-GT has no reward model to copy. Its price: the
value loss also moves the policy's trunk (scaled by ``vf_coef``). A zero head predicts V = 0 (no guess about the
returns) and, since ∂V/∂h = w = 0, its first gradient leaves the trunk alone: training starts at π_θ = π_ref.

    value_head = ValueHead(policy.config.hidden_size)             # optional: pass it to keep a handle on it
    policy, metrics = train_ppo(policy, ref_model, tokenizer, prompts, reward_model, PPOConfig.from_preset(p),
                                value_head=value_head)
    policy, metrics = train_ppo(policy, ref_model, tokenizer, prompts, sentiment, config)   # PPO-GT
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .evaluate import evaluate_policy
from .losses import ppo_policy_loss, ppo_value_loss
from .models import encode_pairs, generate, position_ids_from_mask
from .reward_model import RewardModel
from .reward_model import score as reward_model_score
from .training import (Batch, check_finite_loss, clip_gradients, disable_dropout, find_checkpoint, iterate_batches,
                       read_checkpoint, seed_everything, write_checkpoint)
from .validate import check_int, check_positive


@dataclass
class PPOConfig:
    """PPO for language models; defaults as TRL's PPO and lm-human-preferences unless the comment says."""

    lr: float = 1e-4  # AdamW learning rate, constant, Adam ε = 1e-5 (Huang et al.) (tiny GPT-2; gpt2: ~1e-5)
    batch_size: int = 32  # prompts per rollout, one completion each (episodes per step)
    mini_batch_size: int = 8  # rows per optimiser step within a PPO epoch
    ppo_epochs: int = 4  # passes over each rollout, reshuffled each time (TRL's num_ppo_epochs)
    steps: int = 20  # PPO steps, each one rollout + its ppo_epochs passes
    max_new_tokens: int = 16  # tokens sampled per completion; a row stops earlier at EOS
    temperature: float = 1.0  # T of the sampling AND of every log-prob of the samples: π_T = softmax(logits / T)
    kl_coef: float = 0.1  # β, the weight of the per-token KL penalty (initial value if target_kl is set)
    target_kl: float | None = None  # adaptive controller's target sequence KL in nats (Ziegler: 6); None: β fixed
    kl_horizon: int = 10_000  # adaptive controller's horizon in episodes (Ziegler et al.: 10,000)
    gamma: float = 1.0  # discount γ; 1: the score comes once, at the end, nothing to discount
    lam: float = 0.95  # GAE λ: 0 trusts V (bias), 1 trusts the sampled returns (variance)
    cliprange: float = 0.2  # ε: the policy ratio ρ is clipped to [1 − ε, 1 + ε]
    cliprange_value: float = 0.2  # ε_v: a value prediction moves at most this far from its rollout value
    vf_coef: float = 0.1  # weight of the value loss in the total loss (it shares the policy's trunk)
    normalize_scores: bool = True  # s̃ = (s − μ₀)/σ₀, μ₀ σ₀ of the first rollout (π_ref's samples); False: s̃ = s
    missing_eos_penalty: float | None = None  # s̃ (in units of σ₀ if normalised) of a y without EOS; None: off
    whiten_rewards: bool = False  # scale the per-token rewards to unit variance over the batch before GAE
    grad_clip: float | None = 1.0  # clip the global gradient norm of policy + value head; None: no clipping
    seed: int = 0  # fixes the prompts' order, the samples and the minibatch shuffles of every step
    log_every: int = 1  # call the callback every this many steps (metrics are logged at every step)
    save_every: int = 10  # steps between checkpoints when a checkpoint_dir is given (the last always saves)
    eval_every: int = 0  # steps between eval_fn calls; 0: only after the last step
    progress: bool = True  # show a tqdm progress bar with the latest score and KL

    def __post_init__(self):
        for name in ("lr", "temperature", "cliprange", "cliprange_value", "target_kl", "grad_clip"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.missing_eos_penalty is not None and not math.isfinite(self.missing_eos_penalty):
            raise ValueError(f"missing_eos_penalty must be a finite number or None, got {self.missing_eos_penalty!r}")
        for name in ("batch_size", "mini_batch_size", "ppo_epochs", "steps", "max_new_tokens", "kl_horizon",
                     "log_every", "save_every", "eval_every", "seed"):
            check_int(name, getattr(self, name), 0 if name in ("eval_every", "seed") else 1)
        for name, high in (("kl_coef", float("inf")), ("vf_coef", float("inf")), ("gamma", 1), ("lam", 1)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= high and value != float("inf")):
                raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")

    @classmethod
    def from_preset(cls, preset, **overrides) -> "PPOConfig":
        """The preset's PPO sizes (``ppo_*`` fields, ``max_new_tokens``, ``temperature``), any field overridden."""
        sizes = {"steps": preset.ppo_steps, "batch_size": preset.ppo_batch_size, "lr": preset.ppo_lr,
                 "mini_batch_size": preset.ppo_mini_batch_size, "ppo_epochs": preset.ppo_epochs,
                 "kl_coef": preset.ppo_kl_coef, "target_kl": preset.ppo_target_kl,
                 "kl_horizon": preset.ppo_kl_horizon,
                 "max_new_tokens": preset.max_new_tokens, "temperature": preset.temperature}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown PPOConfig field(s) {sorted(unknown)}")
        return cls(**{**sizes, **overrides})


# --- the KL coefficient β ---------------------------------------------------------------------------------


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019), §2.2: a proportional controller that steers the sequence KL toward ``target``."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(kl_coef), check_positive("target", target), horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)  # e = clip(KL / target − 1, −0.2, 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon  # β ← β (1 + e · n_steps / horizon)


# --- advantages -------------------------------------------------------------------------------------------


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries of the whole batch (TRL's masked_whiten); 0 elsewhere.

    The variance is unbiased (÷ (n − 1)); with ``shift_mean=False`` the mean is added back (scale only).
    """
    mask = mask.bool()
    n = mask.sum()
    mean = torch.where(mask, x, 0.0).sum() / n.clamp(min=1)
    var = torch.where(mask, (x - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask, out if shift_mean else out + mean, 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over the masked tokens: (advantages, returns).

    Masked positions are skipped (they pass A_t+1 and V_t+1 on) and get 0; after a row's last token V = 0.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape")
    mask = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])  # A_t+1
    next_value = torch.zeros_like(rewards[:, 0])  # V_t+1, 0 after the last token: the episode ends there
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γ V_t+1 − V_t
        advantage = delta + gamma * lam * next_advantage  # A_t = δ_t + γλ A_t+1
        advantages[:, t] = torch.where(mask[:, t], advantage, 0.0)
        next_advantage = torch.where(mask[:, t], advantage, next_advantage)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
    return advantages, torch.where(mask, advantages + values, 0.0)  # R_t = A_t + V_t, the value target


# --- policy, value head, rollout --------------------------------------------------------------------------


class ValueHead(nn.Module):
    """V(x, y_<t) = w · h_t + b on the policy's last hidden state, in float32; w = b = 0 at the start."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)  # V ≡ 0 and ∂V/∂h = 0: the first updates leave the trunk to the policy
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def forward_response(model, input_ids: Tensor, attention_mask: Tensor, width: int, temperature: float = 1.0,
                     value_head: ValueHead | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(log π_T(y_t), entropy H_t, V_t) at the response columns ``width:`` of each row, in float32.

    ONE pass of the transformer: the hidden state at column t − 1 predicts token t (LM head) and values the
    state before it (value head). π_T = softmax(logits / T): the distribution the tokens were sampled from.
    ``models.next_token_logps`` computes the same log-probs (a test holds them equal); this one also returns
    the hidden states' values and keeps only the response columns.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
    hidden = hidden[:, width - 1 : -1]  # boundary: column t − 1 predicts token t
    logps = torch.log_softmax(model.get_output_embeddings()(hidden).float() / temperature, dim=-1)  # float32
    token_logps = logps.gather(-1, input_ids[:, width:, None]).squeeze(-1)  # log π_T(y_t | x, y_<t)
    with torch.no_grad():  # a diagnostic: no graph, or a second [rows, tokens, vocab] tensor lives to backward
        entropy = -(logps.exp() * logps).sum(-1)  # H_t = −Σ_v π_T(v) log π_T(v)
    return token_logps, entropy, None if value_head is None else value_head(hidden)


@torch.no_grad()
def rollout(policy, value_head: ValueHead, ref_model, tokenizer, prompts: Sequence[str], score_fn,
            config: PPOConfig, kl_coef: float, seed: int = 0, score_stats: tuple[float, float] | None = None) -> dict:
    """Sample, score and compute advantages for one batch of prompts (no gradients).

    Per-token tensors are [batch, response columns], 0 where ``response_mask`` is 0 (after a row's EOS).
    ``scores`` are raw; ``score_stats`` = (μ₀, σ₀) normalise them (measured on this batch when None).
    """
    texts, ids, mask = generate(policy, tokenizer, prompts, config.max_new_tokens, config.temperature, seed=seed,
                                batch_size=len(prompts), return_ids=True, progress=False)  # KV cache, stops at EOS
    responses = [row[m.bool()].tolist() for row, m in zip(ids, mask)]  # EOS included: stopping is an action
    batch = encode_pairs(tokenizer, prompts, responses)  # [pads, prompt | response, pads]
    width = batch["input_ids"].shape[1] - max(map(len, responses))  # column of every row's first response token
    device = policy.get_input_embeddings().weight.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    response_mask = batch["response_mask"][:, width:].to(device).bool()
    parts, ref_parts = [], []
    for s in range(0, len(prompts), config.mini_batch_size):  # in chunks: logits are [rows, tokens, vocab]
        rows = slice(s, s + config.mini_batch_size)
        parts.append(forward_response(policy, input_ids[rows], attention_mask[rows], width, config.temperature,
                                      value_head))
        ref_parts.append(forward_response(ref_model, input_ids[rows], attention_mask[rows], width,
                                          config.temperature)[0])  # log π_ref, the same T
    logprobs, entropy, values = (torch.where(response_mask, torch.cat([p[i] for p in parts]), 0.0)
                                 for i in range(3))  # 0 after EOS: nothing was sampled there
    ref_logprobs = torch.where(response_mask, torch.cat(ref_parts), 0.0)
    ended = [r[-1] == tokenizer.eos_token_id for r in responses]
    has_eos = torch.tensor(ended, device=device)
    if isinstance(score_fn, RewardModel):  # r_φ(x, y) at its last token, on y's own tokens (EOS off, as trained)
        raw = reward_model_score(score_fn, tokenizer, prompts, [r[:-1] if e else r for r, e in zip(responses, ended)])
    else:  # PPO-GT: any callable texts → rewards, e.g. sentiment's p(positive | x ⊕ y)
        raw = score_fn([p + t for p, t in zip(prompts, texts)])
    raw = torch.as_tensor(raw, dtype=torch.float32).reshape(-1).to(device)
    if len(raw) != len(prompts):
        raise ValueError(f"score_fn returned {len(raw)} scores for {len(prompts)} texts")
    scores = raw
    if config.normalize_scores:
        if score_stats is None:  # the first rollout: π_θ = π_ref, so these are samples of π_ref
            score_stats = (raw.mean().item(), raw.std().item() if len(raw) > 1 else 0.0)
            # s̃ would be 0/0 now and ±1e8 at the first score that differs (a NaN score: train_ppo names its prompt)
            if not score_stats[1] > 1e-6 and torch.isfinite(raw).all():
                raise ValueError(
                    f"the first rollout's {len(raw)} score(s) have no spread (σ₀ = {score_stats[1]:g}), so they "
                    "cannot normalise the reward: give PPO ≥ 2 prompts a rollout and a reward that varies on "
                    "π_ref's samples, or set normalize_scores=False")
        scores = (raw - score_stats[0]) / (score_stats[1] + 1e-8)  # s̃ = (s − μ₀) / σ₀
    if config.missing_eos_penalty is not None:  # Huang et al.: a response cut off by max_new_tokens scores a penalty
        scores = torch.where(has_eos, scores, float(config.missing_eos_penalty))
    kl = torch.where(response_mask, logprobs - ref_logprobs, 0.0)  # log π_θ(y_t) − log π_ref(y_t), per token
    rewards = -kl_coef * kl  # r_t = −β (log π_θ − log π_ref)
    last = response_mask.sum(1) - 1  # each row's last response token (its EOS, if it has one)
    rewards[torch.arange(len(rewards), device=device), last] += scores  # + s(x, y) at the last token
    if config.whiten_rewards:
        rewards = whiten(rewards, response_mask, shift_mean=False)
    advantages, returns = gae(rewards, values, response_mask, config.gamma, config.lam)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "width": width, "texts": texts,
            "response_mask": response_mask, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values,
            "entropy": entropy, "raw_scores": raw, "scores": scores, "score_stats": score_stats, "kl": kl,
            "has_eos": has_eos, "rewards": rewards, "advantages": whiten(advantages, response_mask),  # A whitened
            "returns": returns}


# --- optimisation -----------------------------------------------------------------------------------------


def ppo_update(trainable: nn.ModuleDict, optimizer, roll: dict, config: PPOConfig, step: int, seed: int,
               prompt_rows: Sequence[int]) -> dict:
    """``ppo_epochs`` passes of shuffled minibatches over one rollout; the minibatches' mean metrics.

    ``prompt_rows[i]``: the index, in the training prompts, of the rollout's row i (named by a loss error).
    """
    policy, value_head = trainable["policy"], trainable["value_head"]
    generator = torch.Generator().manual_seed(seed)  # seeded per step: a resumed run shuffles alike
    n, stats = len(roll["scores"]), []
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for index, start in enumerate(range(0, n, config.mini_batch_size)):
            rows = order[start : start + config.mini_batch_size].to(roll["scores"].device)
            logprobs, entropy, values = forward_response(
                policy, roll["input_ids"][rows], roll["attention_mask"][rows], roll["width"], config.temperature,
                value_head)
            mask = roll["response_mask"][rows]
            pg_loss, pg_stats = ppo_policy_loss(logprobs, roll["logprobs"][rows], roll["advantages"][rows], mask,
                                                config.cliprange)
            vf_loss, vf_stats = ppo_value_loss(values, roll["values"][rows], roll["returns"][rows], mask,
                                               config.cliprange_value)
            loss = pg_loss + config.vf_coef * vf_loss  # L = L^CLIP + c_v L^V (no entropy bonus, as Huang et al.)
            # the error names the step, the PPO epoch, the minibatch and its prompts
            batch = Batch(step, epoch, index, [prompt_rows[i] for i in rows.tolist()], [])
            check_finite_loss(loss, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(trainable, config.grad_clip)
            check_finite_loss(grad_norm, batch, "the gradient norm")  # before the step spreads it to every weight
            optimizer.step()
            entropy = torch.where(mask, entropy, 0.0).sum() / mask.sum().clamp(min=1)
            stats.append({"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(), **pg_stats, **vf_stats,
                          "policy/entropy": entropy.item(), "grad_norm": grad_norm})
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}


# --- checkpoints (policy + value head + optimiser + β + RNG + metrics) -----------------------------------


def _save(checkpoint_dir, trainable, optimizer, kl_ctl, step: int, metrics: list, config: PPOConfig,
          state: dict) -> Path:
    saved = {"step": step, "value_head": trainable["value_head"].state_dict(), "kl_coef": kl_ctl.value,
             "optimizer": optimizer.state_dict(), **state}
    return write_checkpoint(checkpoint_dir, trainable["policy"], metrics, saved, config)


def _load(path: Path, trainable, optimizer, kl_ctl, config: PPOConfig, into: dict) -> tuple[int, list]:
    saved, metrics = read_checkpoint(path, trainable["policy"], config)
    trainable["value_head"].load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])
    kl_ctl.value = saved["kl_coef"]
    into.update({k: saved[k] for k in into})  # the score normalisation (μ₀, σ₀)
    return saved["step"], metrics


# --- training ---------------------------------------------------------------------------------------------


def train_ppo(policy, ref_model, tokenizer, prompts: Sequence[str], score_fn, config: PPOConfig | None = None,
              callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
              eval_fn: Callable[[], dict] | None = None, value_head: ValueHead | None = None):
    """Optimise ``policy`` (in place) by PPO against ``score_fn``; returns ``(policy, metrics)``, a dict per step.

    ``score_fn``: a ``RewardModel`` (RLHF) or any callable texts → rewards, given prompt ⊕ completion (PPO-GT).
    ``ref_model`` is π_ref (frozen). ``value_head`` (default: a new zero one) is trained in place. Metrics, one
    row per step, with TRL's names: ``objective/kl`` (mean sequence log-ratio), ``objective/scores`` (raw s),
    ``objective/rlhf_reward`` (E[s̃ − β·KL], the return PPO maximises), ``objective/entropy``,
    ``objective/kl_coef`` (β of this step), ``policy/approxkl``, ``policy/clipfrac``, ``loss/policy``,
    ``loss/value``, ``val/...``; ``eval_fn()``'s every ``eval_every`` steps and after the last (``make_eval_fn``).
    ``callback(step, row)`` every ``log_every`` steps. With ``checkpoint_dir``, a run resumes from its checkpoint
    to the very numbers of an uninterrupted one. A non-finite score stops the run with a ``FloatingPointError``
    naming the step, a non-finite loss naming the step, PPO epoch and minibatch ("batch").
    """
    from tqdm.auto import tqdm

    config = config if config is not None else PPOConfig()
    if not isinstance(config, PPOConfig):
        raise ValueError(f"config must be a PPOConfig, got {type(config).__name__}")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer needs a pad token distinct from EOS (models.load_tokenizer adds one)")
    seed_everything(config.seed)
    disable_dropout(policy)  # deterministic log-probs: π_θ = π_ref exactly at step 0
    disable_dropout(ref_model.eval())
    device = policy.get_input_embeddings().weight.device
    value_head = (value_head if value_head is not None else ValueHead(policy.config.hidden_size)).to(device)
    trainable = nn.ModuleDict({"policy": policy, "value_head": value_head})
    # Huang et al.: Adam ε = 1e-5, no weight decay (torch's AdamW decays by 0.01 unless told: a pull towards 0,
    # not towards π_ref, on every weight, even those the loss leaves alone)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, eps=1e-5, weight_decay=0.0)
    kl_ctl = (FixedKLController(config.kl_coef) if config.target_kl is None
              else AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon))
    step, metrics, state = 0, [], {"score_stats": None}  # (μ₀, σ₀), fixed by the first rollout
    found = find_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is not None:
        step, metrics = _load(found, trainable, optimizer, kl_ctl, config, state)
        if config.progress:
            print(f"PPO: resuming from step {step} of {config.steps} ({found})")
    episodes = metrics[-1]["episode"] if metrics else 0  # prompts rolled out so far
    bar = tqdm(total=config.steps, initial=step, desc="PPO", disable=not config.progress)
    batches = iterate_batches(prompts, config.batch_size, config.seed, start_step=step)  # seeded epochs of prompts
    try:
        while step < config.steps:
            batch = next(batches)
            seed = config.seed * 1_000_003 + step  # samples and shuffles depend on (seed, step) only
            kl_coef = kl_ctl.value
            roll = rollout(policy, value_head, ref_model, tokenizer, batch.items, score_fn, config, kl_coef, seed,
                           state["score_stats"])
            if not torch.isfinite(roll["raw_scores"]).all():
                bad = (~torch.isfinite(roll["raw_scores"])).nonzero().flatten().tolist()
                raise FloatingPointError(f"score_fn gave a non-finite score at step {step + 1} for prompts "
                                         f"{[batch.rows[i] for i in bad][:8]}: inspect the reward on those")
            state["score_stats"] = roll["score_stats"]
            stats = ppo_update(trainable, optimizer, roll, config, step, seed, batch.rows)
            sequence_kl = roll["kl"].sum(1)  # Σ_t log π_θ(y_t) − log π_ref(y_t): unbiased for KL(π ‖ π_ref)
            scores, lengths = roll["scores"], roll["response_mask"].sum(1).float()  # s̃: normalised, penalised
            episodes += len(batch.items)  # the last batch of an epoch of prompts may be short
            row = {"step": step + 1, "episode": episodes,
                   "objective/kl": sequence_kl.mean().item(),
                   "objective/entropy": roll["entropy"].sum(1).mean().item(),
                   "objective/non_score_reward": (-kl_coef * sequence_kl).mean().item(),
                   "objective/rlhf_reward": (scores - kl_coef * sequence_kl).mean().item(),  # E[s̃ − β KL]
                   "objective/scores": roll["raw_scores"].mean().item(),  # E[s], in the reward's own units
                   "objective/kl_coef": kl_coef, **stats,
                   "val/num_eos_tokens": int(roll["has_eos"].sum()), "val/response_length": lengths.mean().item(),
                   "learning_rate": config.lr}
            kl_ctl.update(row["objective/kl"], len(batch.items))  # β for the next rollout
            step += 1
            if eval_fn is not None and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                row.update(eval_fn())
            metrics.append(row)
            if checkpoint_dir is not None and (step % config.save_every == 0 or step == config.steps):
                _save(checkpoint_dir, trainable, optimizer, kl_ctl, step, metrics, config, state)
            bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.2f}", refresh=False)
            bar.update(1)
            if callback is not None and (step % config.log_every == 0 or step == config.steps):
                callback(step, dict(row))  # a copy: a callback cannot alter the log
    finally:
        bar.close()
    policy.eval()
    return policy, metrics


def make_eval_fn(policy, ref_model, tokenizer, prompts: Sequence[str], reward: Callable, config: PPOConfig,
                 batch_size: int = 64) -> Callable[[], dict]:
    """An ``eval_fn`` for ``train_ppo``: ``evaluate.evaluate_policy`` on held-out prompts with the ground-truth
    ``reward`` (``eval/reward``, ``eval/kl``, ...), same seed each time; latest samples in ``eval_fn.samples``."""

    def eval_fn() -> dict:
        metrics, eval_fn.samples = evaluate_policy(policy, ref_model, tokenizer, list(prompts), reward,
                                                   config.max_new_tokens, config.temperature, seed=config.seed,
                                                   batch_size=batch_size)
        return metrics

    eval_fn.samples = []
    return eval_fn
