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
# name: group_advantages
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (group_advantages.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 4 · Group-relative advantages and the leave-one-out baseline
#
# *Companion of notebook 06. Points: 9 (Q1: 2, Q2: 1, Q3: 2, Q4: 3, Q5: 1).*
#
# RLOO (Ahmadian et al., 2024) and GRPO (Shao et al., 2024) optimise a reward without PPO's value
# head. Each prompt $x$ is sampled $k$ times, $y_1, \dots, y_k \sim \pi_\theta(\cdot \mid x)$, and
# the other samples of the **same prompt** serve as the baseline: how much better did $y_i$ do
# than its siblings? The policy gradient is then the REINFORCE estimate
#
# $$\nabla_\theta J \approx \frac{1}{k} \sum_{i=1}^{k} A_i\, \nabla_\theta \log \pi_\theta(y_i \mid x),$$
#
# and everything hinges on the **advantage** $A_i$. You will write RLOO's and GRPO's advantages,
# then check numerically the one property that separates them: whether the baseline may include
# $y_i$ itself. A last question is about how GRPO's loss weighs the tokens of long responses.
#
# The course library has its own versions (`dpo_edu/critic_free.py`: `rloo_advantages`,
# `grpo_advantages`, `grpo_loss`); the hidden tests compare yours with them, so do not call them
# in your answers.
#
# **Shapes.** A rollout of $n$ prompts sampled $k$ times each is a **flat** tensor of $n \cdot k$
# numbers, a prompt's $k$ samples consecutive: `scores[:k]` are the first prompt's, `scores[k:2 * k]`
# the second's. `x.reshape(-1, k)` makes it `[n, k]`, one row a group, and `.reshape(-1)` flattens
# it back.
#
# **How to work.** Keep this file's name (`group_advantages.ipynb`): the checks read their tests
# from it. Fill in every `...`, run the cell, then its `grader.check("q…")` cell. The public checks
# you see catch the usual slips; hidden tests (other inputs, edge cases) also count toward your
# grade. Use `torch` operations, no Python loops over samples or groups (Q4 runs your code on
# hundreds of thousands of samples). The tests name their own variables with a leading
# underscore, so they leave yours alone.

# %%
import math

import torch

from dpo_edu import critic_free

torch.manual_seed(0)
torch.set_num_threads(1)  # these tensors are small: one CPU thread is the fastest

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [markdown]
# **Q1 · The leave-one-out baseline (2 points).** RLOO's baseline for sample $i$ of a group is the
# mean reward of the **other** $k - 1$ samples of its prompt:
#
# $$b_i = \frac{1}{k-1} \sum_{j \ne i} R_j = \frac{\left(\sum_{j=1}^{k} R_j\right) - R_i}{k - 1}, \qquad A_i = R_i - b_i.$$
#
# The right-hand form needs one sum a group, not $k$. Implement `leave_one_out_baseline(rewards, k)`:
# a flat tensor of $n \cdot k$ rewards in, the flat tensor of the $n \cdot k$ baselines out (same
# shape, same dtype). Raise a `ValueError` when `rewards` is not 1-D or its length is not a multiple
# of $k$: a rollout cut in the wrong place would otherwise mix two prompts in one group, silently.
#
# By hand, $k = 3$: the rewards $(1, 2, 3 \mid 10, 20, 30)$ have the baselines
# $(2.5, 2, 1.5 \mid 25, 20, 15)$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def leave_one_out_baseline(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """b_i = mean of the other k − 1 rewards of sample i's group; groups of k consecutive samples."""
    # BEGIN SOLUTION
    if rewards.ndim != 1 or len(rewards) % k:
        raise ValueError(f"expected a flat tensor of groups of {k}, got shape {tuple(rewards.shape)}")
    groups = rewards.reshape(-1, k)  # [n, k]: one row a prompt
    return ((groups.sum(1, keepdim=True) - groups) / (k - 1)).reshape(-1)
    # END SOLUTION


leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), k=3)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand, k = 3: the other two rewards of each group, averaged
_baseline = leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), 3)
assert _baseline.shape == (6,), "one baseline per sample, as a flat tensor"
assert torch.allclose(_baseline, torch.tensor([2.5, 2.0, 1.5, 25.0, 20.0, 15.0])), f"got {_baseline}"

# %%
# k = 2: each sample's baseline is its sibling's reward
_baseline = leave_one_out_baseline(torch.tensor([0.0, 1.0, 5.0, -5.0]), 2)
assert torch.allclose(_baseline, torch.tensor([1.0, 0.0, -5.0, 5.0])), f"got {_baseline}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# reward − baseline equals the library's RLOO advantages without a KL term, for several k (float64 kept)
from dpo_edu.critic_free import rloo_advantages as _library_rloo

_gen = torch.Generator().manual_seed(0)
for _k in (2, 3, 4, 8):
    _rewards = torch.randn(5 * _k, generator=_gen, dtype=torch.float64)
    _baseline = leave_one_out_baseline(_rewards, _k)
    assert _baseline.shape == _rewards.shape and _baseline.dtype == torch.float64
    _expected = _library_rloo(_rewards, torch.zeros_like(_rewards), 0.0, _k)
    assert torch.allclose(_rewards - _baseline, _expected, atol=1e-12), f"k = {_k}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a sample's own reward never enters its baseline; it moves each sibling's by δ / (k − 1)
_rewards = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5, -0.2, 0.0, 4.0], dtype=torch.float64)
_moved = _rewards.clone()
_moved[1] += 3.0
_delta = leave_one_out_baseline(_moved, 4) - leave_one_out_baseline(_rewards, 4)
assert torch.allclose(_delta, torch.tensor([1.0, 0.0, 1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64), atol=1e-12)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a length that is not a multiple of k, or a 2-D tensor, is an error
for _bad, _k in ((torch.zeros(7), 3), (torch.zeros(5), 2), (torch.zeros(2, 4), 4)):
    try:
        leave_one_out_baseline(_bad, _k)
    except ValueError:
        pass
    else:
        raise AssertionError(f"shape {tuple(_bad.shape)} with k = {_k} must raise a ValueError")

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 1

# %% [markdown]
# **Q2 · RLOO's advantages, with the KL in the reward (1 point).** RLOO keeps the policy near the
# reference $\pi_\text{ref}$ by charging each sample its KL, summed over its tokens,
# $\mathrm{KL}_i = \sum_t \log \pi_\text{old}(y_{i,t}) - \log \pi_\text{ref}(y_{i,t})$, inside the
# reward, before the baseline is taken:
#
# $$R_i = s_i - \beta\, \mathrm{KL}_i, \qquad A_i = R_i - \frac{1}{k-1} \sum_{j \ne i} R_j.$$
#
# Implement `rloo_advantages_with_kl(scores, kl, beta, k)` with your `leave_one_out_baseline`:
# flat tensors of $n \cdot k$ scores and KLs in, the $n \cdot k$ advantages out. Note that the
# advantages of a group always sum to zero.

# %% [raw]
# # BEGIN SOLUTION

# %%
def rloo_advantages_with_kl(scores: torch.Tensor, kl: torch.Tensor, beta: float, k: int) -> torch.Tensor:
    """A_i = R_i − mean_{j≠i} R_j with R = s − β KL (Ahmadian et al., 2024)."""
    # BEGIN SOLUTION
    rewards = scores - beta * kl  # R_i
    return rewards - leave_one_out_baseline(rewards, k)
    # END SOLUTION


rloo_advantages_with_kl(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), beta=0.5, k=2)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand, k = 2: the better score is paid for with twice the KL; at β = ½ the two samples tie, at β = 0 they do not
_scores, _kl = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
assert torch.allclose(rloo_advantages_with_kl(_scores, _kl, 0.5, 2), torch.zeros(2)), "R = s − β KL: (0, 0)"
assert torch.allclose(rloo_advantages_with_kl(_scores, _kl, 0.0, 2), torch.tensor([1.0, -1.0]))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's RLOO advantages for several β and k; each group's advantages sum to 0
from dpo_edu.critic_free import rloo_advantages as _library_rloo

_gen = torch.Generator().manual_seed(1)
for _k in (2, 4, 6):
    _scores = torch.randn(4 * _k, generator=_gen, dtype=torch.float64)
    _kl = 5 * torch.rand(4 * _k, generator=_gen, dtype=torch.float64)
    for _beta in (0.0, 0.05, 0.3, 2.0):
        _mine = rloo_advantages_with_kl(_scores, _kl, _beta, _k)
        assert torch.allclose(_mine, _library_rloo(_scores, _kl, _beta, _k), atol=1e-12), f"k = {_k}, β = {_beta}"
        assert torch.allclose(_mine.reshape(-1, _k).sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-12)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 2

# %% [markdown]
# **Q3 · GRPO's advantages (2 points).** GRPO (Shao et al., 2024, §4.1.2) centres each score on
# the mean of its **whole** group, $y_i$ included, and divides by the group's standard deviation:
#
# $$A_i = \frac{s_i - \bar s}{\operatorname{std}(s_1, \dots, s_k) + 10^{-4}}, \qquad \bar s = \frac{1}{k} \sum_{j=1}^{k} s_j.$$
#
# Follow TRL's conventions, which the library shares: the **sample** standard deviation
# (divided by $k - 1$, torch's default for `.std()`), and $10^{-4}$ added to it, so that a group
# whose samples all score alike gets advantages 0 rather than $0 / 0$. Implement
# `grpo_advantages(scores, k)`: a flat tensor of $n \cdot k$ scores in, the $n \cdot k$ advantages
# out.
#
# By hand, $k = 2$: the group $(0, 1)$ has $\bar s = \tfrac12$ and sample std $1/\sqrt2$, so
# $A = \pm \tfrac12 / (1/\sqrt2 + 10^{-4}) \approx \pm 0.7070$ (with the population std, $\pm 1$);
# the group $(3, 3)$ gets $(0, 0)$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def grpo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A_i = (s_i − mean of its group) / (sample std of its group + 1e-4) (Shao et al., 2024)."""
    # BEGIN SOLUTION
    groups = scores.reshape(-1, k)  # [n, k]
    centred = groups - groups.mean(1, keepdim=True)
    return (centred / (groups.std(1, keepdim=True) + 1e-4)).reshape(-1)
    # END SOLUTION


grpo_advantages(torch.tensor([0.0, 1.0, 3.0, 3.0]), k=2)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand, k = 2: (0, 1) → ±½ / (1/√2 + 1e-4); (3, 3) → (0, 0)
_adv = grpo_advantages(torch.tensor([0.0, 1.0, 3.0, 3.0]), 2)
_a = 0.5 / (1 / math.sqrt(2) + 1e-4)
assert _adv.shape == (4,), "one advantage per sample, as a flat tensor"
assert torch.allclose(_adv, torch.tensor([-_a, _a, 0.0, 0.0]), atol=1e-6), \
    f"got {_adv}: the sample std (÷ (k − 1)), plus 1e-4, and each group on its own"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's GRPO advantages with the group's std, for several k, in float64
from dpo_edu.critic_free import grpo_advantages as _library_grpo

_gen = torch.Generator().manual_seed(2)
for _k in (2, 3, 4, 16):
    _scores = 3 * torch.randn(6 * _k, generator=_gen, dtype=torch.float64) + 1.0
    _mine = grpo_advantages(_scores, _k)
    assert _mine.shape == _scores.shape and _mine.dtype == torch.float64
    assert torch.allclose(_mine, _library_grpo(_scores, _k, scale="group"), atol=1e-10), f"k = {_k}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a group that all scores alike gets 0, not nan; a tiny lead over identical siblings is blown up ...
_adv = grpo_advantages(torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.001], dtype=torch.float64), 4)
assert torch.isfinite(_adv).all() and (_adv[:4] == 0).all()
assert _adv[7] > 1.0, "a 0.001 lead over identical siblings becomes a large advantage: the std divides it"
# ... and centring on the whole group is RLOO's leave-one-out advantage times (k − 1) / k
from dpo_edu.critic_free import rloo_advantages as _library_rloo

_scores = torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
_std = _scores.reshape(-1, 4).std(1, keepdim=True).expand(-1, 4).reshape(-1)
_centred = grpo_advantages(_scores, 4) * (_std + 1e-4)
assert torch.allclose(_centred, 3 / 4 * _library_rloo(_scores, torch.zeros(12, dtype=torch.float64), 0.0, 4),
                      atol=1e-10)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# Your three functions on one group of four samples (as notebook 06's table). GRPO's centred
# scores are RLOO's advantages scaled by $\frac{k-1}{k}$: indeed
# $s_i - \bar s = s_i - \frac{s_i + (k-1)\,\bar s_{-i}}{k} = \frac{k-1}{k}\,(s_i - \bar s_{-i})$,
# with $\bar s_{-i}$ the mean of the others. The division by the std then rescales each group on
# its own.

# %%
scores = torch.tensor([0.2, 1.5, -0.3, 0.8])
rloo = rloo_advantages_with_kl(scores, torch.zeros(4), beta=0.0, k=4)
grpo = grpo_advantages(scores, k=4)
centred = scores - scores.mean()
for name, values in [("scores s_i", scores), ("RLOO A_i", rloo), ("(k−1)/k · RLOO", 3 / 4 * rloo),
                     ("s_i − mean s", centred), ("GRPO A_i", grpo)]:
    print(f"{name:>16}: {values.numpy().round(3)}")

# %% [markdown]
# ## Is the baseline allowed to see the sample?
#
# A baseline $b_i$ leaves the policy gradient unbiased when it does not depend on $y_i$: then
# $\mathbb E[b_i \nabla \log \pi(y_i)] = \mathbb E[b_i]\, \mathbb E[\nabla \log \pi(y_i)] = 0$, since
# the score function has mean zero. RLOO's baseline is built from the other samples, independent
# of $y_i$. GRPO's mean contains $s_i$ itself, with weight $1/k$. Q4 measures what that costs on
# a problem whose exact gradient is known.
#
# **The bandit.** One prompt, 5 possible responses ("actions") $a \in \{0, \dots, 4\}$ with fixed
# rewards $r_a$, and a policy $\pi = \operatorname{softmax}(\theta)$. The objective
# $J(\theta) = \mathbb E_{a \sim \pi}[r_a] = \sum_a \pi_a r_a$ has the exact gradient
#
# $$\nabla_\theta J = \pi \odot \big(r - \mathbb E_\pi[r]\big), \qquad \text{and} \qquad \nabla_\theta \log \pi_a = e_a - \pi,$$
#
# with $e_a$ the one-hot vector of $a$ (differentiate $\theta_a - \log \sum_b e^{\theta_b}$).

# %%
def exact_gradient(theta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """∇_θ E_{a ~ softmax(θ)}[r_a] = π ⊙ (r − E_π[r])."""
    probs = torch.softmax(theta, dim=-1)
    return probs * (rewards - probs @ rewards)


theta = torch.tensor([0.5, -0.3, 1.0, 0.0, -1.0], dtype=torch.float64)
rewards = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5], dtype=torch.float64)
exact_gradient(theta, rewards)

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 3

# %% [markdown]
# **Q4 · Unbiased or not: a Monte-Carlo check (3 points).** Implement
# `reinforce_gradient(theta, rewards, k, baseline, n_groups, generator)`, the Monte-Carlo mean of
# the group REINFORCE estimate over `n_groups` independent groups of $k$ samples:
#
# $$\hat g = \frac{1}{n_\text{groups}} \sum_{\text{groups}} \frac{1}{k} \sum_{i=1}^{k} A_i\, \nabla_\theta \log \pi_{a_i}, \qquad A_i = r_{a_i} - b_i,$$
#
# with `baseline="loo"`: $b_i$ the mean of the other $k - 1$ rewards of the group (your Q1), or
# `baseline="mean"`: $b_i$ the mean of all $k$ rewards of the group, $r_{a_i}$ included (GRPO's
# centring, without the std); any other value is a `ValueError`. Draw all the actions at once,
# `torch.multinomial(probs, n_groups * k, replacement=True, generator=generator)`, a group's $k$
# consecutive, and return a tensor shaped like `theta`. No loop over groups: one-hot vectors
# (`torch.nn.functional.one_hot(actions, len(theta))`) or `index_add_` give every
# $\nabla \log \pi_{a_i}$ at once.
#
# Then compare both estimates with `exact_gradient` (the cell after the tests does it for
# $k = 2, 4, 8$). The hidden tests check, within the Monte-Carlo error of your own estimates, that
# "loo" is **unbiased** and that "mean" converges to $\frac{k-1}{k}\,\nabla_\theta J$: a gradient
# shrunk by $\frac{k-1}{k}$, a half when $k = 2$. (Why exactly that factor? See the identity
# after Q3.)

# %% [raw]
# # BEGIN SOLUTION

# %%
def reinforce_gradient(theta: torch.Tensor, rewards: torch.Tensor, k: int, baseline: str = "loo",
                       n_groups: int = 10_000, generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo mean over groups of 1/k Σ_i (r_{a_i} − b_i) ∇_θ log π_{a_i}, π = softmax(θ)."""
    # BEGIN SOLUTION
    probs = torch.softmax(theta, dim=-1)  # π
    actions = torch.multinomial(probs, n_groups * k, replacement=True, generator=generator)
    sampled = rewards[actions]  # r_{a_i}, flat: a group's k samples consecutive
    if baseline == "loo":
        advantages = sampled - leave_one_out_baseline(sampled, k)
    elif baseline == "mean":
        groups = sampled.reshape(-1, k)
        advantages = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    else:
        raise ValueError(f"baseline must be 'loo' or 'mean', got {baseline!r}")
    grad_logps = torch.nn.functional.one_hot(actions, len(theta)).to(probs.dtype) - probs  # e_a − π
    return (advantages[:, None] * grad_logps).sum(0) / (n_groups * k)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# one number per logit; equal rewards leave nothing to learn: every advantage, and the gradient, is 0
_theta = torch.tensor([0.5, -0.3, 1.0, 0.0, -1.0], dtype=torch.float64)
for _baseline in ("loo", "mean"):
    _g = reinforce_gradient(_theta, torch.full((5,), 2.0, dtype=torch.float64), 4, _baseline, 1000,
                            torch.Generator().manual_seed(0))
    assert _g.shape == (5,) and _g.dtype == torch.float64, "a gradient shaped like theta, in its dtype"
    assert torch.allclose(_g, torch.zeros(5, dtype=torch.float64), atol=1e-12), f"{_baseline}: got {_g}"

# %%
# with the leave-one-out baseline and 50,000 groups, close to the exact gradient (about 7 standard errors)
_theta = torch.tensor([0.5, -0.3, 1.0, 0.0, -1.0], dtype=torch.float64)
_rewards = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5], dtype=torch.float64)
_probs = torch.softmax(_theta, -1)
_g = reinforce_gradient(_theta, _rewards, 4, "loo", 50_000, torch.Generator().manual_seed(1))
assert torch.allclose(_g, _probs * (_rewards - _probs @ _rewards), atol=0.01), f"got {_g}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# "loo" is unbiased: 40 independent estimates of 10,000 groups each; their mean lies within 5 standard errors
# (the spread of the 40, / √40) of the exact gradient, for k = 2 and k = 3, on another bandit
_theta = torch.tensor([0.2, 1.1, -0.5, 0.0, 0.7], dtype=torch.float64)
_rewards = torch.tensor([0.0, 1.0, 3.0, -2.0, 0.5], dtype=torch.float64)
_probs = torch.softmax(_theta, -1)
_exact = _probs * (_rewards - _probs @ _rewards)
for _k in (2, 3):
    _estimates = torch.stack([reinforce_gradient(_theta, _rewards, _k, "loo", 10_000,
                                                 torch.Generator().manual_seed(100 * _k + _seed))
                              for _seed in range(40)])
    _se = _estimates.std(0) / math.sqrt(40)
    assert (_se > 0).all() and _exact.abs().max() > 20 * _se.max(), "independent estimates, precise enough"
    assert ((_estimates.mean(0) - _exact).abs() < 5 * _se).all(), f"k = {_k}: z = {(_estimates.mean(0) - _exact) / _se}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# "mean" is biased: projected on the exact gradient, 40 estimates of 10,000 groups average (k − 1)/k of it
# (within 5 standard errors, at most ±0.008), far from 1, for k = 2 and k = 4
_theta = torch.tensor([0.2, 1.1, -0.5, 0.0, 0.7], dtype=torch.float64)
_rewards = torch.tensor([0.0, 1.0, 3.0, -2.0, 0.5], dtype=torch.float64)
_probs = torch.softmax(_theta, -1)
_exact = _probs * (_rewards - _probs @ _rewards)
for _k in (2, 4):
    _ratios = torch.stack([reinforce_gradient(_theta, _rewards, _k, "mean", 10_000,
                                              torch.Generator().manual_seed(1000 + 100 * _k + _seed))
                           for _seed in range(40)]) @ _exact / (_exact @ _exact)
    _ratio, _se = _ratios.mean().item(), _ratios.std().item() / math.sqrt(40)
    assert 0 < _se < 0.01, "independent estimates, precise enough"
    assert abs(_ratio - (_k - 1) / _k) < 5 * _se, f"k = {_k}: ratio {_ratio:.4f} ± {_se:.4f}, expected {(_k - 1) / _k}"
try:
    reinforce_gradient(_theta, _rewards, 4, "median", 10, torch.Generator().manual_seed(0))
except ValueError:
    pass
else:
    raise AssertionError("a baseline other than 'loo' or 'mean' must raise a ValueError")

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# Your estimator at work: the component of each estimate along the exact gradient, as a fraction
# of it, over 200,000 groups. "loo" reads 1 whatever $k$; "mean" reads $\frac{k-1}{k}$. For a
# single prompt the shrinkage only rescales the step (a smaller learning rate would do the same),
# but it is a bias nonetheless, and GRPO's division by each group's std then rescales every prompt
# differently.

# %%
generator = torch.Generator().manual_seed(0)
exact = exact_gradient(theta, rewards)
for k in (2, 4, 8):
    ratios = {baseline: (reinforce_gradient(theta, rewards, k, baseline, 200_000, generator) @ exact
                         / (exact @ exact)).item() for baseline in ("loo", "mean")}
    print(f"k = {k}: loo {ratios['loo']:.3f}, mean {ratios['mean']:.3f}   ((k − 1)/k = {(k - 1) / k:.3f})")

# %% [markdown]
# ## How GRPO's loss weighs the tokens of long responses
#
# GRPO gives every token of $y_i$ its response's advantage $A_i$, and its loss sums the per-token
# terms $\ell_{i,t} = -\rho_{i,t} A_i$ (at $\rho = 1$, before clipping) into one number; how it sums
# them is `loss_type` (`critic_free.GRPO_LOSSES`). The paper's, "grpo", averages over the tokens
# of each response, then over the $n$ responses:
#
# $$L_\text{grpo} = \frac{1}{n} \sum_{i=1}^{n} \frac{1}{|y_i|} \sum_{t=1}^{|y_i|} \ell_{i,t}.$$
#
# The cell below reads, by autograd through the library's `grpo_loss`, how hard each token's
# $\log \pi_\theta$ is pushed ($-\partial L / \partial \log \pi_\theta(y_{i,t})$) for two **wrong**
# answers ($A = -1$), one of 4 tokens and one of 16, and what the whole response gets.

# %%
mask = torch.zeros(2, 16, dtype=torch.bool)
mask[0, :4], mask[1, :] = True, True  # a 4-token and a 16-token response
for loss_type in critic_free.GRPO_LOSSES:
    logps = torch.zeros(2, 16, requires_grad=True)
    config = critic_free.GRPOConfig(loss_type=loss_type, beta=0.0)
    loss, _ = critic_free.grpo_loss(logps, logps.detach(), logps.detach(), -torch.ones(2), mask, config,
                                    rollout_tokens=int(mask.sum()), minibatches=1, max_new_tokens=16)
    (push,) = torch.autograd.grad(-loss, logps)
    print(f"{loss_type:>8}: per token {push[0, 0].item():+.4f} (4 tokens) {push[1, 0].item():+.4f} (16 tokens);"
          f" per response {push[0].sum().item():+.3f} {push[1].sum().item():+.3f}")

# %% [raw]
# # BEGIN QUESTION
# name: q5
# points: [0, 1]

# %% [markdown]
# **Q5 · The length bias (1 point).** Which of these statements about the "grpo" loss are true?
#
# - **a.** Each token of $y_i$ is pushed with the weight $A_i / (n\,|y_i|)$: with the same
#   advantage, a token of a 100-token response gets a tenth of the push of a token of a 10-token
#   response.
# - **b.** A wrong answer ($A_i < 0$) is pushed down less, per token, the longer it is: padding a
#   wrong answer with more tokens lowers the penalty each of its tokens receives, so long wrong
#   answers are discouraged the least, and the policy drifts toward long responses.
# - **c.** A right answer ($A_i > 0$) is pushed up more, per token, the longer it is.
# - **d.** The bias comes from dividing by each group's std: `scale="none"` alone removes it.
# - **e.** "dr_grpo" (Liu et al., 2025) divides the sum by a constant, $n \times$ `max_new_tokens`,
#   so every token weighs alike whatever its response's length, and the bias is gone.
#
# Set `length_bias` to the set of true letters, for example `{"c", "d"}`.

# %% [raw]
# # BEGIN SOLUTION

# %%
length_bias = {"a", "b", "e"}  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [markdown]
# **Why? (not graded: your instructor may read it.)** In two or three sentences, replacing this
# paragraph: why does the "grpo" sum favour long responses, and how do "bnpo", "dapo" and
# "dr_grpo" avoid it?

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# _An answer:_ "grpo" divides each response's summed loss by its own length $|y_i|$, so a
# response's total push is $A_i / n$ whatever its length, spread over its $|y_i|$ tokens. A long
# wrong answer thus has each of its tokens penalised less than a short wrong answer's tokens, and
# the cheapest way for the policy to lose less on a wrong answer is to make it longer (a right
# answer is rewarded most per token when it is short, which does not offset this on hard
# prompts, where most answers are wrong). "bnpo" and "dapo" divide by a count of tokens shared by
# the whole minibatch or rollout, "dr_grpo" by a constant: every token then weighs alike.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(length_bias, set) and length_bias <= {"a", "b", "c", "d", "e"}, \
    'write a set of letters, for example {"c", "d"}'

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert length_bias == {"a", "b", "e"}

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# **Going further.** Notebook 06 trains RLOO and GRPO on the course's reward model: try its
# Dr. GRPO setting (`loss_type="dr_grpo"`, `scale_rewards="none"`) and watch the mean response
# length. In Q4, what does "mean" give if you multiply its advantages by $\frac{k}{k-1}$? And what
# is the variance of the "loo" estimate for $k = 2$ against $k = 8$ at the same number of
# *samples* ($n_\text{groups} \cdot k$ fixed)?
