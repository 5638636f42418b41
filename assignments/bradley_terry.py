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
# name: bradley_terry
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (bradley_terry.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 1 · Bradley–Terry: from comparisons back to rewards
#
# *Companion of notebook 01. Points: 8 (Q1: 2, Q2: 2, Q3: 3, Q4: 1).*
#
# RLHF and DPO both start from **pairwise preferences**: a person saw two responses and picked
# one. The Bradley–Terry model links such choices to a hidden scalar **reward** r:
#
# $$p(i \succ j) = \frac{e^{r_i}}{e^{r_i} + e^{r_j}} = \sigma(r_i - r_j), \qquad \sigma(z) = \frac{1}{1 + e^{-z}}.$$
#
# In this assignment you write, from scratch, the three pieces that turn comparisons into
# rewards: a numerically stable $\log\sigma$, the Bradley–Terry negative log-likelihood, and its
# maximum-likelihood fit. The course library `dpo_edu` has its own versions
# (`dpo_edu/bradley_terry.py`); the hidden tests compare yours with them, so do not call them in
# your answers.
#
# **How to work.** Keep this file's name (`bradley_terry.ipynb`): the checks read their tests from it.
# Fill in every `...`, run the cell, then run the `grader.check("q…")` cell
# below it. The checks you see are the *public* tests: they catch the usual slips. Your grade
# also counts *hidden* tests (other inputs, edge cases), so passing the public tests is necessary,
# not sufficient. Use `torch` operations only (no loops over items, no NumPy), so that autograd
# works through your code. The tests run in your notebook's namespace and name their own
# variables with a leading underscore (`_loss`), so they leave yours alone.

# %%
import math

import torch

from dpo_edu import bradley_terry as bt

torch.manual_seed(0)
torch.set_num_threads(1)  # these tensors are tiny: one CPU thread is the fastest

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [markdown]
# **Q1 · A stable log-sigmoid (2 points).** The log-likelihood is a sum of $\log\sigma(z)$. The
# textbook formula `torch.log(torch.sigmoid(z))` returns `-inf` once $e^{-z}$ overflows
# (try `z = -1000.0`): $\sigma(z)$ rounds to 0 before the log is taken. Rewrite it so that no
# exponential ever sees a positive argument:
#
# $$\log\sigma(z) = -\log(1 + e^{-z}) = \min(z, 0) - \log\!\left(1 + e^{-|z|}\right).$$
#
# Check the identity for $z \ge 0$ and $z < 0$ on paper, then implement `log_sigmoid(z)`
# elementwise for a tensor `z` of any shape, keeping its dtype. Useful: `torch.minimum`,
# `torch.log1p` (accurate $\log(1 + x)$ for small $x$), `torch.exp`, `.abs()`. Do not call
# `torch.nn.functional.logsigmoid`: it is what the hidden tests compare with.

# %% [raw]
# # BEGIN SOLUTION

# %%
def log_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """log σ(z), elementwise, without overflow for any finite z."""
    # BEGIN SOLUTION
    return torch.minimum(z, torch.zeros_like(z)) - torch.log1p(torch.exp(-z.abs()))
    # END SOLUTION


log_sigmoid(torch.tensor([-1000.0, -2.0, 0.0, 2.0, 1000.0]))

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# log σ(0) = log ½
assert torch.isclose(log_sigmoid(torch.tensor(0.0)), torch.tensor(-math.log(2)))

# %%
# log σ(2) = −log(1 + e^−2) and log σ(−2) = −2 − log(1 + e^−2)
_out = log_sigmoid(torch.tensor([2.0, -2.0]))
assert torch.allclose(_out, torch.tensor([-math.log1p(math.exp(-2)), -2 - math.log1p(math.exp(-2))]))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# no overflow: log σ(−1000) = −1000 and log σ(1000) = 0, both finite
_out = log_sigmoid(torch.tensor([-1000.0, 1000.0], dtype=torch.float64))
assert _out.dtype == torch.float64 and torch.isfinite(_out).all()
assert torch.allclose(_out, torch.tensor([-1000.0, 0.0], dtype=torch.float64))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals torch's own logsigmoid on a grid, for a 2-D input, in float64
_z = torch.linspace(-60, 60, 1203, dtype=torch.float64).reshape(3, 401)
_out = log_sigmoid(_z)
assert _out.shape == _z.shape
assert torch.allclose(_out, torch.nn.functional.logsigmoid(_z), rtol=1e-12, atol=1e-14)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2

# %% [markdown]
# **Q2 · The negative log-likelihood (2 points).** We observe $N$ comparisons: in comparison $k$,
# item `winners[k]` $= w_k$ was preferred to item `losers[k]` $= l_k$. The mean negative
# log-likelihood of a reward vector $r$ (one entry per item) is
#
# $$\mathcal{L}(r) = -\frac{1}{N} \sum_{k=1}^{N} \log \sigma\!\left(r_{w_k} - r_{l_k}\right).$$
#
# Implement `bt_nll(reward, winners, losers)` with your `log_sigmoid`. `winners` and `losers`
# are integer tensors of item indices of the same length: `reward[winners]` picks $r_{w_k}$ for
# every $k$ at once. It returns a 0-dimensional tensor. This is the same loss a reward model is
# trained with (DPO paper, Eq. 2), with $r_{w_k}$ read from a network instead of a table.

# %% [raw]
# # BEGIN SOLUTION

# %%
def bt_nll(reward: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
    """Mean −log σ(r[winners] − r[losers]) over the comparisons."""
    # BEGIN SOLUTION
    return -log_sigmoid(reward[winners] - reward[losers]).mean()
    # END SOLUTION


bt_nll(torch.tensor([0.0, 1.0, 2.0]), winners=torch.tensor([2, 1]), losers=torch.tensor([0, 0]))

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# two comparisons by hand: item 2 beat item 0 (gap 2), item 1 beat item 0 (gap 1)
_loss = bt_nll(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2, 1]), torch.tensor([0, 0]))
assert _loss.dim() == 0, "bt_nll returns one number (a 0-dimensional tensor): the MEAN over comparisons"
assert torch.isclose(_loss, torch.tensor((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2))

# %%
# equal rewards: every comparison is a coin flip, the loss is log 2
_loss = bt_nll(torch.zeros(4), torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0]))
assert torch.isclose(_loss, torch.tensor(math.log(2)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's loss on sampled comparisons
_reward = torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
_comparisons = bt.sample_comparisons(_reward, 500, seed=4)
_mine = bt_nll(_reward, _comparisons.winners, _comparisons.losers)
assert torch.isclose(_mine, bt.negative_log_likelihood(_reward, _comparisons), rtol=1e-12)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# shift invariance: adding a constant to every reward changes nothing, so the gradient sums to zero
_reward = torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
_winners, _losers = torch.tensor([0, 2, 2, 3, 1]), torch.tensor([1, 0, 3, 1, 3])
_loss = bt_nll(_reward, _winners, _losers)
assert torch.isclose(bt_nll(_reward.detach() + 7.5, _winners, _losers), _loss.detach(), rtol=1e-12)
_loss.backward()
assert abs(_reward.grad.sum().item()) < 1e-12

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a surprising comparison (the item with reward 800 lost) costs 800 nats, not inf
_loss = bt_nll(torch.tensor([0.0, 800.0]), torch.tensor([0]), torch.tensor([1]))
assert torch.isfinite(_loss) and torch.isclose(_loss, torch.tensor(800.0))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 3

# %% [markdown]
# **Q3 · Maximum likelihood (3 points).** The maximum-likelihood rewards minimise
# $\mathcal{L}(r)$. There is no closed form, but $\mathcal{L}$ is convex, so plain gradient
# descent from $r = 0$ finds the minimum:
#
# $$r \leftarrow r - \eta\, \nabla_r \mathcal{L}(r), \qquad \text{repeated } \texttt{steps} \text{ times.}$$
#
# Implement `fit_rewards(winners, losers, n_items, steps, lr)`: start from
# `torch.zeros(n_items, dtype=torch.float64, requires_grad=True)`, let autograd compute the
# gradient of `bt_nll` (`loss.backward()`), and update with `torch.optim.SGD([reward], lr=lr)`
# (or by hand under `torch.no_grad()`). The default step size looks large, but the loss is an
# average with curvature at most ½ ($\sigma' \le \tfrac14$, and each comparison moves two
# items), so any $\eta < 4$ is stable. Since $\mathcal{L}(r + c) = \mathcal{L}(r)$ for every
# constant $c$, only differences of rewards are determined by the data: return the fitted
# rewards **centred to mean zero** (and detached from the graph).
#
# A hand-computed case to aim for: two items, item 1 wins 3 of 4 comparisons. The likelihood
# is maximal where $\sigma(r_1 - r_0) = 3/4$, so $r_1 - r_0 = \log 3$ and the centred answer is
# $(-\tfrac12 \log 3, \tfrac12 \log 3) \approx (-0.549, 0.549)$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def fit_rewards(winners: torch.Tensor, losers: torch.Tensor, n_items: int,
                steps: int = 500, lr: float = 3.0) -> torch.Tensor:
    """Maximum-likelihood Bradley–Terry rewards by gradient descent, centred to mean zero (float64)."""
    # BEGIN SOLUTION
    reward = torch.zeros(n_items, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([reward], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        bt_nll(reward, winners, losers).backward()
        optimizer.step()
    reward = reward.detach()
    return reward - reward.mean()
    # END SOLUTION


fit_rewards(torch.tensor([1, 1, 1, 0]), torch.tensor([0, 0, 0, 1]), n_items=2)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# item 1 wins 3 of 4: r1 − r0 = log 3, centred
_fitted = fit_rewards(torch.tensor([1, 1, 1, 0]), torch.tensor([0, 0, 0, 1]), n_items=2)
assert _fitted.shape == (2,)
assert torch.allclose(_fitted, torch.tensor([-0.5, 0.5], dtype=torch.float64) * math.log(3), atol=1e-4)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the fit equals the library's L-BFGS fit (float64) on 3,000 sampled comparisons of 6 items
_true = torch.tensor([1.0, 2.0, 3.0, 3.5, 5.0, 6.0], dtype=torch.float64)
_comparisons = bt.sample_comparisons(_true, 3000, seed=1)
_fitted = fit_rewards(_comparisons.winners, _comparisons.losers, n_items=6)
assert _fitted.dtype == torch.float64 and not _fitted.requires_grad
assert abs(_fitted.mean().item()) < 1e-9, "centre the fitted rewards: subtract their mean"
assert torch.allclose(_fitted, bt.fit_bradley_terry(_comparisons, 6), atol=1e-3)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# identifiability: a hidden reward of mean 3.4 is recovered up to that constant, and no better
_true = torch.tensor([1.0, 2.0, 3.0, 3.5, 5.0, 6.0], dtype=torch.float64) - 0.1
_comparisons = bt.sample_comparisons(_true, 3000, seed=2)
_fitted = fit_rewards(_comparisons.winners, _comparisons.losers, n_items=6)
assert torch.allclose(_fitted, _true - _true.mean(), atol=0.25)
assert bt.recovery_error(_fitted, _true) < 0.15

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# Your fit at work: a hidden reward on 6 items, comparisons sampled from it, and the rewards
# recovered. The fit matches the hidden reward after both are centred, never before: the
# comparisons cannot tell $r$ from $r + c$.

# %%
hidden_reward = torch.tensor([1.0, 2.0, 3.0, 3.5, 5.0, 6.0], dtype=torch.float64)
for n in (100, 1000, 10_000):
    comparisons = bt.sample_comparisons(hidden_reward, n, seed=0)
    fitted = fit_rewards(comparisons.winners, comparisons.losers, n_items=6)
    print(f"{n:>6} comparisons: fitted {fitted.numpy().round(2)}, "
          f"error after centring {bt.recovery_error(fitted, hidden_reward):.3f}")
print(f"hidden reward, centred:      {(hidden_reward - hidden_reward.mean()).numpy().round(2)}")

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: [0, 1]

# %% [markdown]
# **Q4 · What the data can tell (1 point).** Comparisons are sampled from the rewards
# $r = (0, 1, 2)$ with the Bradley–Terry model. Which of these reward vectors would produce
# *exactly the same distribution* of comparisons?
#
# - **a.** $r + 3 = (3, 4, 5)$
# - **b.** $2r = (0, 2, 4)$
# - **c.** $r - \bar r = (-1, 0, 1)$
# - **d.** $-r = (0, -1, -2)$
#
# Set `same_distribution` to the set of letters, for example `{"b", "d"}`.

# %% [raw]
# # BEGIN SOLUTION

# %%
same_distribution = {"a", "c"}  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(same_distribution, set) and same_distribution <= {"a", "b", "c", "d"}, \
    'write a set of letters, for example {"b", "d"}'

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert same_distribution == {"a", "c"}

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# **Going further.** Notebook 01 shows how the recovery error falls like $1/\sqrt{N}$ and why
# a small ridge penalty keeps the fit finite when an item never loses (try it: with
# `winners = [1, 1]`, `losers = [0, 0]`, what does your `fit_rewards` do as `steps` grows?).
