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
# name: kl_estimators
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (kl_estimators.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 6 · Estimating the KL divergence from samples
#
# *Companion of notebook 07. Points: 9 (Q1: 2, Q2: 2, Q3: 4, Q4: 1).*
#
# Every RLHF method of the course keeps the policy $\pi = \pi_\theta$ near a reference
# $\pi_\text{ref}$ with a penalty $\beta\,\mathrm{KL}(\pi \,\|\, \pi_\text{ref})$, where
#
# $$\mathrm{KL}(\pi \,\|\, \pi_\text{ref}) = \mathbb E_{y \sim \pi}\!\left[\log \frac{\pi(y)}{\pi_\text{ref}(y)}\right] = \sum_y \pi(y) \log \frac{\pi(y)}{\pi_\text{ref}(y)}.$$
#
# For a whole response the sum runs over every possible sequence: out of reach. What a trainer
# has instead is the responses it sampled and, at each of their tokens, two numbers:
# $\log \pi(y)$ and $\log \pi_\text{ref}(y)$. From them it **estimates** the KL, one sample at a
# time. John Schulman's note "Approximating KL divergence" (2020) compares three estimators, each a
# function of the ratio $r = \pi_\text{ref}(y) / \pi(y)$ at a sample $y \sim \pi$:
#
# $$k_1 = -\log r, \qquad k_2 = \tfrac12 (\log r)^2, \qquad k_3 = (r - 1) - \log r.$$
#
# You will write them and the exact KL they estimate, measure by Monte Carlo their bias, their
# variance and their sign, and close with which one PPO and GRPO use, and where. Notebook 07
# measures the same three on the responses of a trained policy.
#
# The course library has its own estimators (`dpo_edu/kl.py`: `k1`, `k2`, `k3`); the hidden tests
# compare yours with them, so do not call them, nor `torch.distributions`, in your answers.
#
# **Shapes.** Log-probabilities come as tensors: in Q1, any shape (one number per sampled token,
# as `[batch, T]` for a batch of responses); in Q2, the **last** dimension runs over the $V$
# tokens of a vocabulary (one row a next-token distribution, as `log_softmax` returns it).
#
# **How to work.** Keep this file's name (`kl_estimators.ipynb`): the checks read their tests
# from it. Fill in every `...`, run the cell, then its `grader.check("q…")` cell. The public
# checks you see catch the usual slips; hidden tests (other inputs, edge cases) also count toward
# your grade. Use `torch` operations, no Python loops over samples or tokens (Q3 runs your code on
# hundreds of thousands of samples). The tests name their own variables with a leading
# underscore, so they leave yours alone.

# %%
import math

import torch

torch.manual_seed(0)
torch.set_num_threads(1)  # these tensors are small: one CPU thread is the fastest

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [markdown]
# **Q1 · Three estimators (2 points).** At a token $y$ sampled from $\pi$, with the log-ratio
#
# $$\log r = \log \pi_\text{ref}(y) - \log \pi(y),$$
#
# Schulman's three estimators of $\mathrm{KL}(\pi \,\|\, \pi_\text{ref})$ are
#
# $$k_1 = -\log r, \qquad k_2 = \tfrac12 (\log r)^2, \qquad k_3 = (r - 1) - \log r = \left(e^{\log r} - 1\right) - \log r.$$
#
# $k_2 \ge 0$ and $k_3 \ge 0$ at every sample ($e^x \ge 1 + x$); $k_1$ is negative wherever
# $\pi_\text{ref}(y) > \pi(y)$.
#
# Implement `k1(logps, ref_logps)`, `k2(logps, ref_logps)` and `k3(logps, ref_logps)`: tensors of
# $\log \pi(y)$ and $\log \pi_\text{ref}(y)$ of one shape in, the estimator at each element out
# (same shape, same dtype). Work with $\log r$ throughout, never with the probabilities
# themselves: a token of probability $e^{-120}$ is 0 in float32, and $\pi_\text{ref}(y) / \pi(y)$
# would be $0 / 0$, nan, while its log-ratio is an ordinary number. (`torch.expm1(x)` computes
# $e^x - 1$ accurately when $x$ is small.)
#
# By hand: $\pi(y) = \tfrac12$, $\pi_\text{ref}(y) = \tfrac14$, so $r = \tfrac12$:
# $k_1 = \log 2 \approx 0.693$, $k_2 = \tfrac12 (\log 2)^2 \approx 0.240$,
# $k_3 = \log 2 - \tfrac12 \approx 0.193$. The other way round, $r = 2$: $k_1 = -\log 2 < 0$,
# $k_2$ the same, $k_3 = 1 - \log 2 \approx 0.307$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = −log r = log π(y) − log π_ref(y), elementwise."""
    # BEGIN SOLUTION
    return logps - ref_logps
    # END SOLUTION


def k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log r)², elementwise."""
    # BEGIN SOLUTION
    return 0.5 * (ref_logps - logps) ** 2
    # END SOLUTION


def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r ≥ 0, elementwise, from log r alone."""
    # BEGIN SOLUTION
    log_ratio = ref_logps - logps  # log r
    return torch.expm1(log_ratio) - log_ratio
    # END SOLUTION


[estimator(torch.tensor([0.5, 0.25]).log(), torch.tensor([0.25, 0.5]).log()) for estimator in (k1, k2, k3)]

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: π(y) = (½, ¼) against π_ref(y) = (¼, ½), that is r = (½, 2)
_logps, _ref = torch.tensor([0.5, 0.25]).log(), torch.tensor([0.25, 0.5]).log()
_log2 = math.log(2)
assert torch.allclose(k1(_logps, _ref), torch.tensor([_log2, -_log2])), f"k1: got {k1(_logps, _ref)}"
assert torch.allclose(k2(_logps, _ref), torch.tensor([_log2 ** 2 / 2, _log2 ** 2 / 2])), f"k2: got {k2(_logps, _ref)}"
assert torch.allclose(k3(_logps, _ref), torch.tensor([_log2 - 0.5, 1 - _log2])), f"k3: got {k3(_logps, _ref)}"

# %%
# elementwise: a [3, 5] batch of float32 tokens in, [3, 5] float32 out; k2 and k3 never negative, k1 sometimes
_gen = torch.Generator().manual_seed(0)
_logps = torch.log_softmax(torch.randn(3, 5, generator=_gen), -1)
_ref = torch.log_softmax(torch.randn(3, 5, generator=_gen), -1)
for _name, _estimator in (("k1", k1), ("k2", k2), ("k3", k3)):
    _k = _estimator(_logps, _ref)
    assert _k.shape == (3, 5) and _k.dtype == torch.float32, f"{_name}: one estimate per token, in the inputs' dtype"
assert (k2(_logps, _ref) >= 0).all() and (k3(_logps, _ref) >= 0).all(), "k2 and k3 are never negative"
assert (k1(_logps, _ref) < 0).any(), "k1 = −log r is negative wherever π_ref(y) > π(y)"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's k1, k2, k3 on random pairs of distributions, near and far, in float64 and float32
from dpo_edu.kl import k1 as _library_k1, k2 as _library_k2, k3 as _library_k3

_gen = torch.Generator().manual_seed(1)
for _scale in (0.01, 0.3, 1.0, 3.0):
    _logits = torch.randn(4, 7, generator=_gen, dtype=torch.float64)
    _logps = torch.log_softmax(_logits, -1)
    _ref = torch.log_softmax(_logits + _scale * torch.randn(4, 7, generator=_gen, dtype=torch.float64), -1)
    for _mine, _library in ((k1, _library_k1), (k2, _library_k2), (k3, _library_k3)):
        _k = _mine(_logps, _ref)
        assert _k.shape == (4, 7) and _k.dtype == torch.float64
        assert torch.allclose(_k, _library(_logps, _ref), rtol=1e-9, atol=1e-12), f"{_mine.__name__}, scale {_scale}"
        _k32 = _mine(_logps.float(), _ref.float())
        assert _k32.dtype == torch.float32 and torch.allclose(_k32, _library(_logps, _ref).float(), rtol=1e-4, atol=1e-6)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# π = π_ref gives exactly 0 for all three; very small probabilities (0 in float32 or float64) stay finite
from dpo_edu.kl import k1 as _library_k1, k2 as _library_k2, k3 as _library_k3

_logps = torch.log_softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(2)), -1)
for _estimator in (k1, k2, k3):
    assert (_estimator(_logps, _logps.clone()) == 0).all(), f"{_estimator.__name__}: π = π_ref must give exactly 0"
    assert (_estimator(_logps.double(), _logps.double().clone()) == 0).all()
for _logps, _ref in ((torch.tensor([-120.0, -110.0, -200.0, -3.0]), torch.tensor([-110.0, -120.0, -195.0, -3.5])),
                     (torch.tensor([-800.0, -790.0, -1.0], dtype=torch.float64),
                      torch.tensor([-790.0, -800.0, -1.2], dtype=torch.float64))):
    for _mine, _library in ((k1, _library_k1), (k2, _library_k2), (k3, _library_k3)):
        _k = _mine(_logps, _ref)
        assert torch.isfinite(_k).all(), f"{_mine.__name__}: got {_k}: work with log r, not with π_ref / π"
        assert torch.allclose(_k, _library(_logps, _ref), rtol=1e-5), f"{_mine.__name__}: got {_k}"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2

# %% [markdown]
# **Q2 · The exact KL of two next-token distributions (2 points).** At one prefix, a language
# model gives a whole distribution over its vocabulary, and there the KL needs no sampling:
#
# $$\mathrm{KL}(\pi \,\|\, \pi_\text{ref}) = \sum_{v=1}^{V} \pi(v) \big[\log \pi(v) - \log \pi_\text{ref}(v)\big] \;\ge\; 0,$$
#
# zero exactly when $\pi = \pi_\text{ref}$. Implement `exact_kl(logps, ref_logps)`: two tensors of
# log-probabilities whose last dimension runs over the $V$ tokens, the KL of each row out: shape
# `[..., V]` in, `[...]` out (a `[V]` pair gives a 0-dimensional tensor, a `[batch, T, V]` pair
# one KL per position).
#
# A token that $\pi$ never picks ($\log \pi(v) = -\infty$, as after top-$k$ masking) contributes
# nothing, by the convention $0 \cdot \log 0 = 0$; computed naively, $0 \cdot (-\infty)$ is nan,
# so leave such tokens out (`torch.where`). A token that $\pi$ picks and $\pi_\text{ref}$ never
# does makes the KL $+\infty$, rightly.
#
# By hand: $\pi = (\tfrac12, \tfrac12)$, $\pi_\text{ref} = (\tfrac14, \tfrac34)$ give
# $\mathrm{KL}(\pi \,\|\, \pi_\text{ref}) = \tfrac12 \log 2 + \tfrac12 \log \tfrac23 = \tfrac12 \log \tfrac43 \approx 0.1438$,
# while $\mathrm{KL}(\pi_\text{ref} \,\|\, \pi) = \tfrac14 \log \tfrac12 + \tfrac34 \log \tfrac32 \approx 0.1308$:
# the KL is not symmetric.

# %% [raw]
# # BEGIN SOLUTION

# %%
def exact_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Σ_v π(v) [log π(v) − log π_ref(v)] over the last dimension; tokens with π(v) = 0 contribute 0."""
    # BEGIN SOLUTION
    probs = logps.exp()
    return torch.where(probs > 0, probs * (logps - ref_logps), 0.0).sum(-1)
    # END SOLUTION


exact_kl(torch.tensor([[0.5, 0.5], [0.25, 0.75]]).log(), torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log())

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: KL((½, ½) ‖ (¼, ¾)) = ½ log(4/3), and the other way round ¼ log ½ + ¾ log (3/2)
_kl = exact_kl(torch.tensor([[0.5, 0.5], [0.25, 0.75]]).log(), torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log())
assert _kl.shape == (2,), "one KL per row: the sum runs over the last dimension"
assert torch.allclose(_kl, torch.tensor([0.5 * math.log(4 / 3), 0.25 * math.log(0.5) + 0.75 * math.log(1.5)])), \
    f"got {_kl}"

# %%
# a [2, 3, 11] batch of next-token distributions: one KL per position, [2, 3], none negative
_gen = torch.Generator().manual_seed(0)
_logps = torch.log_softmax(torch.randn(2, 3, 11, generator=_gen), -1)
_ref = torch.log_softmax(torch.randn(2, 3, 11, generator=_gen), -1)
_kl = exact_kl(_logps, _ref)
assert _kl.shape == (2, 3) and _kl.dtype == torch.float32, "[..., V] in, [...] out, in the inputs' dtype"
assert (_kl > 0).all(), f"a KL is never negative: got {_kl}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals Σ_v π(v) k1(v) and Σ_v π(v) k3(v) (the library's: each estimator's exact mean) and torch.distributions,
# on batches of distributions near and far
from dpo_edu.kl import k1 as _library_k1, k3 as _library_k3

_gen = torch.Generator().manual_seed(1)
for _scale in (0.05, 0.5, 2.0):
    _logits = torch.randn(5, 4, 50, generator=_gen, dtype=torch.float64)
    _logps = torch.log_softmax(_logits, -1)
    _ref = torch.log_softmax(_logits + _scale * torch.randn(5, 4, 50, generator=_gen, dtype=torch.float64), -1)
    _kl = exact_kl(_logps, _ref)
    assert _kl.shape == (5, 4) and _kl.dtype == torch.float64
    assert torch.allclose(_kl, (_logps.exp() * _library_k1(_logps, _ref)).sum(-1), rtol=1e-10, atol=1e-14)
    assert torch.allclose(_kl, (_logps.exp() * _library_k3(_logps, _ref)).sum(-1), rtol=1e-9, atol=1e-14)
    _torch_kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=_logps),
                                                  torch.distributions.Categorical(logits=_ref))
    assert torch.allclose(_kl, _torch_kl, rtol=1e-9, atol=1e-14), f"scale {_scale}"
    assert not torch.allclose(_kl, exact_kl(_ref, _logps)), "KL(π ‖ π_ref), not KL(π_ref ‖ π)"
_one = exact_kl(torch.tensor([0.5, 0.5]).log(), torch.tensor([0.25, 0.75]).log())
assert _one.shape == () and abs(_one.item() - 0.5 * math.log(4 / 3)) < 1e-6, "a [V] pair gives one number"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# edge cases: π = π_ref gives exactly 0; a token π never picks (−inf) contributes 0, in π and π_ref alike;
# one π picks and π_ref never does gives +inf; vanishing probabilities stay finite
_logps = torch.log_softmax(torch.randn(3, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64), -1)
assert (exact_kl(_logps, _logps.clone()) == 0).all(), "π = π_ref must give exactly 0"
assert (exact_kl(_logps.float(), _logps.float().clone()) == 0).all()
_logits = torch.tensor([1.0, 0.5, -0.3, 2.0, 0.0], dtype=torch.float64)
_masked = _logits.clone()
_masked[[1, 4]] = -math.inf  # top-3 sampling: π never picks tokens 1 and 4
_logps, _ref = torch.log_softmax(_masked, -1), torch.log_softmax(_logits, -1)
_kept = [0, 2, 3]
_expected = (_logps[_kept].exp() * (_logps[_kept] - _ref[_kept])).sum()
_kl = exact_kl(_logps, _ref)
assert torch.isfinite(_kl) and torch.allclose(_kl, _expected), f"got {_kl}, expected {_expected}: 0 · log 0 = 0"
assert exact_kl(_logps, _logps.clone()) == 0, "π = π_ref, both with −inf: still exactly 0"
assert exact_kl(_ref, _logps) == math.inf, "π_ref(v) = 0 < π(v): the KL is +inf"
_logps = torch.tensor([-800.0, -790.0, math.log(0.5), math.log(0.5)], dtype=torch.float64)
_ref = torch.tensor([-790.0, -800.0, math.log(0.25), math.log(0.75)], dtype=torch.float64)
_kl = exact_kl(_logps, _ref)
assert torch.isfinite(_kl) and abs(_kl.item() - 0.5 * math.log(4 / 3)) < 1e-12, f"got {_kl}"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 4

# %% [markdown]
# **Q3 · Bias, variance and sign, by Monte Carlo (4 points).** Why three estimators of one
# number? Because they differ in what matters once each is averaged over the few hundred tokens of
# a batch:
#
# - **Bias.** $k_1$ is unbiased by definition, $\mathbb E_\pi[-\log r] = \mathrm{KL}$. So is $k_3$:
#   its extra term has mean zero,
#   $$\mathbb E_{y \sim \pi}[r - 1] = \sum_y \pi(y)\, \frac{\pi_\text{ref}(y)}{\pi(y)} - 1 = \sum_y \pi_\text{ref}(y) - 1 = 0.$$
#   $k_2$ is not: $\mathbb E_\pi\big[\tfrac12 (\log r)^2\big]$ is another divergence (an
#   $f$-divergence), which agrees with the KL only to second order, when $\pi \approx \pi_\text{ref}$.
# - **Variance.** When $\pi \approx \pi_\text{ref}$, $\log r$ is small and $k_1 = -\log r \approx -(r - 1)$
#   fluctuates at **first** order around a KL that is of second order: most of each sample is
#   noise. $k_3 = k_1 + (r - 1)$ adds a term of mean zero that cancels those first-order
#   fluctuations (a *control variate*); what remains, $k_3 \approx \tfrac12 (r - 1)^2$, is of
#   second order, like the KL.
# - **Sign.** $k_1 < 0$ at every $y$ where $\pi_\text{ref}(y) > \pi(y)$: a "KL" that is negative on
#   a fraction $\mathbb P_{y \sim \pi}\big(\pi_\text{ref}(y) > \pi(y)\big)$ of the samples.
#   $k_2$ and $k_3$ never are.
#
# Implement `estimator_statistics(logps, ref_logps, n, generator)`. $\pi$ and $\pi_\text{ref}$ come
# as 1-D log-probabilities over $V$ tokens. Draw $n$ tokens $y \sim \pi$ at once with
# `torch.multinomial(logps.exp(), n, replacement=True, generator=generator)` (this exact call: the
# tests draw the same tokens from the same seed), evaluate your `k1`, `k2`, `k3` at them, and
# return the dict
#
# ```python
# {"exact": KL,                                      # your exact_kl of Q2
#  "k1": {"mean": ..., "std": ..., "negative": ...},
#  "k2": {"mean": ..., "std": ..., "negative": ...},
#  "k3": {"mean": ..., "std": ..., "negative": ...}}
# ```
#
# with, for each estimator over the $n$ samples, its mean, its standard deviation (torch's
# `.std()`, divided by $n - 1$) and the fraction of the samples where it is $< 0$; every number a
# Python `float` (`.item()`). The **standard error** of a mean of $n$ samples is then
# $\text{std} / \sqrt n$: the tests judge your numbers within a few standard errors of the exact
# values (the KL, $\mathbb E_\pi[k_2]$, each estimator's exact standard deviation, and
# $\mathbb P_\pi(\pi_\text{ref} > \pi)$ for the sign of $k_1$), so they hold whatever the seed.

# %% [raw]
# # BEGIN SOLUTION

# %%
def estimator_statistics(logps: torch.Tensor, ref_logps: torch.Tensor, n: int,
                         generator: torch.Generator | None = None) -> dict:
    """Mean, std and fraction < 0 of k1, k2, k3 over n samples y ~ π, beside the exact KL(π ‖ π_ref)."""
    # BEGIN SOLUTION
    samples = torch.multinomial(logps.exp(), n, replacement=True, generator=generator)
    statistics = {"exact": exact_kl(logps, ref_logps).item()}
    for name, estimator in (("k1", k1), ("k2", k2), ("k3", k3)):
        values = estimator(logps[samples], ref_logps[samples])
        statistics[name] = {"mean": values.mean().item(), "std": values.std().item(),
                            "negative": (values < 0).double().mean().item()}
    return statistics
    # END SOLUTION


estimator_statistics(torch.tensor([0.5, 0.3, 0.2]).log(), torch.tensor([0.2, 0.3, 0.5]).log(), 10_000,
                     torch.Generator().manual_seed(0))

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# the keys and the types; π = π_ref: every sample estimates 0 exactly, so every mean, std and fraction is 0
_logps = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
_stats = estimator_statistics(_logps, _logps.clone(), 1000, torch.Generator().manual_seed(0))
assert isinstance(_stats, dict) and set(_stats) == {"exact", "k1", "k2", "k3"}, "keys: exact, k1, k2, k3"
assert isinstance(_stats["exact"], float) and _stats["exact"] == 0, f"exact: got {_stats['exact']!r}"
for _name in ("k1", "k2", "k3"):
    assert set(_stats[_name]) == {"mean", "std", "negative"}, f"{_name}: keys mean, std, negative"
    assert all(isinstance(_value, float) for _value in _stats[_name].values()), f"{_name}: Python floats (.item())"
    assert all(_value == 0 for _value in _stats[_name].values()), f"{_name}: got {_stats[_name]}"

# %%
# π = (0.5, 0.3, 0.2), π_ref = (0.2, 0.3, 0.5): k1's mean within 5 standard errors of the KL, and k1 negative
# on about 20 % of the samples (the token of probability 0.2, where π_ref > π), within 5 standard errors
_logps = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
_ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
_n = 50_000
_stats = estimator_statistics(_logps, _ref, _n, torch.Generator().manual_seed(1))
_exact = 0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5)
assert abs(_stats["exact"] - _exact) < 1e-9, f"exact: got {_stats['exact']}, expected {_exact:.6f}"
_se = _stats["k1"]["std"] / math.sqrt(_n)
assert 0 < _se < 0.01 and abs(_stats["k1"]["mean"] - _exact) < 5 * _se, f"k1: got {_stats['k1']}"
assert abs(_stats["k1"]["negative"] - 0.2) < 5 * math.sqrt(0.2 * 0.8 / _n), f"k1: got {_stats['k1']}"
assert _stats["k2"]["negative"] == 0 and _stats["k3"]["negative"] == 0

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# bias, on two pairs far apart (8 and 50 tokens): the same draw as the library's estimators gives the same
# numbers; k1 and k3 within 5 standard errors of the KL; k2 within 5 of its own exact mean E_π[½ (log r)²],
# which lies more than 20 standard errors from the KL: k2 is measurably biased
from dpo_edu.kl import k1 as _library_k1, k2 as _library_k2, k3 as _library_k3

_gen = torch.Generator().manual_seed(3)
_n = 200_000
for _vocab, _seed in ((8, 11), (50, 12)):
    _logits = torch.randn(_vocab, generator=_gen, dtype=torch.float64)
    _logps = torch.log_softmax(_logits, -1)
    _ref = torch.log_softmax(_logits + 1.5 * torch.randn(_vocab, generator=_gen, dtype=torch.float64), -1)
    _stats = estimator_statistics(_logps, _ref, _n, torch.Generator().manual_seed(_seed))
    _samples = torch.multinomial(_logps.exp(), _n, replacement=True, generator=torch.Generator().manual_seed(_seed))
    _probs = _logps.exp()
    _exact = (_probs * (_logps - _ref)).sum().item()
    assert abs(_stats["exact"] - _exact) < 1e-12
    for _name, _library in (("k1", _library_k1), ("k2", _library_k2), ("k3", _library_k3)):
        _values = _library(_logps[_samples], _ref[_samples])
        for _key, _value in (("mean", _values.mean()), ("std", _values.std()), ("negative", (_values < 0).double().mean())):
            assert math.isclose(_stats[_name][_key], _value.item(), rel_tol=1e-9, abs_tol=1e-12), \
                f"{_name} {_key}: got {_stats[_name][_key]}, expected {_value.item()} from the same draw"
    _se = {_name: _stats[_name]["std"] / math.sqrt(_n) for _name in ("k1", "k2", "k3")}
    for _name in ("k1", "k3"):
        assert abs(_stats[_name]["mean"] - _exact) < 5 * _se[_name], f"{_name} is unbiased: {_stats[_name]}, KL {_exact}"
    _mean_k2 = (_probs * _library_k2(_logps, _ref)).sum().item()
    assert abs(_stats["k2"]["mean"] - _mean_k2) < 5 * _se["k2"], f"k2: {_stats['k2']}, E_π[k2] = {_mean_k2}"
    assert abs(_mean_k2 - _exact) > 20 * _se["k2"], "these two distributions must tell k2's mean from the KL"
# in float32 too
_stats = estimator_statistics(_logps.float(), _ref.float(), 1000, torch.Generator().manual_seed(0))
assert all(isinstance(_stats[_name][_key], float) for _name in ("k1", "k2", "k3") for _key in ("mean", "std", "negative"))
assert abs(_stats["exact"] - _exact) < 1e-5

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# variance and sign: on a pair close together, each std lies within 5 standard errors of the estimator's exact std
# (the standard error of a std: √(μ4 − σ⁴) / (2σ√n)), and k3's is less than a fifth of k1's; on a close and a far
# pair, k1 is negative on P_π(π_ref > π) of the samples (within 5 binomial standard errors), k2 and k3 never
from dpo_edu.kl import k1 as _library_k1, k2 as _library_k2, k3 as _library_k3

_gen = torch.Generator().manual_seed(4)
_n = 100_000
for _scale, _seed in ((0.1, 21), (1.5, 22)):
    _logits = torch.randn(12, generator=_gen, dtype=torch.float64)
    _logps = torch.log_softmax(_logits, -1)
    _ref = torch.log_softmax(_logits + _scale * torch.randn(12, generator=_gen, dtype=torch.float64), -1)
    _probs = _logps.exp()
    _stats = estimator_statistics(_logps, _ref, _n, torch.Generator().manual_seed(_seed))
    _sigma = {}
    for _name, _library in (("k1", _library_k1), ("k2", _library_k2), ("k3", _library_k3)):
        _values = _library(_logps, _ref)  # at every token of the vocabulary
        _centred = _values - (_probs * _values).sum()
        _sigma[_name] = (_probs * _centred ** 2).sum().sqrt().item()
        _mu4 = (_probs * _centred ** 4).sum().item()
        _se_std = math.sqrt(_mu4 - _sigma[_name] ** 4) / (2 * _sigma[_name] * math.sqrt(_n))
        assert abs(_stats[_name]["std"] - _sigma[_name]) < 5 * _se_std, \
            f"{_name}, scale {_scale}: std {_stats[_name]['std']}, exact {_sigma[_name]} ± {_se_std}"
    if _scale < 1:
        assert _sigma["k3"] < _sigma["k1"] / 5 and _stats["k3"]["std"] < _stats["k1"]["std"] / 5, \
            f"close distributions: k3's std {_stats['k3']['std']} against k1's {_stats['k1']['std']}"
    _p_negative = _probs[_ref > _logps].sum().item()
    assert 0.05 < _p_negative < 0.95
    assert abs(_stats["k1"]["negative"] - _p_negative) < 5 * math.sqrt(_p_negative * (1 - _p_negative) / _n), \
        f"scale {_scale}: k1 negative on {_stats['k1']['negative']} of the samples, expected {_p_negative}"
    assert _stats["k2"]["negative"] == 0 and _stats["k3"]["negative"] == 0, "k2 and k3 are never negative"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# Your estimators at work on two pairs of distributions over 12 tokens, one close together and one
# far apart, 100,000 samples each: the mean of each estimator, $\pm$ its standard error, beside
# the exact KL. $k_1$ and $k_3$ find the KL within their error bars in both; $k_2$ is nearly
# right when the two are close and far off when they are not. When they are close, $k_3$'s
# standard deviation is a small fraction of $k_1$'s, while $k_1$ is negative on a good part of the
# samples.

# %%
generator = torch.Generator().manual_seed(0)
for label, scale in (("close", 0.1), ("far apart", 1.5)):
    logits = torch.randn(12, generator=generator, dtype=torch.float64)
    logps = torch.log_softmax(logits, -1)
    ref_logps = torch.log_softmax(logits + scale * torch.randn(12, generator=generator, dtype=torch.float64), -1)
    n = 100_000
    stats = estimator_statistics(logps, ref_logps, n, generator)
    print(f"{label}: exact KL {stats['exact']:.5f}")
    for name in ("k1", "k2", "k3"):
        mean, std, negative = stats[name]["mean"], stats[name]["std"], stats[name]["negative"]
        print(f"  {name}: mean {mean:.5f} ± {std / math.sqrt(n):.5f}   std {std:.5f}   negative on {negative:.1%}")

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: [0, 1]

# %% [markdown]
# **Q4 · Which estimator, where (1 point).** PPO (Ziegler et al., 2019; `dpo_edu/ppo.py`) and GRPO
# (Shao et al., 2024, Eq. 3–4; `dpo_edu/critic_free.py`) both keep $\pi_\theta$ near
# $\pi_\text{ref}$ with a per-token KL, but they do not put it in the same place. Recall that at a
# fixed token $y$ a loss term is differentiated with respect to $\theta$, while a reward is not: it
# reaches the gradient only through the advantages, multiplied by
# $\nabla_\theta \log \pi_\theta$. Which of these statements are true?
#
# - **a.** PPO charges each sampled token $-\beta\, k_1$ in its **reward**,
#   $r_t = -\beta \big[\log \pi_\text{old}(y_t) - \log \pi_\text{ref}(y_t)\big]$ (the score added at
#   the last token); summed over a response, the charge is $\beta$ times an unbiased estimate of
#   the sequence KL.
# - **b.** GRPO puts the KL in its reward as PPO does, with $k_2$ instead of $k_1$, because a
#   square is never negative.
# - **c.** GRPO adds $\beta\, k_3$ at each token to its **loss**, beside the clipped term, and
#   differentiates it with respect to $\theta$.
# - **d.** Putting $\beta\, k_1$ in GRPO's loss instead would change nothing on average: $k_1$ and
#   $k_3$ have the same expectation, so their gradients have the same expectation too.
# - **e.** Differentiated at tokens drawn from $\pi_\theta$,
#   $k_1 = \log \pi_\theta(y) - \log \pi_\text{ref}(y)$ has the gradient
#   $\nabla_\theta \log \pi_\theta(y)$, whose expectation is
#   $\sum_y \pi_\theta(y)\, \nabla_\theta \log \pi_\theta(y) = \sum_y \nabla_\theta \pi_\theta(y) = \nabla_\theta 1 = 0$:
#   as a loss term, $k_1$ would not pull $\pi_\theta$ toward $\pi_\text{ref}$ at all on average, it
#   would only add noise.
# - **f.** $k_3$ is preferred in a loss because it is never negative, which makes its mean over a
#   batch larger than $k_1$'s, and so a stronger penalty.
#
# Set `kl_placement` to the set of true letters, for example `{"b", "d"}`.

# %% [raw]
# # BEGIN SOLUTION

# %%
kl_placement = {"a", "c", "e"}  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [markdown]
# **Why? (not graded: your instructor may read it.)** In two or three sentences, replacing this
# paragraph: why may PPO use $k_1$ in its reward, and what does $k_3$'s gradient do that $k_1$'s
# does not? (Hint: $\nabla_\theta k_3 = (1 - r)\, \nabla_\theta \log \pi_\theta(y)$.)

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# _An answer:_ in a reward, $k_1$ is treated like the score: the policy gradient multiplies it by
# $\nabla_\theta \log \pi_\theta$, and
# $\nabla_\theta \mathbb E_{\pi_\theta}[k_1] = \mathbb E[k_1\, \nabla_\theta \log \pi_\theta] + \mathbb E[\nabla_\theta \log \pi_\theta]$,
# whose second term is 0: the score-function gradient of $k_1$ is the gradient of the KL, so the
# unbiased $k_1$ does the job. Differentiated as a loss at fixed samples, $k_1$ keeps only that
# zero-mean second term. $k_3$'s gradient, $(1 - r)\, \nabla_\theta \log \pi_\theta(y)$, has the
# expectation $-\sum_y \pi_\text{ref}(y)\, \nabla_\theta \log \pi_\theta(y) = \nabla_\theta \mathrm{KL}(\pi_\text{ref} \,\|\, \pi_\theta)$:
# it does pull toward $\pi_\text{ref}$, although strictly along the gradient of the *reverse* KL,
# which vanishes, like the forward one, only at $\pi_\theta = \pi_\text{ref}$.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(kl_placement, set) and kl_placement <= {"a", "b", "c", "d", "e", "f"}, \
    'write a set of letters, for example {"b", "d"}'

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert kl_placement == {"a", "c", "e"}

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# **Going further.** Notebook 07 measures $k_1$, $k_2$, $k_3$ and the exact per-token KL on the
# responses of a trained policy (`dpo_edu.kl.token_kl`). Here, with `estimator_statistics`: how
# does $k_3$'s standard deviation compare with $k_1$'s as you push the two distributions further
# apart (look at the tokens where $\pi(y) \ll \pi_\text{ref}(y)$: there $r$ is large)? And give
# $\pi$ a token of probability 0 that $\pi_\text{ref}$ does not exclude: is $k_3$ still unbiased?
# (Which step of the proof that $\mathbb E_\pi[r - 1] = 0$ fails?)
