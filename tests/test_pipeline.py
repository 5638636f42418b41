"""The run folder's stages (pipeline.py) on a tiny run: each reused only when finished with the same settings.

The stage mechanism itself is tested in test_stages.py; the samples/ and pairs/ stages in test_preferences.py;
the ground-truth stage in test_sentiment.py.
"""

import dataclasses
import json
import math

import pytest
import torch

from dpo_edu import pipeline
from conftest import TINY_RUN, hash_reward, tiny_reference

from dpo_edu.presets import get_preset
from dpo_edu.sft import SFTConfig
from dpo_edu.stages import Stage
from dpo_edu.training import result_settings

PROMPTS = ["The movie was", "I", "This film is a", "Acting"]





def _share(alphabet: str):
    """A toy ground-truth reward: the share of the text's characters drawn from ``alphabet``."""
    return lambda texts: [sum(c in alphabet for c in t) / max(1, len(t)) for t in texts]


def test_result_settings_ignore_logging_cadence():
    quiet, chatty = SFTConfig(log_every=1, progress=False), SFTConfig(log_every=50, save_every=7, progress=True)
    assert result_settings(quiet) == result_settings(chatty)
    assert result_settings(SFTConfig(lr=1e-4)) != result_settings(quiet)
    assert set(result_settings(quiet)) == {f.name for f in dataclasses.fields(SFTConfig)} - {
        "log_every", "save_every", "progress"}


@pytest.mark.parametrize("steps, n_evals, points", [(64, 3, [22, 44, 64]), (336, 3, [112, 224, 336]), (2, 5, [1, 2])])
def test_a_run_is_evaluated_n_times_the_last_at_its_final_step(steps, n_evals, points):
    every = pipeline.eval_every(steps, n_evals)
    assert sorted({*range(every, steps + 1, every), steps}) == points  # as train_loop evaluates


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


def test_ppo_gt_trains_on_the_true_reward_and_reruns_when_the_reward_changes(tmp_path, tiny_lm, capsys, one_thread):
    ref = tiny_reference(tiny_lm, tmp_path)
    preset = get_preset("ci", {**TINY_RUN, "ppo.steps": 2, "ppo.batch_size": 8, "ppo.mini_batch_size": 4,
                               "ppo.ppo_epochs": 1}, verbose=False)
    vowels, consonants = _share("aeiou"), _share("bcdfghjklmnpqrstvwxz")

    def run(reward):
        return pipeline.ppo_run(preset, tmp_path, ref, reward, PROMPTS, PROMPTS * 2, 3.0, ground_truth=True,
                                n_evals=1)

    first = run(vowels)
    assert first.model is None and first.stage.folder == tmp_path / "ppo_gt" / "target_3"
    assert [row["step"] for row in first.metrics] == [1, 2] and "eval/reward" in first.metrics[-1]
    samples = first.samples
    assert [s["prompt"] for s in samples] == PROMPTS
    assert [s["reward"] for s in samples] == pytest.approx(vowels([s["prompt"] + s["completion"] for s in samples]))
    assert first.metrics[-1]["eval/reward"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))
    assert first.cost["backward_tokens"] > 0
    settings = json.loads((first.stage.folder / "settings.json").read_text())
    assert settings["reward_model"] is None and settings["ppo"]["target_kl"] == 3.0 and settings["sft"] == (
        ref.stage.settings)
    assert run(vowels).metrics == first.metrics
    assert "PPO-GT target KL=3.0: reusing" in capsys.readouterr().out
    other = run(consonants)
    assert "PPO-GT target KL=3.0: settings changed (reward); building" in capsys.readouterr().out
    assert other.metrics[0]["objective/scores"] != first.metrics[0]["objective/scores"]


def test_ppo_run_needs_a_reward_model_unless_it_trains_on_the_ground_truth(tmp_path, tiny_lm):
    ref, preset = tiny_reference(tiny_lm, tmp_path), get_preset("ci", TINY_RUN, verbose=False)
    with pytest.raises(ValueError, match="give reward_model for RLHF, or ground_truth=True"):
        pipeline.ppo_run(preset, tmp_path, ref, hash_reward, PROMPTS, PROMPTS, 3.0)  # neither
    trained = pipeline.Trained(object(), [], [], {}, Stage(tmp_path / "reward_model", {}))
    with pytest.raises(ValueError, match="give reward_model for RLHF, or ground_truth=True"):
        pipeline.ppo_run(preset, tmp_path, ref, hash_reward, PROMPTS, PROMPTS, 3.0, reward_model=trained,
                         ground_truth=True)  # both
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "ppo_gt").exists()


def test_dpo_run_records_its_loss_type_and_a_new_loss_type_rebuilds(tmp_path, tiny_lm, capsys, one_thread):
    ref = tiny_reference(tiny_lm, tmp_path)
    sizes = {**TINY_RUN, "dpo.steps": 2, "dpo.batch_size": 4}
    pairs = pipeline.preference_pairs(get_preset("ci", sizes, verbose=False), tmp_path, ref, hash_reward)
    beta = 0.1

    def run(loss_type):
        preset = get_preset("ci", {**sizes, "dpo.loss_type": loss_type}, verbose=False)
        return pipeline.dpo_run(preset, tmp_path, ref, pairs, hash_reward, PROMPTS, beta, n_evals=1)

    capsys.readouterr()
    sigmoid = run("sigmoid")
    folder = tmp_path / "dpo" / "beta_0.1"
    assert sigmoid.stage.folder == folder and "DPO β=0.1: new; building" in capsys.readouterr().out
    assert json.loads((folder / "settings.json").read_text())["dpo"]["loss_type"] == "sigmoid"
    ipo = run("ipo")
    assert f"DPO β=0.1: settings changed (dpo.loss_type); building {folder}" in capsys.readouterr().out
    settings = json.loads((folder / "settings.json").read_text())
    assert settings == ipo.stage.settings and settings["dpo"]["loss_type"] == "ipo"
    assert settings["dpo"]["beta"] == beta and settings["pairs"] == pairs.stage.settings
    assert [row["step"] for row in ipo.metrics] == [1, 2] and "eval/reward" in ipo.metrics[-1]
    # step 1: π_θ = π_ref, so every log-ratio is 0: −log σ(0) = log 2 for DPO, (0 − 1/(2β))² for IPO
    assert sigmoid.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert ipo.metrics[0]["loss"] == pytest.approx((1 / (2 * beta)) ** 2, abs=1e-3)
    assert ipo.metrics[0]["loss"] != sigmoid.metrics[0]["loss"]
    for run_ in (sigmoid, ipo):
        assert run_.metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert run("ipo").metrics == ipo.metrics and "DPO β=0.1: reusing" in capsys.readouterr().out
    again = run("sigmoid")  # the IPO run does not stand in for the sigmoid one: built again, the same numbers
    assert "settings changed (dpo.loss_type); building" in capsys.readouterr().out
    assert again.metrics == sigmoid.metrics and again.samples == sigmoid.samples
