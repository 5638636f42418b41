"""Presets: one code path, three sizes. A preset is every stage's config, nested; it changes sizes
and names only, never which functions run.

- ``ci``:   the tiny GPT-2, a few hundred reviews; seconds per notebook on a CPU, offline.
- ``cpu``:  the same tiny GPT-2 trained further on thousands of reviews; minutes on a laptop.
- ``gpt2``: GPT-2 (124 M) from the Hugging Face Hub; tens of minutes on one GPU.
- ``auto``: ``gpt2`` where a GPU and the Hub are reachable, else ``cpu``; it says which and why.

Any field can be replaced by its dotted name: ``get_preset("cpu", {"dpo.beta": 0.5})``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .data import DataConfig
from .baselines import PreferredFTConfig, UnlikelihoodConfig
from .critic_free import GRPOConfig, RLOOConfig
from .dpo import DPOConfig
from .models import HUB_HOST, ModelConfig, hub_reachable
from .online_dpo import OnlineDPOConfig
from .ppo import PPOConfig
from .preferences import PairsConfig
from .reward_model import RewardConfig
from .sampling import Generation
from .sentiment import GroundTruthConfig
from .sft import SFTConfig
from .validate import check_int, check_positive


@dataclass(frozen=True)
class ToySizes:
    """The finite problems of notebooks 01–03."""

    steps: int  # optimiser steps of tabular policies (gradient ascent, DPO)
    pairs: int  # preference pairs sampled for tabular DPO
    bt_max_comparisons: int  # the most comparisons in the Bradley–Terry error curve
    bt_repeats: int  # seeds per point of that curve (their median is plotted)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check_int(field.name, getattr(self, field.name), 1)


# The methods of the paper's Fig. 2 and those after it, each one a training recipe (study.py)
METHODS = ("DPO", "IPO", "cDPO", "PPO", "PPO-GT", "Preferred-FT", "Unlikelihood", "Best-of-N",
           "RLOO", "GRPO", "Online DPO")


@dataclass(frozen=True)
class Frontier:
    """The reward–KL frontier as an experiment (notebook 05, ``dpo-edu frontier``): which methods
    and settings, how many seeds, evaluated how (the paper's Fig. 2, with intervals)."""

    methods: tuple  # methods on the frontier (study.METHODS)
    dpo_betas: tuple  # β of DPO's runs (the paper's Fig. 2 sweeps 0.05–5)
    ipo_betas: tuple  # β of IPO's runs: its margin target is 1/(2β) per response token
    cdpo_betas: tuple  # β of cDPO's runs, at label smoothing cdpo_epsilon
    cdpo_epsilon: float  # cDPO's ε: each label assumed flipped with this probability
    ppo_targets: tuple  # target KL (nats) of PPO's and PPO-GT's runs (the adaptive controller's)
    unlikelihood_alphas: tuple  # α of Unlikelihood's runs, the weight of its unlikelihood term
    best_of_n: tuple  # N of Best-of-N; the largest is a multiple of every other
    rloo_betas: tuple  # β of RLOO's runs, the KL penalty in its reward
    grpo_betas: tuple  # β of GRPO's runs, the weight of its k3 KL term
    online_dpo_betas: tuple  # β of online DPO's runs
    seeds: int  # training seeds per setting (π_ref, the pairs and the reward model stay fixed)
    evals: int  # evaluations per run, the last after its final step: its points on the frontier
    select_prompts: int  # held-out prompts that choose each method's frontier points
    report_prompts: int  # other held-out prompts that report them
    samples_per_prompt: int  # completions sampled per prompt at each evaluation
    budgets: tuple  # KL (nats) at which the methods are compared
    seeds_by_method: tuple = ()  # ((method, seeds), …): more seeds where runs vary most

    def seeds_of(self, method: str) -> int:
        """The training seeds of ``method``'s settings."""
        return dict(self.seeds_by_method).get(method, self.seeds)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be some of {METHODS}, got {self.methods!r}")
        for name in ("dpo_betas", "ipo_betas", "cdpo_betas", "ppo_targets", "budgets",
                     "rloo_betas", "grpo_betas", "online_dpo_betas"):
            for value in getattr(self, name):
                check_positive(name, value)
        if not 0 < self.cdpo_epsilon < 0.5:
            raise ValueError(f"cdpo_epsilon must be in (0, 0.5), got {self.cdpo_epsilon!r}")
        for value in self.unlikelihood_alphas:
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"unlikelihood_alphas must be numbers ≥ 0, got {value!r}")
        for value in self.best_of_n:
            check_int("best_of_n", value, 1)
        if self.best_of_n and any(max(self.best_of_n) % n for n in self.best_of_n):
            raise ValueError(f"best_of_n: the largest N must be a multiple of every other, got "
                             f"{self.best_of_n}")
        for name in ("seeds", "evals", "select_prompts", "report_prompts", "samples_per_prompt"):
            check_int(name, getattr(self, name), 1)
        for entry in self.seeds_by_method:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and entry[0] in METHODS):
                raise ValueError(f"seeds_by_method takes (method, seeds) pairs of {METHODS}, got "
                                 f"{entry!r}")
            check_int(f"seeds_by_method[{entry[0]}]", entry[1], 1)


@dataclass(frozen=True)
class Preset:
    name: str  # "ci", "cpu" or "gpt2"
    description: str  # one line shown when the preset is chosen
    stages_time: str  # how long notebook 04's stages take to build, said when another notebook must
    toy: ToySizes  # notebooks 01–03
    model: ModelConfig  # the policy and its tokenizer (models.py)
    data: DataConfig  # the IMDb reviews read (data.py)
    generation: Generation  # how every method samples (sampling.py)
    ground_truth: GroundTruthConfig  # the judge (sentiment.py)
    pairs: PairsConfig  # π_ref's samples → preference pairs (preferences.py)
    sft: SFTConfig  # π_ref (sft.py)
    reward_model: RewardConfig  # RLHF's Bradley–Terry reward model (reward_model.py)
    dpo: DPOConfig  # dpo.py (and IPO, cDPO)
    ppo: PPOConfig  # ppo.py (and PPO-GT)
    preferred_ft: PreferredFTConfig  # baselines.py: SFT on the chosen responses
    unlikelihood: UnlikelihoodConfig  # baselines.py: likelihood of y_w, unlikelihood of y_l
    rloo: RLOOConfig  # critic_free.py: the leave-one-out baseline
    grpo: GRPOConfig  # critic_free.py: group-normalised advantages
    online_dpo: OnlineDPOConfig  # online_dpo.py: DPO on fresh pairs of π_θ
    frontier: Frontier  # notebook 05's and 06's runs


PRESETS = {
    "ci": Preset(
        name="ci",
        description="tiny GPT-2 on a few hundred reviews: seconds per notebook, CPU, offline",
        stages_time="about 20 seconds on 2 CPU cores",
        toy=ToySizes(steps=1500, pairs=20_000, bt_max_comparisons=20_000, bt_repeats=3),
        model=ModelConfig(n_layer=4, n_head=4, n_embd=128, n_positions=128, vocab_size=2000),
        data=DataConfig(reviews=400),
        generation=Generation(max_new_tokens=16),
        ground_truth=GroundTruthConfig(reviews=4_000),
        pairs=PairsConfig(prompts=128, eval_prompts=32, batch_size=128),  # 768 pairs in ~1 s
        sft=SFTConfig(steps=120, batch_size=16, lr=1e-3, warmup_steps=10, max_length=64),
        reward_model=RewardConfig(epochs=1.0, batch_size=16, lr=3e-4),
        dpo=DPOConfig(epochs=1.0, batch_size=16, lr=3e-4, beta=0.1, max_length=64,
                      length_buckets=3),
        # about 20 s; β may move up to 0.2 · 32/64 = 10 % a step
        ppo=PPOConfig(steps=24, batch_size=32, mini_batch_size=8, ppo_epochs=4, lr=3e-4,
                      kl_coef=0.05, kl_horizon=64),
        preferred_ft=PreferredFTConfig(epochs=1.0, batch_size=16, lr=3e-4, max_length=64),
        unlikelihood=UnlikelihoodConfig(epochs=1.0, batch_size=16, lr=3e-4, max_length=64),
        # 8 prompts × 4 samples a step, 2 passes of 2 minibatches: 4 updates a rollout, as PPO's 16
        rloo=RLOOConfig(steps=24, batch_size=8, group_size=4, mini_batch_size=16, iterations=2,
                        lr=3e-4, beta=0.05),
        grpo=GRPOConfig(steps=24, batch_size=8, group_size=4, mini_batch_size=16, iterations=2,
                        lr=3e-4, beta=0.04),
        online_dpo=OnlineDPOConfig(steps=24, batch_size=16, lr=3e-4, beta=0.1),
        frontier=Frontier(methods=METHODS, dpo_betas=(0.1, 1.0), ipo_betas=(0.5,),
                          cdpo_betas=(0.1,), cdpo_epsilon=0.1, ppo_targets=(4.0,),
                          unlikelihood_alphas=(0.5,),
                          best_of_n=(1, 4, 16), rloo_betas=(0.05,), grpo_betas=(0.04,),
                          online_dpo_betas=(0.1,), seeds=2, evals=3, select_prompts=16,
                          report_prompts=16, samples_per_prompt=2, budgets=(1.0, 2.0, 4.0)),
    ),
    "cpu": Preset(
        name="cpu",
        description="tiny GPT-2 on thousands of reviews: minutes per notebook, CPU, offline",
        stages_time="about 6 minutes on 2 CPU cores",
        toy=ToySizes(steps=3000, pairs=100_000, bt_max_comparisons=100_000, bt_repeats=7),
        model=ModelConfig(n_layer=4, n_head=6, n_embd=192, n_positions=256, vocab_size=4000),
        data=DataConfig(reviews=5000),
        generation=Generation(max_new_tokens=24),
        ground_truth=GroundTruthConfig(reviews=20_000),
        # 15,000 pairs, sampled in about a minute; 1,000 prompts left the reward model at 0.68
        pairs=PairsConfig(prompts=2500, eval_prompts=250, batch_size=128),
        sft=SFTConfig(steps=600, batch_size=16, lr=1e-3, warmup_steps=50, max_length=128),
        reward_model=RewardConfig(epochs=1.0, batch_size=32, lr=3e-4),
        # 0.3 epoch: ~250 steps of 16 over ~13,500 pairs, so the frontier study fits its 2 hours
        dpo=DPOConfig(epochs=0.3, batch_size=16, lr=1e-4, beta=0.1, warmup_steps=10, max_length=128,
                      length_buckets=3),
        # lr 3e-5: clipfrac ~0.03 (at 1e-4, ~0.25, and KL drifted to 3 even at a fixed β of 2);
        # kl_coef 0.2: from 0.05, KL reached 6–10 before β caught up in 64 steps;
        # horizon 128: β may move 5 % a step (horizon 32, 20 % a step, diverged: β 0.1 → 2,476)
        # about 2 minutes on one CPU thread
        ppo=PPOConfig(steps=64, batch_size=32, mini_batch_size=8, ppo_epochs=4, lr=3e-5,
                      kl_coef=0.2, kl_horizon=128),
        preferred_ft=PreferredFTConfig(epochs=0.3, batch_size=16, lr=1e-4, warmup_steps=10,
                                       max_length=128),
        unlikelihood=UnlikelihoodConfig(epochs=0.3, batch_size=16, lr=1e-4, warmup_steps=10,
                                        max_length=128),
        # PPO's 32 samples a step, 8 prompts × 4; 4 updates a rollout (PPO: 16) at lr 1e-4
        rloo=RLOOConfig(steps=64, batch_size=8, group_size=4, mini_batch_size=16, iterations=2,
                        lr=1e-4, beta=0.03),
        grpo=GRPOConfig(steps=64, batch_size=8, group_size=4, mini_batch_size=16, iterations=2,
                        lr=1e-4, beta=0.04),
        # 16 fresh pairs a step; 128 steps see 2,048 pairs (offline DPO at 0.3 epoch: ~4,000)
        online_dpo=OnlineDPOConfig(steps=128, batch_size=16, lr=1e-4, warmup_steps=10, beta=0.1),
        frontier=Frontier(methods=METHODS, dpo_betas=(0.05, 0.1, 0.5, 2.0),
                          ipo_betas=(0.1, 0.3, 1.0, 3.0), cdpo_betas=(0.05, 0.1, 0.5, 2.0),
                          cdpo_epsilon=0.1, ppo_targets=(1.0, 3.0, 6.0, 12.0),
                          unlikelihood_alphas=(0.1, 0.3, 0.6, 1.0),
                          best_of_n=(1, 2, 4, 8, 16, 32, 64), rloo_betas=(0.01, 0.03, 0.1, 0.3),
                          grpo_betas=(0.01, 0.04, 0.1, 0.3),
                          online_dpo_betas=(0.05, 0.1, 0.5, 2.0), seeds=3, evals=3,
                          select_prompts=150, report_prompts=250, samples_per_prompt=2,
                          budgets=(2.0, 5.0, 10.0),
                          # their runs vary most: 3 seeds left intervals 0.07–0.08 wide at KL 5–10
                          seeds_by_method=(("PPO", 5), ("Online DPO", 5))),
    ),
    "gpt2": Preset(
        name="gpt2",
        description="GPT-2 (124 M) from the Hugging Face Hub: tens of minutes on one GPU",
        stages_time="tens of minutes on one GPU (not yet measured)",
        toy=ToySizes(steps=3000, pairs=100_000, bt_max_comparisons=100_000, bt_repeats=7),
        # vocab_size: gpt2's own, so a random_init run times the real output layer; float32, since a
        # 1e-6 learning-rate step vanishes in bfloat16 weights
        model=ModelConfig(name="gpt2", random_init=False, n_layer=12, n_head=12, n_embd=768,
                          n_positions=1024, vocab_size=50257, device="cuda"),
        data=DataConfig(reviews=25_000),
        generation=Generation(max_new_tokens=48),
        ground_truth=GroundTruthConfig(classifier="siebert/sentiment-roberta-large-english",
                                       reviews=25_000),
        pairs=PairsConfig(prompts=4000, eval_prompts=400, batch_size=256),  # 24,000 pairs
        sft=SFTConfig(steps=800, batch_size=32, lr=5e-5, warmup_steps=50,
                      max_length=256),  # ~1 epoch
        reward_model=RewardConfig(epochs=1.0, batch_size=32, lr=1e-5),  # one pass, as InstructGPT
        # the paper's batch, learning rate and warmup
        dpo=DPOConfig(epochs=1.0, batch_size=64, lr=1e-6, beta=0.1, warmup_steps=150,
                      max_length=256, length_buckets=1),
        # horizon 640: β may move 2 % a step (at 10,000, 0.13 %: over 200 steps every target would
        # share one β path, a fixed-β sweep in all but name)
        ppo=PPOConfig(steps=200, batch_size=64, mini_batch_size=16, ppo_epochs=4, lr=1.41e-5,
                      kl_coef=0.1, target_kl=6.0, kl_horizon=640),
        preferred_ft=PreferredFTConfig(epochs=1.0, batch_size=64, lr=1e-5, warmup_steps=150,
                                       max_length=256),  # an SFT rate: 1e-6 would barely move
        unlikelihood=UnlikelihoodConfig(epochs=1.0, batch_size=64, lr=1e-6, warmup_steps=150,
                                        max_length=256),
        # PPO's 64 samples a step, 16 prompts × 4, at PPO's learning rate
        rloo=RLOOConfig(steps=200, batch_size=16, group_size=4, mini_batch_size=16, iterations=2,
                        lr=1.41e-5, beta=0.03),
        grpo=GRPOConfig(steps=200, batch_size=16, group_size=4, mini_batch_size=16, iterations=2,
                        lr=1.41e-5, beta=0.04),
        online_dpo=OnlineDPOConfig(steps=400, batch_size=32, lr=1e-6, warmup_steps=50, beta=0.1),
        frontier=Frontier(methods=METHODS, dpo_betas=(0.05, 0.1, 0.5, 1.0),
                          ipo_betas=(0.1, 0.3, 1.0, 3.0), cdpo_betas=(0.05, 0.1, 0.5, 1.0),
                          cdpo_epsilon=0.1, ppo_targets=(2.0, 4.0, 8.0, 16.0),
                          unlikelihood_alphas=(0.1, 0.3, 0.6, 1.0),
                          best_of_n=(1, 2, 4, 8, 16, 32, 64), rloo_betas=(0.01, 0.03, 0.1, 0.3),
                          grpo_betas=(0.01, 0.04, 0.1, 0.3),
                          online_dpo_betas=(0.05, 0.1, 0.5, 1.0), seeds=3, evals=4,
                          select_prompts=300, report_prompts=400, samples_per_prompt=2,
                          budgets=(2.0, 5.0, 10.0)),
    ),
}

# The flat names of the first layout, and where each field lives now.
RENAMED = {
    "toy_steps": "toy.steps", "toy_pairs": "toy.pairs",
    "bt_max_comparisons": "toy.bt_max_comparisons",
    "bt_repeats": "toy.bt_repeats", "model": "model.name", "random_init": "model.random_init",
    "n_layer": "model.n_layer", "n_head": "model.n_head", "n_embd": "model.n_embd",
    "n_positions": "model.n_positions", "vocab_size": "model.vocab_size", "device": "model.device",
    "dtype": "model.dtype", "n_reviews": "data.reviews",
    "max_length": "sft.max_length and dpo.max_length",
    "max_new_tokens": "generation.max_new_tokens", "temperature": "generation.temperature",
    "pair_prompts": "pairs.prompts", "completions_per_prompt": "pairs.completions",
    "generation_batch_size": "pairs.batch_size", "eval_pair_prompts": "pairs.eval_prompts",
    "reward_classifier": "ground_truth.classifier", "classifier_reviews": "ground_truth.reviews",
    "rm_epochs": "reward_model.epochs", "rm_batch_size": "reward_model.batch_size",
    "rm_lr": "reward_model.lr", "dpo_beta_sweep": "frontier.dpo_betas",
    "ppo_target_sweep": "frontier.ppo_targets", "ppo_epochs": "ppo.ppo_epochs",
    **{f"{section}_{field}": f"{section}.{field}" for section, fields in (
        ("sft", ("steps", "batch_size", "lr", "warmup_steps")),
        ("dpo", ("epochs", "batch_size", "lr", "beta", "warmup_steps", "length_buckets")),
        ("ppo", ("steps", "batch_size", "mini_batch_size", "lr", "kl_coef", "target_kl",
                 "kl_horizon")),
    ) for field in fields},
}
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "tuple": (tuple, list),
          "None": type(None)}  # what a field of each annotation accepts


# Preset's sections by the name their annotation carries (annotations are strings here)
_SECTIONS = {cls.__name__: cls for cls in (ToySizes, ModelConfig, DataConfig, Generation,
                                            GroundTruthConfig, PairsConfig, SFTConfig, RewardConfig,
                                            DPOConfig, PPOConfig, PreferredFTConfig,
                                            UnlikelihoodConfig, RLOOConfig, GRPOConfig,
                                            OnlineDPOConfig, Frontier)}


# Fields the notebooks set themselves, so an override would change nothing.
SET_BY_THE_NOTEBOOK = {"seed": "the notebook's SEED (dpo-edu run --seed N)",
                       **{f"{section}.eval_every": "frontier.evals"
                          for section in ("dpo", "ppo", "preferred_ft", "unlikelihood", "rloo",
                                          "grpo", "online_dpo")}}


def field_names() -> list[str]:
    """Every dotted name an override can reach: ``["toy.steps", …, "dpo.beta", …]``."""
    return [f"{section.name}.{field.name}" for section in dataclasses.fields(Preset)
            if section.type in _SECTIONS for field in dataclasses.fields(_SECTIONS[section.type])
            if field.name != "seed" and f"{section.name}.{field.name}" not in SET_BY_THE_NOTEBOOK]


def _typed(name: str, annotation: str, value):
    """``value`` if its type fits the field's annotation (a list made a tuple), else ValueError."""
    kinds = [part.strip() for part in annotation.split("|")]
    fits = ("bool" in kinds if isinstance(value, bool)
            else any(isinstance(value, _TYPES[k]) for k in kinds))
    if not fits:
        raise ValueError(f"preset field '{name}' takes {annotation}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


def override(preset: Preset, overrides: dict) -> Preset:
    """``preset`` with each dotted field of ``overrides`` replaced; each config changed is
    validated once with all its new fields (so ``pairs.prompts`` and ``pairs.eval_prompts`` may
    move together)."""
    known, sections = field_names(), {}
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"preset field '{name}' cannot be set: {_why_unknown(name, known)}")
        section, field = name.split(".")
        annotation = {f.name: f.type for f in dataclasses.fields(getattr(preset, section))}[field]
        sections.setdefault(section, {})[field] = _typed(name, annotation, value)
    for section, fields in sections.items():
        try:
            config = dataclasses.replace(getattr(preset, section), **fields)
        except ValueError as error:  # the config's own check: say which preset fields it was
            names = ", ".join(f"'{section}.{field}'" for field in fields)
            raise ValueError(f"preset field {names}: {error}") from None
        preset = dataclasses.replace(preset, **{section: config})
    return preset


def _why_unknown(name: str, known: list[str]) -> str:
    if name in SET_BY_THE_NOTEBOOK or name.endswith(".seed"):
        return f"it is set by {SET_BY_THE_NOTEBOOK.get(name, SET_BY_THE_NOTEBOOK['seed'])}"
    if name in RENAMED:
        return f"it is now '{RENAMED[name]}'"
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"did you mean {' or '.join(close)}?"
    return "fields are dotted, such as dpo.beta (all: dpo_edu.presets.field_names())"


def choose_auto() -> tuple[str, str]:
    """The preset ``auto`` stands for, and why."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "no CUDA GPU is visible"
    if not hub_reachable():
        return "cpu", (f"a GPU is visible but {HUB_HOST} cannot be reached "
                       "(or HF_HUB_OFFLINE is set)")
    return "gpt2", f"a GPU ({torch.cuda.get_device_name()}) and {HUB_HOST} are both reachable"


def get_preset(name: str, overrides: dict | None = None, verbose: bool = True) -> Preset:
    """The preset ``name`` (``auto`` resolved), with dotted ``overrides``: ``{"dpo.beta": 0.5}``."""
    if name == "auto":
        name, why = choose_auto()
        if verbose:
            print(f"PRESET 'auto' → '{name}': {why}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)} or 'auto'")
    preset = override(PRESETS[name], overrides or {})
    if verbose:
        print(f"preset {preset.name}: {preset.description}")
    return preset
