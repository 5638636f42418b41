"""Tests for dpo_edu.presets: the ci / cpu / gpt2 sizes, overrides, and how 'auto' chooses.

No test touches the network: the Hub probe and CUDA are monkeypatched.
"""

from __future__ import annotations

import dataclasses
import math
import socket

import pytest
import torch

from dpo_edu import presets

TOY_FIELDS = ("toy_steps", "toy_pairs", "bt_max_comparisons", "bt_repeats")


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
    assert (preset.toy_steps, preset.toy_pairs, preset.bt_max_comparisons, preset.bt_repeats) == (
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
            value = getattr(preset, field)
            assert isinstance(value, int) and value > 0, (key, field)
            assert getattr(presets.PRESETS["ci"], field) <= value, (key, field)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_presets_kl_controller_can_separate_its_targets(name):
    """Within its PPO run, the adaptive controller can move β by a factor e or more (β(1 + 0.2 n/H) a step at
    most): a horizon too long for the run leaves every target of the sweep on the same β path."""
    preset = presets.PRESETS[name]
    most_per_step = math.log(1 + 0.2 * preset.ppo_batch_size / preset.ppo_kl_horizon)
    assert preset.ppo_steps * most_per_step >= 1.0, (name, preset.ppo_steps * most_per_step)


def test_presets_are_frozen():
    """A preset cannot be mutated in place (overrides make a copy instead)."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.PRESETS["ci"].toy_steps = 1


def test_get_preset_prints_the_choice(capsys):
    """verbose=True prints the preset name and its description; verbose=False prints nothing."""
    presets.get_preset("cpu")
    assert capsys.readouterr().out == f"preset cpu: {presets.PRESETS['cpu'].description}\n"
    presets.get_preset("cpu", verbose=False)
    assert capsys.readouterr().out == ""


def test_overrides_replace_fields_without_touching_the_registry():
    """get_preset(name, field=value) returns a copy with that field changed; PRESETS is unchanged."""
    preset = presets.get_preset("ci", verbose=False, toy_steps=7, bt_repeats=1)
    assert (preset.toy_steps, preset.bt_repeats) == (7, 1)
    assert preset.toy_pairs == presets.PRESETS["ci"].toy_pairs
    assert presets.PRESETS["ci"].toy_steps == 1500


def test_unknown_preset_lists_the_choices():
    """An unknown name raises a ValueError naming it and listing ci, cpu, gpt2 and auto."""
    with pytest.raises(ValueError, match=r"unknown preset 'large'; choose one of \['ci', 'cpu', 'gpt2'\] or 'auto'"):
        presets.get_preset("large")


def test_unknown_override_field_raises():
    """An override that is not a Preset field raises a ValueError naming the field and the preset."""
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['learning_rate', 'toy_step'\] for preset 'ci'"):
        presets.get_preset("ci", verbose=False, toy_step=5, learning_rate=1e-3)


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
