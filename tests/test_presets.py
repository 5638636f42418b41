"""Tests for dpo_edu.presets: the ci / cpu / gpt2 sizes, overrides, and how 'auto' chooses.

No test touches the network: the Hub probe and CUDA are monkeypatched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import socket

import pytest
import torch

from dpo_edu import models, presets
from dpo_edu.baselines import PreferredFTConfig, UnlikelihoodConfig
from dpo_edu.critic_free import GRPOConfig, RLOOConfig
from dpo_edu.data import DataConfig
from dpo_edu.dpo import DPOConfig
from dpo_edu.models import ModelConfig
from dpo_edu.online_dpo import OnlineDPOConfig
from dpo_edu.ppo import PPOConfig, adapt_kl_coef
from dpo_edu.preferences import PairsConfig
from dpo_edu.reward_model import RewardConfig
from dpo_edu.sampling import Generation
from dpo_edu.sentiment import GroundTruthConfig
from dpo_edu.sft import SFTConfig
from dpo_edu.training import TrainConfig

TOY_FIELDS = ("steps", "pairs", "bt_max_comparisons", "bt_repeats")
SECTIONS = {"toy": presets.ToySizes, "model": ModelConfig, "data": DataConfig, "generation": Generation,
            "ground_truth": GroundTruthConfig, "pairs": PairsConfig, "sft": SFTConfig, "reward_model": RewardConfig,
            "dpo": DPOConfig, "ppo": PPOConfig, "preferred_ft": PreferredFTConfig, "unlikelihood": UnlikelihoodConfig,
            "rloo": RLOOConfig, "grpo": GRPOConfig, "online_dpo": OnlineDPOConfig, "frontier": presets.Frontier}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test loudly instead of reaching the internet."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_ci_preset_fields():
    """'ci' is the small CPU preset: its own name, a description, and the toy sizes it promises."""
    preset = presets.get_preset("ci", verbose=False)
    assert preset == presets.PRESETS["ci"]
    assert preset.name == "ci"
    assert "CPU" in preset.description and "offline" in preset.description
    assert (preset.toy.steps, preset.toy.pairs, preset.toy.bt_max_comparisons, preset.toy.bt_repeats) == (
        1500,
        20_000,
        20_000,
        3,
    )


def test_every_preset_is_named_by_its_key_and_ci_is_the_smallest():
    """PRESETS has exactly ci/cpu/gpt2, each carrying its key as name; ci's toy sizes are ≤ every other's."""
    assert sorted(presets.PRESETS) == ["ci", "cpu", "gpt2"]
    for key, preset in presets.PRESETS.items():
        assert preset.name == key and preset.description
        for field in TOY_FIELDS:
            value = getattr(preset.toy, field)
            assert isinstance(value, int) and value > 0, (key, field)
            assert getattr(presets.PRESETS["ci"].toy, field) <= value, (key, field)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_nests_one_frozen_config_per_stage(name):
    """Each section of a preset is its stage's own config class, frozen; the trainers' share TrainConfig."""
    preset = presets.PRESETS[name]
    assert [f.name for f in dataclasses.fields(preset)] == ["name", "description", "stages_time", *SECTIONS]
    for section, cls in SECTIONS.items():
        config = getattr(preset, section)
        assert type(config) is cls, (name, section)
        assert cls.__dataclass_params__.frozen, section
        assert dataclasses.replace(config) == config  # its own checks accept the preset's values
    for section in ("sft", "reward_model", "dpo", "ppo", "preferred_ft", "unlikelihood", "rloo", "grpo", "online_dpo"):
        assert isinstance(getattr(preset, section), TrainConfig), section
    assert preset.pairs.completions == 4 and 0 < preset.pairs.eval_prompts < preset.pairs.prompts
    assert preset.ppo.steps is not None and preset.ppo.mini_batch_size <= preset.ppo.batch_size
    assert isinstance(preset.frontier.dpo_betas, tuple) and isinstance(preset.frontier.ppo_targets, tuple)
    assert preset.model.random_init == (preset.model.name == "tiny")


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_presets_kl_controller_can_separate_its_targets(name):
    """Within its PPO run, the adaptive controller can move β by a factor e or more (β(1 + 0.2 n/H) a step at
    most): a horizon too long for the run leaves every target of the sweep on the same β path."""
    preset = presets.PRESETS[name]
    most_per_step = math.log(1 + 0.2 * preset.ppo.batch_size / preset.ppo.kl_horizon)
    assert preset.ppo.steps * most_per_step >= 1.0, (name, preset.ppo.steps * most_per_step)
    beta = preset.ppo.kl_coef  # the controller itself, its KL far above target at every step
    for _ in range(preset.ppo.steps):
        beta = adapt_kl_coef(beta, kl=100.0, n=preset.ppo.batch_size, target=1.0, horizon=preset.ppo.kl_horizon)
    assert math.log(beta / preset.ppo.kl_coef) == pytest.approx(preset.ppo.steps * most_per_step)


def test_presets_are_frozen():
    """A preset cannot be mutated in place, nor any of its configs (overrides make a copy instead)."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.PRESETS["ci"].toy = presets.PRESETS["cpu"].toy
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.PRESETS["ci"].toy.steps = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.PRESETS["ci"].dpo.beta = 1.0


def test_get_preset_prints_the_choice(capsys):
    """verbose=True prints the preset name and its description; verbose=False prints nothing."""
    presets.get_preset("cpu")
    assert capsys.readouterr().out == f"preset cpu: {presets.PRESETS['cpu'].description}\n"
    presets.get_preset("cpu", verbose=False)
    assert capsys.readouterr().out == ""


def test_dotted_overrides_reach_nested_fields_without_touching_the_registry():
    """get_preset(name, {"section.field": value}) returns a copy with those fields changed; PRESETS is unchanged."""
    before = copy.deepcopy(presets.PRESETS)
    preset = presets.get_preset("ci", {"toy.steps": 7, "toy.bt_repeats": 1, "dpo.loss_type": "ipo",
                                       "model.n_layer": 2, "ppo.target_kl": None, "generation.temperature": 0.7},
                                verbose=False)
    ci = presets.PRESETS["ci"]
    assert (preset.toy.steps, preset.toy.bt_repeats, preset.toy.pairs) == (7, 1, ci.toy.pairs)
    assert preset.dpo == dataclasses.replace(ci.dpo, loss_type="ipo") and preset.dpo.loss_type == "ipo"
    assert preset.model == dataclasses.replace(ci.model, n_layer=2)
    assert preset.generation == Generation(max_new_tokens=ci.generation.max_new_tokens, temperature=0.7)
    assert preset.ppo.target_kl is None and preset.sft == ci.sft and preset.frontier == ci.frontier
    assert presets.PRESETS == before and ci.toy.steps == 1500 and ci.dpo.loss_type == "sigmoid"
    assert presets.override(ci, {"dpo.loss_type": "ipo", "toy.steps": 7, "toy.bt_repeats": 1, "model.n_layer": 2,
                                 "ppo.target_kl": None, "generation.temperature": 0.7}) == preset
    assert presets.override(ci, {}) == ci


def test_field_names_are_every_settable_dotted_field():
    names = presets.field_names()
    assert {"toy.steps", "model.n_layer", "dpo.beta", "dpo.loss_type", "ppo.kl_horizon", "frontier.dpo_betas",
            "ground_truth.reviews", "pairs.prompts", "generation.max_new_tokens"} <= set(names)
    assert len(names) == len(set(names)) and all(name.count(".") == 1 for name in names)
    assert not {"seed", "dpo.seed", "ppo.seed", "dpo.eval_every", "ppo.eval_every", "unlikelihood.eval_every"} & set(
        names)
    for name in names:  # each one reaches a field of its section
        section, field = name.split(".")
        assert field in {f.name for f in dataclasses.fields(SECTIONS[section])}, name
    expected = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    trainers = ("dpo", "ppo", "preferred_ft", "unlikelihood", "rloo", "grpo", "online_dpo")
    assert set(names) == expected - {"sft.seed", "reward_model.seed", *(f"{t}.seed" for t in trainers),
                                      *(f"{t}.eval_every" for t in trainers)}


def test_a_list_for_a_tuple_field_becomes_a_tuple():
    preset = presets.get_preset("ci", {"frontier.dpo_betas": [0.1, 0.5], "frontier.ppo_targets": (3.0,)},
                                verbose=False)
    assert preset.frontier.dpo_betas == (0.1, 0.5) and type(preset.frontier.dpo_betas) is tuple
    assert preset.frontier.ppo_targets == (3.0,)


def test_unknown_preset_lists_the_choices():
    """An unknown name raises a ValueError naming it and listing ci, cpu, gpt2 and auto."""
    with pytest.raises(ValueError, match=r"unknown preset 'large'; choose one of \['ci', 'cpu', 'gpt2'\] or 'auto'"):
        presets.get_preset("large")


@pytest.mark.parametrize("old, new", sorted(presets.RENAMED.items()))
def test_each_old_flat_name_says_its_new_dotted_name(old, new):
    assert new in {"sft.max_length and dpo.max_length"} or new in presets.field_names()
    with pytest.raises(ValueError, match=re.escape(f"preset field '{old}' cannot be set: it is now '{new}'")):
        presets.get_preset("ci", {old: 1}, verbose=False)


@pytest.mark.parametrize("name, close", [("dpo.bta", "dpo.beta"), ("ppo.step", "ppo.steps"),
                                         ("dpo.loss_typ", "dpo.loss_type"),
                                         ("frontier.dpo_beta", "frontier.dpo_betas")])
def test_a_misspelt_dotted_name_suggests_close_names(name, close):
    pattern = rf"preset field '{re.escape(name)}' cannot be set: did you mean (.* or )?{re.escape(close)}( or |\?$)"
    with pytest.raises(ValueError, match=pattern):
        presets.get_preset("ci", {name: 1}, verbose=False)


def test_an_unknown_undotted_field_says_fields_are_dotted():
    with pytest.raises(ValueError, match=r"preset field 'learning_rate' cannot be set: fields are dotted, such as "
                                         r"dpo.beta \(all: dpo_edu.presets.field_names\(\)\)"):
        presets.get_preset("ci", {"learning_rate": 1e-3}, verbose=False)


@pytest.mark.parametrize("name, value, message", [
    ("ppo.steps", "abc", "preset field 'ppo.steps' takes int | None, got 'abc'"),
    ("ppo.steps", 2.5, "preset field 'ppo.steps' takes int | None, got 2.5"),
    ("model.random_init", 1, "preset field 'model.random_init' takes bool, got 1"),
    ("dpo.beta", "0.1", "preset field 'dpo.beta' takes float, got '0.1'"),
    ("ppo.steps", -3, "preset field 'ppo.steps': steps must be an int ≥ 1, got -3"),
    ("dpo.loss_type", "kto", "preset field 'dpo.loss_type': loss_type must be one of"),
    ("dpo.beta", -1.0, "preset field 'dpo.beta': beta must be a finite number > 0, got -1.0"),
    ("model.n_head", 3, r"preset field 'model.n_head': n_embd \(128\) must be a multiple of n_head \(3\)"),
])
def test_a_wrong_type_or_value_names_the_field(name, value, message):
    with pytest.raises(ValueError, match=message):
        presets.get_preset("ci", {name: value}, verbose=False)


@pytest.mark.parametrize("name, set_by", [("seed", "the notebook's SEED"), ("dpo.seed", "the notebook's SEED"),
                                          ("dpo.eval_every", "frontier.evals"),
                                          ("ppo.eval_every", "frontier.evals")])
def test_fields_the_notebooks_set_say_which_parameter_sets_them(name, set_by):
    with pytest.raises(ValueError, match=rf"preset field '{name}' cannot be set: it is set by {set_by}"):
        presets.get_preset("ci", {name: 1}, verbose=False)
    assert name in presets.SET_BY_THE_NOTEBOOK or name.endswith(".seed")


def test_auto_without_cuda_resolves_to_cpu_and_says_why(monkeypatch, capsys):
    """'auto' with no CUDA GPU picks 'cpu' and prints the reason, without probing the Hub."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(presets, "hub_reachable", lambda *a, **k: pytest.fail("the Hub need not be probed"))
    preset = presets.get_preset("auto")
    assert preset.name == "cpu"
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "PRESET 'auto' → 'cpu': no CUDA GPU is visible"
    assert out[1].startswith("preset cpu: ")


def test_auto_with_gpu_but_no_hub_resolves_to_cpu(monkeypatch, capsys):
    """A visible GPU is not enough: without the Hub, 'auto' still picks 'cpu' and says the Hub is unreachable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(presets, "hub_reachable", lambda *a, **k: False)
    assert presets.get_preset("auto").name == "cpu"
    assert "huggingface.co cannot be reached" in capsys.readouterr().out


def test_auto_with_gpu_and_hub_resolves_to_gpt2(monkeypatch, capsys):
    """With a GPU and the Hub reachable, 'auto' picks 'gpt2' and names the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 80GB")
    monkeypatch.setattr(presets, "hub_reachable", lambda *a, **k: True)
    assert presets.get_preset("auto").name == "gpt2"
    assert "Fake GPU 80GB" in capsys.readouterr().out
    assert presets.choose_auto()[0] == "gpt2"


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_hub_reachable_respects_offline_mode_without_a_network_call(monkeypatch, value):
    """HF_HUB_OFFLINE set → the Hub counts as unreachable, and no connection is attempted (autouse guard)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert presets.hub_reachable() is False


def test_hub_reachable_probes_port_443(monkeypatch):
    """Online: reachable iff a TCP connection to huggingface.co:443 opens; an OSError means unreachable."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert presets.hub_reachable is models.hub_reachable and presets.HUB_HOST == models.HUB_HOST == "huggingface.co"
    seen = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        seen.append((address, timeout))
        return Connection()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert presets.hub_reachable(timeout=0.5) is True
    assert seen == [(("huggingface.co", 443), 0.5)]

    def fail(address, timeout):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", fail)
    assert presets.hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # "0" means online: the probe runs
    assert presets.hub_reachable() is False


def test_a_sections_overrides_are_validated_together_whatever_their_order():
    """prompts 6 with eval_prompts 2 is valid; set one at a time, prompts 6 would clash with ci's 32 held out."""
    for overrides in ({"pairs.prompts": 6, "pairs.eval_prompts": 2}, {"pairs.eval_prompts": 2, "pairs.prompts": 6}):
        pairs = presets.get_preset("ci", overrides, verbose=False).pairs
        assert (pairs.prompts, pairs.eval_prompts) == (6, 2)
    with pytest.raises(ValueError, match=r"preset field 'pairs.prompts': eval_prompts \(32\) must be < prompts"):
        presets.get_preset("ci", {"pairs.prompts": 6}, verbose=False)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_notebook_06s_one_beta_is_a_setting_of_the_study(name):
    """Notebook 06 trains each of RLOO, GRPO and online DPO at its section's β (SWEEP = False): one of the frontier
    study's settings, so the shipped study holds the same run with more seeds."""
    preset = presets.PRESETS[name]
    for method in ("rloo", "grpo", "online_dpo"):
        assert getattr(preset, method).beta in getattr(preset.frontier, f"{method}_betas"), (name, method)
