"""The run folder's stages (pipeline.py) on a tiny run: each reused only when finished with the same settings.

The stage mechanism itself is tested in test_stages.py; the samples/ and pairs/ stages in test_preferences.py;
the ground-truth stage in test_sentiment.py; the alignment runs in test_runs.py.
"""

import dataclasses
import json

import torch

from conftest import TINY_RUN

from dpo_edu import pipeline
from dpo_edu.presets import get_preset
from dpo_edu.sft import SFTConfig
from dpo_edu.stages import Stage
from dpo_edu.training import result_settings



def test_result_settings_ignore_logging_cadence():
    quiet, chatty = SFTConfig(log_every=1, progress=False), SFTConfig(log_every=50, save_every=7, progress=True)
    assert result_settings(quiet) == result_settings(chatty)
    assert result_settings(SFTConfig(lr=1e-4)) != result_settings(quiet)
    assert set(result_settings(quiet)) == {f.name for f in dataclasses.fields(SFTConfig)} - {
        "log_every", "save_every", "progress"}


def test_reference_policy_is_trained_once_then_loaded(tmp_path, capsys, one_thread):
    preset = get_preset("ci", {**TINY_RUN, "sft.steps": 2, "sft.batch_size": 4, "sft.max_length": 32}, verbose=False)
    first = pipeline.reference_policy(preset, tmp_path)
    folder = tmp_path / "sft"
    assert "SFT (π_ref): new; building" in capsys.readouterr().out
    assert first.stage == Stage(folder, {"model": dataclasses.asdict(preset.model), "data": dataclasses.asdict(
        preset.data), "sft": result_settings(preset.sft), "seed": 0})
    assert json.loads((folder / "settings.json").read_text()) == first.stage.settings
    assert not (folder / "init").exists() and not (folder / "checkpoint").exists()
    assert [row["step"] for row in first.metrics] == [1, 2] and not first.policy.training
    again = pipeline.reference_policy(preset, tmp_path)
    assert "SFT (π_ref): reusing" in capsys.readouterr().out
    assert again.metrics == first.metrics and again.stage == first.stage
    for (name, weight), (_, loaded) in zip(first.policy.state_dict().items(), again.policy.state_dict().items()):
        assert torch.equal(weight, loaded), name
    pipeline.reference_policy(dataclasses.replace(preset, sft=dataclasses.replace(preset.sft, lr=5e-4)), tmp_path)
    assert "SFT (π_ref): settings changed (sft.lr); building" in capsys.readouterr().out


def test_a_truncated_model_file_is_named_and_the_stage_rebuilt(tmp_path, capsys, one_thread):
    """Issue 15: a truncated model.safetensors failed with "SafetensorError: incomplete metadata" on every rerun."""
    preset = get_preset("ci", {**TINY_RUN, "sft.steps": 2, "sft.batch_size": 4, "sft.max_length": 32}, verbose=False)
    first = pipeline.reference_policy(preset, tmp_path)
    weights = tmp_path / "sft" / "model.safetensors"
    size, cut = weights.stat().st_size, weights.read_bytes()[: weights.stat().st_size // 2]
    weights.unlink()  # a new file, as a copy cut short: the loaded policy still maps the old one
    weights.write_bytes(cut)
    capsys.readouterr()
    again = pipeline.reference_policy(preset, tmp_path)
    expected = f"SFT (π_ref): model.safetensors has changed ({size // 2:,} bytes, {size:,} when built); building"
    assert expected in capsys.readouterr().out
    for (name, weight), (_, loaded) in zip(first.policy.state_dict().items(), again.policy.state_dict().items()):
        assert torch.equal(weight, loaded), name  # rebuilt to the same weights
