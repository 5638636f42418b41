"""RLHF with PPO (DPO paper §3, Eq. 3): max_π E[r_φ(x, y)] − β KL(π ‖ π_ref), after Ziegler et al.

One step: sample y ~ π_θ(·|x); score s(x, y) and normalise it on π_ref's samples, s̃ = (s − μ₀)/σ₀;
per-token rewards r_t = −β (log π_θ(y_t) − log π_ref(y_t)) + [t = last] s̃; GAE advantages;
``ppo_epochs`` passes of the clipped loss; then β steers the sequence KL toward a target.
The implementation details (Huang et al., 2023), each tied to its line: docs/notes.md#ppo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .losses import ppo_policy_loss, ppo_value_loss
from .models import chunked_logps, response_logps
from .reward_model import last_token_index, score_samples
from .sampling import Generation, check_prompts, sample
from .training import (Batch, Optimizer, TrainConfig, check_finite_scores, disable_dropout,
                       minibatch_updates, train_loop)
from .validate import check_int, check_positive


@dataclass(frozen=True)
class PPOConfig(TrainConfig):
    """PPO for language models; defaults as TRL's PPO and lm-human-preferences unless noted."""

    lr: float = 1e-4  # AdamW learning rate, constant (tiny GPT-2; gpt2: ~1e-5)
    batch_size: int = 32  # prompts per rollout, one completion each (episodes per step)
    steps: int | None = 20  # PPO steps, each one rollout and its ppo_epochs passes
    adam_eps: float = 1e-5  # Adam's ε (Huang et al.)
    log_every: int = 1  # call the callback every this many steps
    save_every: int = 10  # steps between checkpoints
    mini_batch_size: int = 8  # rows per optimiser step within a PPO epoch
    ppo_epochs: int = 4  # passes over each rollout, reshuffled each time (TRL's num_ppo_epochs)
    kl_coef: float = 0.1  # β of the per-token KL penalty (its first value if target_kl is set)
    target_kl: float | None = None  # sequence KL (nats) β steers to (Ziegler: 6); None: β fixed
    kl_horizon: int = 10_000  # the adaptive controller's horizon in episodes (as Ziegler et al.)
    gamma: float = 1.0  # discount γ; 1: the score comes once, at the end
    lam: float = 0.95  # GAE λ: 0 trusts V (bias), 1 trusts the sampled returns (variance)
    cliprange: float = 0.2  # ε: the policy ratio ρ is clipped to [1 − ε, 1 + ε]
    cliprange_value: float = 0.2  # ε_v: a value prediction moves at most this far from the old one
    vf_coef: float = 0.1  # weight of the value loss (it shares the policy's trunk)
    normalize_scores: bool = True  # s̃ = (s − μ₀)/σ₀ with μ₀, σ₀ of the first rollout; False: s̃ = s
    missing_eos_penalty: float | None = None  # s̃ of a response with no EOS; None: off
    whiten_rewards: bool = False  # scale the per-token rewards to unit variance before GAE

    def __post_init__(self):
        super().__post_init__()
        for name in ("cliprange", "cliprange_value", "target_kl"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.missing_eos_penalty is not None and not math.isfinite(self.missing_eos_penalty):
            raise ValueError(f"missing_eos_penalty must be a finite number or None, got "
                             f"{self.missing_eos_penalty!r}")
        for name in ("mini_batch_size", "ppo_epochs", "kl_horizon"):
            check_int(name, getattr(self, name), 1)
        if self.grad_accum_steps != 1:
            raise ValueError("grad_accum_steps must be 1 for PPO: mini_batch_size plays that role")
        for name, high in (("kl_coef", math.inf), ("vf_coef", math.inf), ("gamma", 1), ("lam", 1)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= high and value != math.inf):
                raise ValueError(f"{name} must be a number in [0, {high}], got {value!r}")


def adapt_kl_coef(kl_coef: float, kl: float, n: int, target: float | None, horizon: int) -> float:
    """β for the next rollout: fixed without a target, else Ziegler et al.'s controller (§2.2):

        β ← β (1 + e · n / horizon) with e = clip(KL / target − 1, −0.2, 0.2) after n episodes
    """
    if target is None:
        return kl_coef
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n / horizon)


# --- advantages -----------------------------------------------------------------------------------


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries of the batch (TRL's masked_whiten); 0 elsewhere.

    The variance is unbiased (÷ (n − 1)); ``shift_mean=False`` adds the mean back (scales only).
    """
    mask = mask.bool()
    n = mask.sum()
    mean = torch.where(mask, x, 0.0).sum() / n.clamp(min=1)
    var = torch.where(mask, (x - mean) ** 2, 0.0).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask, out if shift_mean else out + mean, 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """``(advantages, returns)`` by GAE (Schulman et al., 2016) over the masked tokens.

    Masked positions are skipped (they pass A_t+1 and V_t+1 on) and get 0; V = 0 after a row's end.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape")
    mask = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])  # A_t+1
    next_value = torch.zeros_like(rewards[:, 0])  # V_t+1; 0 after the last token (episode's end)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γ V_t+1 − V_t
        advantage = delta + gamma * lam * next_advantage  # A_t = δ_t + γλ A_t+1
        advantages[:, t] = torch.where(mask[:, t], advantage, 0.0)
        next_advantage = torch.where(mask[:, t], advantage, next_advantage)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
    # R_t = A_t + V_t, the value target
    return advantages, torch.where(mask, advantages + values, 0.0)


# --- policy, value head, rollout ------------------------------------------------------------------


class ValueHead(nn.Module):
    """V(x, y_<t) = w · h_t + b on the policy's last hidden state, float32; w = b = 0 at first."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        # V ≡ 0 and ∂V/∂h = 0: the first updates leave the trunk to the policy
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.float()).squeeze(-1)


@dataclass
class Rollout:
    """One batch of samples and what PPO learns from them.

    Per-token tensors are (rows, L − 1), as ``models.response_logps`` returns them: column t scores
    token t + 1, 0 off the response.
    """

    batch: dict  # (rows, L) input_ids, attention_mask, response_mask: [pads, x | y, pads]
    temperature: float  # T the samples were drawn at, and every log-prob of them is taken at
    mask: Tensor  # (rows, L − 1) bool: the sampled tokens, EOS included
    logprobs: Tensor  # (rows, L − 1) log π_θ(y_t) when sampled
    ref_logprobs: Tensor  # (rows, L − 1) log π_ref(y_t)
    values: Tensor  # (rows, L − 1) V(x, y_<t) when sampled
    entropy: Tensor  # (rows, L − 1) H of π_θ(·|x, y_<t)
    raw_scores: Tensor  # (rows,) s(x, y) in the reward's own units
    scores: Tensor  # (rows,) s̃: normalised, penalised when asked
    has_eos: Tensor  # (rows,) bool: the response ended
    advantages: Tensor  # (rows, L − 1) whitened GAE advantages
    returns: Tensor  # (rows, L − 1) value targets A + V
    score_stats: tuple[float, float] | None  # (μ₀, σ₀)

    @property
    def kl(self) -> Tensor:
        """(rows, L − 1) log π_θ(y_t) − log π_ref(y_t): its row sums estimate KL(π ‖ π_ref)."""
        return torch.where(self.mask, self.logprobs - self.ref_logprobs, 0.0)

    def rows(self, index: Tensor) -> dict:
        """The batch of some rows, for ``models.response_logps``."""
        return {key: value[index] for key, value in self.batch.items()}


def normalize_scores(raw: Tensor, stats: tuple[float, float] | None) -> tuple[Tensor, tuple]:
    """s̃ = (s − μ₀) / σ₀ and (μ₀, σ₀), measured on this batch when ``stats`` is None (π_ref's)."""
    if stats is None:
        stats = (raw.mean().item(), raw.std().item() if len(raw) > 1 else 0.0)
        # s̃ would be 0/0 now and ±1e8 at the first score that differs (a NaN score is named later)
        if not stats[1] > 1e-6 and torch.isfinite(raw).all():
            raise ValueError(
                f"the first rollout's {len(raw)} score(s) have no spread (σ₀ = {stats[1]:g}), "
                "so they cannot normalise the reward: give PPO ≥ 2 prompts a rollout and a reward "
                "that varies on π_ref's samples, or set normalize_scores=False")
    return (raw - stats[0]) / (stats[1] + 1e-8), stats


@torch.no_grad()
def rollout(policy, value_head: ValueHead, ref_model, tokenizer, prompts: Sequence[str], score_fn,
            config: PPOConfig, generation: Generation, kl_coef: float, seed: int = 0,
            score_stats: tuple[float, float] | None = None) -> Rollout:
    """Sample one completion per prompt, score it, and compute PPO's advantages (no gradients)."""
    temperature = generation.temperature  # the same T for sampling and for every log-prob below
    samples = sample(policy, tokenizer, prompts, generation, seed)
    # in chunks of mini_batch_size rows: logits are (tokens, vocab)
    now = chunked_logps(policy, samples.batch, temperature, config.mini_batch_size, value_head,
                        entropy=True)
    mask, logprobs, entropy, values = now.mask, now.logps, now.entropy, now.values
    ref_logprobs = chunked_logps(ref_model, samples.batch, temperature,
                                 config.mini_batch_size).logps  # log π_ref, same T
    device = logprobs.device
    raw = score_samples(score_fn, tokenizer, samples)
    scores = raw
    if config.normalize_scores:
        scores, score_stats = normalize_scores(raw, score_stats)
    has_eos = samples.ended
    if config.missing_eos_penalty is not None:  # Huang et al.: a cut-off response scores a penalty
        scores = torch.where(has_eos, scores, float(config.missing_eos_penalty))
    # r_t = −β (log π_θ − log π_ref)
    rewards = -kl_coef * torch.where(mask, logprobs - ref_logprobs, 0.0)
    last = last_token_index(mask)  # each row's last response token (its EOS, if it has one)
    rewards[torch.arange(len(rewards), device=device), last] += scores  # + s̃ at the last token
    if config.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    return Rollout(samples.batch, temperature, mask, logprobs, ref_logprobs, values, entropy, raw,
                   scores, has_eos, whiten(advantages, mask), returns, score_stats)


# --- optimisation ---------------------------------------------------------------------------------


def ppo_update(trainable: nn.ModuleDict, optimizer: Optimizer, roll: Rollout, config: PPOConfig,
               batch: Batch, seed: int) -> dict:
    """``ppo_epochs`` passes of shuffled minibatches over a rollout; the minibatches' mean metrics.

    A non-finite loss names the step, the PPO epoch, the minibatch and its prompts (``batch.rows``).
    """
    policy, value_head = trainable["policy"], trainable["value_head"]

    def loss_fn(rows: Tensor) -> tuple[Tensor, dict]:
        rows = rows.to(roll.scores.device)
        now = response_logps(policy, roll.rows(rows), roll.temperature, value_head, entropy=True)
        logprobs, entropy, values, mask = now.logps, now.entropy, now.values, roll.mask[rows]
        pg_loss, pg_stats = ppo_policy_loss(logprobs, roll.logprobs[rows], roll.advantages[rows],
                                            mask, config.cliprange)
        vf_loss, vf_stats = ppo_value_loss(values, roll.values[rows], roll.returns[rows], mask,
                                           config.cliprange_value)
        entropy = torch.where(mask, entropy, 0.0).sum() / mask.sum().clamp(min=1)
        # L = L^CLIP + c_v L^V (no entropy bonus)
        return pg_loss + config.vf_coef * vf_loss, {
            "loss/policy": pg_loss.item(), "loss/value": vf_loss.item(), **pg_stats, **vf_stats,
            "policy/entropy": entropy.item()}

    return minibatch_updates(optimizer, loss_fn, len(roll.scores), config.mini_batch_size,
                             config.ppo_epochs, batch, seed)


# --- training -------------------------------------------------------------------------------------


def train_ppo(policy, ref_model, tokenizer, prompts: Sequence[str], score_fn,
              config: PPOConfig | None = None, generation: Generation | None = None,
              callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
              eval_fn: Callable[[], dict] | None = None, value_head: ValueHead | None = None):
    """Optimise ``policy`` (in place) by PPO against ``score_fn``; returns ``(policy, metrics)``.

    ``score_fn``: a ``RewardModel`` (RLHF) or any callable texts → rewards on prompt ⊕ completion
    (PPO-GT). ``ref_model`` is π_ref, frozen; ``value_head`` (default: a new zero one) is trained.
    """
    config = config if config is not None else PPOConfig()
    generation = generation if generation is not None else Generation()
    if not isinstance(config, PPOConfig):
        raise ValueError(f"config must be a PPOConfig, got {type(config).__name__}")
    prompts = check_prompts(prompts)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer needs a pad token distinct from EOS "
                         "(models.load_tokenizer adds one)")
    disable_dropout(ref_model.eval())  # π_ref's log-probs: deterministic
    device = policy.get_input_embeddings().weight.device
    value_head = value_head if value_head is not None else ValueHead(policy.config.hidden_size)
    trainable = nn.ModuleDict({"policy": policy, "value_head": value_head.to(device)})
    state = {"kl_coef": config.kl_coef, "score_stats": None, "episodes": 0}  # resumed with the run

    def step(batch: Batch, optimizer: Optimizer) -> dict:
        # samples and shuffles depend on (seed, step) only
        seed = config.seed * 1_000_003 + batch.step
        kl_coef = state["kl_coef"]
        roll = rollout(policy, value_head, ref_model, tokenizer, batch.items, score_fn, config,
                       generation, kl_coef, seed, state["score_stats"])
        check_finite_scores(roll.raw_scores, batch)
        state["score_stats"] = roll.score_stats
        stats = ppo_update(trainable, optimizer, roll, config, batch, seed)
        sequence_kl = roll.kl.sum(1)  # Σ_t log π_θ(y_t) − log π_ref(y_t): unbiased for the KL
        state["episodes"] += len(batch.items)  # the last batch of an epoch of prompts may be short
        row = {"episode": state["episodes"],
               "objective/kl": sequence_kl.mean().item(),
               "objective/entropy": roll.entropy.sum(1).mean().item(),
               "objective/non_score_reward": (-kl_coef * sequence_kl).mean().item(),
               # E[s̃ − βKL]
               "objective/rlhf_reward": (roll.scores - kl_coef * sequence_kl).mean().item(),
               "objective/scores": roll.raw_scores.mean().item(),  # E[s], in the reward's own units
               "objective/kl_coef": kl_coef, **stats,
               "val/num_eos_tokens": int(roll.has_eos.sum()),
               "val/response_length": roll.mask.sum(1).float().mean().item()}
        # β for the next rollout
        state["kl_coef"] = adapt_kl_coef(kl_coef, row["objective/kl"], len(batch.items),
                                         config.target_kl, config.kl_horizon)
        return row

    metrics = train_loop(trainable, prompts, step, config, callback=callback,
                         checkpoint_dir=checkpoint_dir, eval_fn=eval_fn, desc="PPO", state=state,
                         # a checkpoint's samples were drawn with these
                         settings={"generation": asdict(generation)},
                         show=("objective/scores", "objective/kl"))
    return policy, metrics
