# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: ppo_pieces
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (ppo_pieces.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 3 · The moving parts of PPO for language models
#
# *Companion of notebook 05. Points: 8 (Q1: 3, Q2: 3, Q3: 2).*
#
# RLHF with PPO (Ziegler et al., 2019; Stiennon et al., 2020) maximises a reward minus a KL
# penalty to the reference policy. Each PPO step samples responses, turns the score and the KL
# into per-token rewards $r_t$, estimates how much better each sampled token was than expected
# (its **advantage**), and then improves the policy without straying far from the one that
# sampled. Three pieces carry that machinery, and you will write each:
#
# 1. **GAE**, the advantage estimator (Schulman et al., 2016);
# 2. the **clipped policy loss** of PPO (Schulman et al., 2017, Eq. 7);
# 3. the **adaptive KL controller** that tunes the penalty $\beta$ (Ziegler et al., 2019, §2.2).
#
# The course's trainer (`dpo_edu/ppo.py`, with the losses in `dpo_edu/losses.py`) has its own
# versions; the hidden tests compare yours with them, so do not call them in your answers.
#
# **Shapes.** Per-token tensors are `[batch, T]`: one row per sampled response, one column per
# response token. Responses have different lengths, so rows are **right-padded** and `mask` is 1
# on real tokens and 0 on the padding after a row's last token.
#
# **How to work.** Keep this file's name (`ppo_pieces.ipynb`): the checks read their tests from it.
# Fill in every `...`, run the cell, then its `grader.check("q…")` cell. The
# public checks you see catch the usual slips; hidden tests (other inputs, edge cases) also count
# toward your grade. The tests name their own variables with a leading underscore, so they
# leave yours alone.

# %%
import math

import torch

torch.manual_seed(0)
torch.set_num_threads(1)  # these tensors are tiny: one CPU thread is the fastest

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3

# %% [markdown]
# **Q1 · Generalised advantage estimation (3 points).** With a value estimate $V_t$ of each
# position, the TD error of token $t$ is
#
# $$\delta_t = r_t + \gamma V_{t+1} - V_t, \qquad V_{T} = 0 \text{ after a row's last token (the episode ends)},$$
#
# and GAE averages the $k$-step estimates with weights $\lambda^k$, computed backwards in time:
#
# $$A_t = \delta_t + \gamma \lambda A_{t+1}, \qquad A_T = 0, \qquad R_t = A_t + V_t \;\text{(the value target).}$$
#
# $\lambda = 0$ gives $A_t = \delta_t$ (trust $V$: low variance, biased); $\lambda = 1$ with
# $\gamma = 1$ gives $R_t = \sum_{s \ge t} r_s$ (the sampled return: unbiased, noisy).
#
# Implement `gae(rewards, values, mask, gamma, lam)` returning `(advantages, returns)`, both
# `[batch, T]` and **0 at the padding**. Loop over the columns from $T - 1$ down to 0, with the
# rows of the batch handled at once. Tip: set `rewards` and `values` to 0 on the padding first
# (`torch.where(mask.bool(), x, 0.0)`); then padding yields $\delta = 0$ and $A = 0$, and a row's
# last real token sees $V_{t+1} = 0$ and $A_{t+1} = 0$, as it should.

# %% [raw]
# # BEGIN SOLUTION

# %%
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns (A + V) of right-padded rows, 0 where ``mask`` is 0."""
    # BEGIN SOLUTION
    mask = mask.bool()
    rewards, values = torch.where(mask, rewards, 0.0), torch.where(mask, values, 0.0)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # V_{t+1}
    next_advantage = torch.zeros_like(rewards[:, 0])  # A_{t+1}
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t
        next_advantage = delta + gamma * lam * next_advantage  # A_t
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, torch.where(mask, advantages + values, 0.0)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand, γ = 1, λ = ½: δ = (−¼, ¼, ½), A = (−¼ + ¼, ¼ + ¼, ½) = (0, ½, ½), R = A + V
_adv, _ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.5]]), torch.ones(1, 3),
                 gamma=1.0, lam=0.5)
assert torch.allclose(_adv, torch.tensor([[0.0, 0.5, 0.5]])), f"advantages {_adv}, expected [[0, 0.5, 0.5]]"
assert torch.allclose(_ret, torch.tensor([[0.5, 0.75, 1.0]])), f"returns {_ret}, expected [[0.5, 0.75, 1.0]]"

# %%
# padding: the second row ends after 2 tokens; its padding gets 0 and its last token sees V = 0 after it
_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
_values = torch.tensor([[0.5, 0.25, 0.5], [1.0, 1.0, 9.0]])
_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
_adv, _ret = gae(_rewards, _values, _mask, gamma=1.0, lam=0.5)
assert _adv[1, 2] == 0 and _ret[1, 2] == 0, "advantages and returns are 0 on the padding"
assert torch.allclose(_adv[1, :2], torch.tensor([0.5, 1.0])), "the padding's reward and value must not leak in"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# against a plain Python loop over one row, γ = 0.9, λ = 0.8
_r, _v = [0.1, -0.3, 0.0, 0.7, 1.5], [0.2, 0.4, -0.1, 0.3, 0.6]
_expected, _next_a = [0.0] * 5, 0.0
for _t in reversed(range(5)):
    _next_v = _v[_t + 1] if _t + 1 < 5 else 0.0
    _next_a = _r[_t] + 0.9 * _next_v - _v[_t] + 0.9 * 0.8 * _next_a
    _expected[_t] = _next_a
_adv, _ret = gae(torch.tensor([_r], dtype=torch.float64), torch.tensor([_v], dtype=torch.float64),
                 torch.ones(1, 5), gamma=0.9, lam=0.8)
assert torch.allclose(_adv, torch.tensor([_expected], dtype=torch.float64), atol=1e-12)
assert torch.allclose(_ret, _adv + torch.tensor([_v], dtype=torch.float64), atol=1e-12)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's GAE on a right-padded batch, for several γ and λ
from dpo_edu.ppo import gae as _library_gae

_gen = torch.Generator().manual_seed(0)
_rewards, _values = torch.randn(6, 9, generator=_gen), torch.randn(6, 9, generator=_gen)
_lengths = torch.tensor([9, 1, 4, 7, 2, 9])
_mask = (torch.arange(9)[None, :] < _lengths[:, None]).long()
for _gamma, _lam in [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)]:
    _mine, _lib = gae(_rewards, _values, _mask, _gamma, _lam), _library_gae(_rewards, _values, _mask, _gamma, _lam)
    assert torch.allclose(_mine[0], _lib[0], atol=1e-5) and torch.allclose(_mine[1], _lib[1], atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the two extremes: λ = 0 gives the TD errors; γ = λ = 1 gives the returns Σ_{s ≥ t} r_s, whatever V
_gen = torch.Generator().manual_seed(1)
_rewards, _values = torch.randn(3, 5, generator=_gen), torch.randn(3, 5, generator=_gen)
_mask = torch.ones(3, 5)
_next_values = torch.cat([_values[:, 1:], torch.zeros(3, 1)], dim=1)
assert torch.allclose(gae(_rewards, _values, _mask, 0.9, 0.0)[0], _rewards + 0.9 * _next_values - _values, atol=1e-6)
_monte_carlo = _rewards.flip(1).cumsum(1).flip(1)
assert torch.allclose(gae(_rewards, _values, _mask, 1.0, 1.0)[1], _monte_carlo, atol=1e-5)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 3

# %% [markdown]
# **Q2 · The clipped policy loss (3 points).** The rollout was sampled by $\pi_\text{old}$; the
# policy being optimised is $\pi_\theta$. With the probability ratio of each sampled token
#
# $$\rho_t = \frac{\pi_\theta(y_t)}{\pi_\text{old}(y_t)} = \exp\!\big(\log \pi_\theta(y_t) - \log \pi_\text{old}(y_t)\big),$$
#
# PPO maximises $\min\!\big(\rho_t A_t,\ \operatorname{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon) A_t\big)$,
# the pessimistic of an unclipped and a clipped surrogate. As a loss to minimise, averaged over
# the real tokens:
#
# $$L^\text{CLIP} = \frac{\sum_t m_t \max\!\big(-A_t \rho_t,\ -A_t \operatorname{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big)}{\sum_t m_t}.$$
#
# Implement `ppo_clip_loss(logprobs, old_logprobs, advantages, mask, cliprange)` (all `[batch, T]`
# except `cliprange` $= \epsilon$), returning a 0-dimensional tensor. Useful: `torch.exp`,
# `torch.clamp`, `torch.maximum`.
#
# By hand, with $\epsilon = 0.2$: a token with $\rho = 1.5$ and $A = 1$ contributes
# $\max(-1.5, -1.2) = -1.2$. Once the ratio has moved past $1 + \epsilon$ in the direction the
# advantage favours, the loss is flat in $\theta$: no gradient pushes it further.

# %% [raw]
# # BEGIN SOLUTION

# %%
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, cliprange: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate as a loss: the masked mean of max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε))."""
    # BEGIN SOLUTION
    ratio = torch.exp(logprobs - old_logprobs)  # ρ_t
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    mask = mask.bool()
    return torch.where(mask, torch.maximum(unclipped, clipped), 0.0).sum() / mask.sum()
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand, ε = 0.2: ρ = (1, 1.5, 0.5, 1.1), A = (1, 1, −1, −2) → (−1, −1.2, 0.8, 2.2), mean 0.2
_old = torch.zeros(1, 4)
_new = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))
_loss = ppo_clip_loss(_new, _old, torch.tensor([[1.0, 1.0, -1.0, -2.0]]), torch.ones(1, 4), cliprange=0.2)
assert _loss.dim() == 0, "ppo_clip_loss returns one number: the mean over the real tokens"
assert torch.isclose(_loss, torch.tensor(0.2), atol=1e-6), f"got {_loss}, expected 0.2"

# %%
# at the first minibatch π_θ = π_old: ρ = 1 and the loss is −mean(A) over the real tokens
_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, -9.0]])
_adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
_loss = ppo_clip_loss(_logprobs, _logprobs, _adv, torch.tensor([[1, 1, 1], [1, 1, 0]]))
assert torch.isclose(_loss, torch.tensor(-3.0)), "average over the real tokens only (mask = 1)"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's clipped loss on a right-padded batch, for several ε
from dpo_edu.losses import ppo_policy_loss as _library_loss

_gen = torch.Generator().manual_seed(0)
_old = -3 * torch.rand(5, 8, generator=_gen)
_new = _old + 0.5 * torch.randn(5, 8, generator=_gen)
_adv = torch.randn(5, 8, generator=_gen)
_mask = (torch.arange(8)[None, :] < torch.tensor([8, 3, 1, 6, 8])[:, None]).long()
for _eps in (0.1, 0.2, 0.3):
    assert torch.isclose(ppo_clip_loss(_new, _old, _adv, _mask, _eps), _library_loss(_new, _old, _adv, _mask, _eps)[0],
                         atol=1e-6)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the gradient vanishes exactly where clipping is active (ρ > 1 + ε with A > 0, ρ < 1 − ε with A < 0)
_new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.05]], dtype=torch.float64)).requires_grad_()
_adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
ppo_clip_loss(_new, torch.zeros(1, 5, dtype=torch.float64), _adv, torch.ones(1, 5), 0.2).backward()
assert (_new.grad[0, :2] == 0).all(), "clipped tokens get no gradient"
assert (_new.grad[0, 2:] != 0).all(), "unclipped tokens do"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 2

# %% [markdown]
# **Q3 · The adaptive KL controller (2 points).** The per-token rewards carry a penalty
# $-\beta\,(\log \pi_\theta(y_t) - \log \pi_\text{ref}(y_t))$. Too small a $\beta$ and the policy
# drifts far from $\pi_\text{ref}$ (and games the reward model); too large and it never moves.
# Rather than guess, Ziegler et al. (2019, §2.2) steer the measured KL toward a target with a
# proportional controller, after each batch of $n$ episodes:
#
# $$e = \operatorname{clip}\!\left(\frac{\mathrm{KL}}{\mathrm{KL}_\text{target}} - 1,\ -0.2,\ 0.2\right), \qquad \beta \leftarrow \beta \left(1 + e \cdot \frac{n}{H}\right),$$
#
# with a horizon $H$ (10,000 episodes in the paper). The clip bounds how fast $\beta$ can move
# when one batch's KL is far off.
#
# Implement `updated_kl_coef(kl_coef, current_kl, target, n_steps, horizon)`, returning the new
# $\beta$ as a float. By hand: $\beta = 0.1$, KL $= 12$, target $6$: $e = \operatorname{clip}(1) = 0.2$,
# and with $n = 256$, $H = 10{,}000$, the new $\beta = 0.1 \cdot (1 + 0.2 \cdot 0.0256) = 0.100512$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def updated_kl_coef(kl_coef: float, current_kl: float, target: float, n_steps: int, horizon: int) -> float:
    """β after one update of the adaptive KL controller (Ziegler et al., 2019)."""
    # BEGIN SOLUTION
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: KL twice the target, error clipped to 0.2
assert math.isclose(updated_kl_coef(0.1, current_kl=12.0, target=6.0, n_steps=256, horizon=10_000), 0.100512)

# %%
# on target, β stays put; below it, β shrinks
assert math.isclose(updated_kl_coef(0.1, 6.0, 6.0, 256, 10_000), 0.1)
assert updated_kl_coef(0.1, 3.0, 6.0, 256, 10_000) < 0.1

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the clip: any KL beyond 1.2 × target moves β as much as 1.2 × target does; KL = 0 as much as 0.8 × target
assert math.isclose(updated_kl_coef(0.2, 1000.0, 6.0, 64, 1000), updated_kl_coef(0.2, 7.2, 6.0, 64, 1000))
assert math.isclose(updated_kl_coef(0.2, 0.0, 6.0, 64, 1000), 0.2 * (1 - 0.2 * 64 / 1000))
assert math.isclose(updated_kl_coef(0.2, 6.6, 6.0, 64, 1000), 0.2 * (1 + 0.1 * 64 / 1000))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# follows the library's controller over a run of 40 batches
from dpo_edu.ppo import adapt_kl_coef as _library_update

_library_beta, _beta = 0.05, 0.05
_gen = torch.Generator().manual_seed(0)
for _kl in (12 * torch.rand(40, generator=_gen, dtype=torch.float64)).tolist():
    _library_beta = _library_update(_library_beta, _kl, 128, target=6.0, horizon=2_000)
    _beta = updated_kl_coef(_beta, _kl, 6.0, 128, 2_000)
    assert math.isclose(_beta, _library_beta, rel_tol=1e-12)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## The controller at work
#
# A toy model of training: the KL a batch reaches is inversely proportional to $\beta$ (a larger
# penalty keeps the policy closer), here $\mathrm{KL} = 0.3 / \beta$, so $\beta = 0.05$ would hit
# the target of 6 nats. Starting from $\beta = 0.02$ (KL 15), the controller raises $\beta$ by at
# most $0.2 \cdot n/H \approx 0.5\%$ a batch, then slows down as the KL nears its target: a
# slow, steady thermostat rather than a jump.

# %%
beta, target = 0.02, 6.0
for batch_index in range(1, 301):
    kl = 0.3 / beta  # the toy "training run"
    beta = updated_kl_coef(beta, kl, target, n_steps=256, horizon=10_000)
    if batch_index % 50 == 0:
        print(f"after {batch_index * 256:>6,} episodes: β = {beta:.4f}, KL = {kl:5.2f}")
