"""Presets: one code path, three sizes.

A preset changes sizes and names only, never which functions run:

- ``ci``:   the tiny GPT-2, a few hundred reviews; seconds per notebook on a CPU, offline.
- ``cpu``:  the same tiny GPT-2 trained further on thousands of reviews; minutes on a laptop.
- ``gpt2``: GPT-2 (124 M) from the Hugging Face Hub; tens of minutes on one GPU.
- ``auto``: ``gpt2`` where a GPU and the Hub are reachable, else ``cpu``; it says which and why.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Preset:
    name: str  # "ci", "cpu" or "gpt2"
    description: str  # one line shown when the preset is chosen
    # --- toy problems (notebooks 01–03) ---
    toy_steps: int  # optimiser steps for tabular policies (gradient ascent, DPO)
    toy_pairs: int  # preference pairs sampled for tabular DPO
    bt_max_comparisons: int  # the largest number of comparisons in the Bradley–Terry error curve
    bt_repeats: int  # seeds averaged (median) per point of that curve
    # --- language model (notebooks 04–05; see models.py) ---
    model: str  # "tiny": a GPT-2 built here from the shapes below; else a Hub id ("gpt2", "gpt2-large")
    random_init: bool  # random weights of these shapes + the local tokenizer (always so for "tiny"; times gpt2 offline)
    n_layer: int  # transformer blocks (gpt2: 12)
    n_head: int  # attention heads per block; n_embd must be a multiple of it (gpt2: 12)
    n_embd: int  # width of the residual stream (gpt2: 768)
    n_positions: int  # longest sequence the model can read, prompt + response (gpt2: 1024)
    vocab_size: int  # size of the byte-level BPE trained locally on the reviews (unused by a Hub model)
    n_reviews: int  # IMDb reviews read (tokenizer, SFT, prompts)
    max_length: int  # tokens per SFT training sequence (longer reviews are cut)
    max_new_tokens: int  # tokens sampled per completion
    temperature: float  # sampling temperature T: logits / T before the softmax (1.0 samples the policy itself)
    device: str  # "cpu" or "cuda"
    dtype: str  # dtype of the weights; log-probs are computed in float32 whatever it is
    # --- preference pairs (notebook 04; see preferences.py) ---
    pair_prompts: int  # IMDb prefixes the SFT policy completes to make preference pairs
    completions_per_prompt: int  # samples per prefix, every pair of them labelled: 4 → 6 pairs (paper §6.1)
    generation_batch_size: int  # rows (prefix copies) sampled together in one batch
    eval_pair_prompts: int  # of those prefixes, held out with all their pairs (held-out pair accuracy)
    # --- SFT and reward model (notebook 04; see sft.py, reward_model.py, training.py) ---
    sft_steps: int  # optimiser steps of supervised fine-tuning on the reviews (the result is π_ref)
    sft_batch_size: int  # reviews per SFT step, each cut to max_length tokens
    sft_lr: float  # peak AdamW learning rate of SFT (random init learns fast; pretrained gpt2 wants ~5e-5)
    sft_warmup_steps: int  # steps of linear learning-rate warmup at the start of SFT
    rm_epochs: float  # passes of reward-model training over the preference pairs (a second one overfits)
    rm_batch_size: int  # preference pairs per reward-model step (twice as many sequences per forward pass)
    rm_lr: float  # peak AdamW learning rate of the Bradley–Terry reward model
    # --- ground-truth reward (notebook 04; see sentiment.py, pipeline.py) ---
    reward_classifier: str  # "tfidf" (trained here on IMDb labels) or a Hub classifier id (the paper's: siebert/…)
    classifier_reviews: int  # labelled IMDb reviews the "tfidf" classifier learns from (a fifth held out)
    # --- DPO (notebook 05; see dpo.py) ---
    dpo_epochs: float  # passes of DPO over the training pairs
    dpo_batch_size: int  # preference pairs per DPO step (the paper: 64)
    dpo_lr: float  # peak AdamW learning rate of DPO (the paper: 1e-6 for pretrained GPT-2; tiny models take more)
    dpo_beta: float  # β, the weight of KL(π ‖ π_ref) in DPO's objective (the paper's sentiment runs: 0.05–5)
    dpo_warmup_steps: int  # steps of linear learning-rate warmup (the paper: 150)
    dpo_length_buckets: int  # forward passes per DPO step, rows sorted by length: less padding on a CPU (GPU: 1)
    # --- PPO (notebook 05; see ppo.py) ---
    ppo_steps: int  # PPO steps, each one rollout of ppo_batch_size prompts + its ppo_epochs passes
    ppo_batch_size: int  # prompts per rollout, one sampled completion each
    ppo_mini_batch_size: int  # rows per optimiser step within a PPO epoch
    ppo_epochs: int  # passes of shuffled minibatches over each rollout
    ppo_lr: float  # AdamW learning rate of policy + value head (TRL's gpt2 sentiment example: 1.41e-5)
    ppo_kl_coef: float  # β of the per-token KL penalty, in units of the score's std on π_ref (initial β if adaptive)
    ppo_target_kl: float | None  # sequence KL the adaptive controller steers to (Ziegler et al.: 6); None: β fixed
    ppo_kl_horizon: int  # the adaptive controller's horizon in episodes (Ziegler et al.: 10,000)
    # --- the RLHF vs DPO comparison (notebook 05; see pipeline.py) ---
    dpo_beta_sweep: tuple  # β of each DPO run on the reward–KL frontier (the paper's Fig. 2 sweeps 0.05–5)
    ppo_target_sweep: tuple  # target KL (nats) of each PPO run on the frontier (adaptive KL controller)


PRESETS = {
    "ci": Preset(
        name="ci",
        description="tiny GPT-2 on a few hundred reviews: seconds per notebook, CPU, offline",
        toy_steps=1500,
        toy_pairs=20_000,
        bt_max_comparisons=20_000,
        bt_repeats=3,
        model="tiny",
        random_init=True,
        n_layer=4,
        n_head=4,
        n_embd=128,
        n_positions=128,
        vocab_size=2000,
        n_reviews=400,
        max_length=64,
        max_new_tokens=16,
        temperature=1.0,
        device="cpu",
        dtype="float32",
        pair_prompts=128,  # 768 pairs, sampled in about a second
        completions_per_prompt=4,
        generation_batch_size=128,
        eval_pair_prompts=32,
        sft_steps=120,
        sft_batch_size=16,
        sft_lr=1e-3,
        sft_warmup_steps=10,
        rm_epochs=1.0,
        rm_batch_size=16,
        rm_lr=3e-4,
        reward_classifier="tfidf",
        classifier_reviews=4_000,
        dpo_epochs=1.0,
        dpo_batch_size=16,
        dpo_lr=3e-4,
        dpo_beta=0.1,
        dpo_warmup_steps=0,
        dpo_length_buckets=3,
        ppo_steps=24,  # about 20 s on one CPU thread
        ppo_batch_size=32,
        ppo_mini_batch_size=8,
        ppo_epochs=4,
        ppo_lr=3e-4,
        ppo_kl_coef=0.05,
        ppo_target_kl=None,
        ppo_kl_horizon=64,  # short runs: β may move up to 0.2 · 32/64 = 10 % a step
        dpo_beta_sweep=(0.1, 1.0),
        ppo_target_sweep=(2.0, 8.0),
    ),
    "cpu": Preset(
        name="cpu",
        description="tiny GPT-2 on thousands of reviews: minutes per notebook, CPU, offline",
        toy_steps=3000,
        toy_pairs=100_000,
        bt_max_comparisons=100_000,
        bt_repeats=7,
        model="tiny",
        random_init=True,
        n_layer=4,
        n_head=6,
        n_embd=192,
        n_positions=256,
        vocab_size=4000,
        n_reviews=5000,
        max_length=128,
        max_new_tokens=24,
        temperature=1.0,
        device="cpu",
        dtype="float32",
        pair_prompts=2500,  # 15,000 pairs, sampled in about a minute; 1,000 prompts left the reward model at 0.68
        completions_per_prompt=4,
        generation_batch_size=128,
        eval_pair_prompts=250,
        sft_steps=600,
        sft_batch_size=16,
        sft_lr=1e-3,
        sft_warmup_steps=50,
        rm_epochs=1.0,
        rm_batch_size=32,
        rm_lr=3e-4,
        reward_classifier="tfidf",
        classifier_reviews=20_000,
        dpo_epochs=0.4,  # ~340 steps of 16 over ~13,500 pairs: a 3-β sweep fits notebook 05's budget
        dpo_batch_size=16,
        dpo_lr=1e-4,
        dpo_beta=0.1,
        dpo_warmup_steps=10,
        dpo_length_buckets=3,
        ppo_steps=64,  # about 2 minutes on one CPU thread
        ppo_batch_size=32,
        ppo_mini_batch_size=8,
        ppo_epochs=4,
        ppo_lr=3e-5,  # clipfrac ~0.03; at 1e-4 (clipfrac ~0.25) KL drifted to 3 even at a fixed β of 2
        ppo_kl_coef=0.2,  # 64 steps leave the controller little time: from 0.05, KL reached 6–10 before β caught up
        ppo_target_kl=None,
        ppo_kl_horizon=128,  # β may move up to 5 % a step (horizon 32, 20 % a step, diverged: β 0.1 → 2,476)
        dpo_beta_sweep=(0.1, 0.5, 2.0),
        ppo_target_sweep=(1.0, 3.0, 9.0),
    ),
    "gpt2": Preset(
        name="gpt2",
        description="GPT-2 (124 M) from the Hugging Face Hub: tens of minutes on one GPU",
        toy_steps=3000,
        toy_pairs=100_000,
        bt_max_comparisons=100_000,
        bt_repeats=7,
        model="gpt2",
        random_init=False,
        n_layer=12,
        n_head=12,
        n_embd=768,
        n_positions=1024,
        vocab_size=50257,  # gpt2's own size, so a random_init run times the real output layer
        n_reviews=25_000,
        max_length=256,
        max_new_tokens=48,
        temperature=1.0,
        device="cuda",
        dtype="float32",  # bfloat16 halves memory, but a 1e-6 learning-rate step vanishes in bf16 weights
        pair_prompts=4000,  # 24,000 pairs
        completions_per_prompt=4,
        generation_batch_size=256,
        eval_pair_prompts=400,
        sft_steps=800,  # about one epoch of the 25,000 reviews at batch 32
        sft_batch_size=32,
        sft_lr=5e-5,
        sft_warmup_steps=50,
        rm_epochs=1.0,  # one pass, as InstructGPT: a reward model overfits after one epoch
        rm_batch_size=32,
        rm_lr=1e-5,
        reward_classifier="siebert/sentiment-roberta-large-english",
        classifier_reviews=25_000,
        dpo_epochs=1.0,
        dpo_batch_size=64,
        dpo_lr=1e-6,
        dpo_beta=0.1,
        dpo_warmup_steps=150,
        dpo_length_buckets=1,
        ppo_steps=200,
        ppo_batch_size=64,
        ppo_mini_batch_size=16,
        ppo_epochs=4,
        ppo_lr=1.41e-5,
        ppo_kl_coef=0.1,
        ppo_target_kl=6.0,
        ppo_kl_horizon=640,  # β may move up to 0.2 · 64/640 = 2 % a step (at 10,000, 0.13 %: over 200 steps the
        # targets would share one β path until the KL neared them, a fixed-β sweep in all but name)
        dpo_beta_sweep=(0.05, 0.1, 0.5, 1.0),
        ppo_target_sweep=(2.0, 4.0, 8.0, 16.0),
    ),
}


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face Hub answers on port 443 and HF_HUB_OFFLINE is not set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):  # huggingface_hub's rule
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def choose_auto() -> tuple[str, str]:
    """The preset ``auto`` stands for, and why."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "no CUDA GPU is visible"
    if not hub_reachable():
        return "cpu", f"a GPU is visible but {HUB_HOST} cannot be reached (or HF_HUB_OFFLINE is set)"
    return "gpt2", f"a GPU ({torch.cuda.get_device_name()}) and {HUB_HOST} are both reachable"


def get_preset(name: str, verbose: bool = True, **overrides) -> Preset:
    """The preset called ``name`` (``auto`` resolved), with any field replaced by ``overrides``."""
    if name == "auto":
        name, why = choose_auto()
        if verbose:
            print(f"PRESET 'auto' → '{name}': {why}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or 'auto'")
    preset = PRESETS[name]
    unknown = set(overrides) - set(Preset.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown preset field(s) {sorted(unknown)} for preset {name!r}")
    # a sweep given as a list (as papermill passes it) is stored as the tuple the presets hold
    preset = replace(preset, **{key: tuple(value) if isinstance(value, list) else value
                                for key, value in overrides.items()})
    if verbose:
        print(f"preset {preset.name}: {preset.description}")
    return preset
