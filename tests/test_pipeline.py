"""The run folder's cache: a stage is reused only when finished with the same settings."""

import dataclasses
import json

import pytest

from dpo_edu import models, pipeline


def test_cached_stage_builds_then_reuses(tmp_path, capsys):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "artifact.txt").write_text("built")

    folder = tmp_path / "stage"
    assert pipeline.cached_stage(folder, {"lr": 1e-3}, build, "stage") is False
    assert pipeline.cached_stage(folder, {"lr": 1e-3}, build, "stage") is True
    assert calls == [folder]
    assert json.loads((folder / pipeline.SETTINGS).read_text()) == {"lr": 1e-3}
    assert "stage: reusing" in capsys.readouterr().out


def test_changed_settings_rebuild_and_name_the_change(tmp_path, capsys):
    calls = []
    folder = tmp_path / "stage"
    pipeline.cached_stage(folder, {"lr": 1e-3, "steps": 10}, calls.append, "SFT")
    assert pipeline.cached_stage(folder, {"lr": 1e-3, "steps": 20}, calls.append, "SFT") is False
    assert len(calls) == 2
    assert "SFT: settings changed (steps); rebuilding" in capsys.readouterr().out


def test_a_stage_cut_short_is_rebuilt(tmp_path):
    folder = tmp_path / "stage"

    def crash(folder):
        raise KeyboardInterrupt  # the student pressed stop mid-training

    try:
        pipeline.cached_stage(folder, {"a": 1}, crash, "stage")
    except KeyboardInterrupt:
        pass
    assert not (folder / pipeline.SETTINGS).exists()  # no settings: not a finished stage
    calls = []
    assert pipeline.cached_stage(folder, {"a": 1}, calls.append, "stage") is False and calls == [folder]


def test_config_settings_ignore_logging_cadence():
    from dpo_edu.sft import SFTConfig

    quiet, chatty = SFTConfig(log_every=1, progress=False), SFTConfig(log_every=50, progress=True)
    assert pipeline._config_settings(quiet) == pipeline._config_settings(chatty)
    assert pipeline._config_settings(SFTConfig(lr=1e-4)) != pipeline._config_settings(quiet)


@pytest.mark.parametrize("steps, n_evals, points", [(64, 3, [22, 44, 64]), (336, 3, [112, 224, 336]), (2, 5, [1, 2])])
def test_a_run_is_evaluated_n_times_the_last_at_its_final_step(steps, n_evals, points):
    every = pipeline._eval_every(steps, n_evals)
    assert sorted({*range(every, steps + 1, every), steps}) == points  # as train_loop and train_ppo evaluate


def _share(alphabet: str):
    """A toy ground-truth reward: the share of the text's characters drawn from ``alphabet``."""
    return lambda texts: [sum(c in alphabet for c in t) / max(1, len(t)) for t in texts]


def test_ppo_gt_trains_on_the_true_reward_and_reruns_when_the_reward_changes(tmp_path, tiny_lm, tiny_preset, capsys,
                                                                           one_thread):
    policy, tokenizer = tiny_lm
    models.save_policy(policy, tokenizer, tmp_path / "sft")
    (tmp_path / "sft" / pipeline.SETTINGS).write_text("{}")  # a finished SFT stage for the run to key on
    preset = dataclasses.replace(tiny_preset, ppo_steps=2, ppo_batch_size=8, ppo_mini_batch_size=4, ppo_epochs=1,
                                 max_new_tokens=6)
    prompts = ["The movie was", "I", "This film is a", "Acting"]
    vowels, consonants = _share("aeiou"), _share("bcdfghjklmnpqrstvwxz")

    def run(reward):
        return pipeline.ppo_run(preset, tmp_path, 3.0, tokenizer, prompts * 2, prompts, reward, n_evals=1,
                                ground_truth=True)

    first = run(vowels)
    assert [row["step"] for row in first["metrics"]] == [1, 2] and "eval/reward" in first["metrics"][-1]
    samples = first["samples"]
    assert [s["reward"] for s in samples] == pytest.approx(vowels([s["prompt"] + s["completion"] for s in samples]))
    assert first["cost"]["backward_tokens"] > 0
    assert run(vowels)["metrics"] == first["metrics"]
    assert "PPO-GT target KL=3.0: reusing" in capsys.readouterr().out
    other = run(consonants)
    assert "settings changed (reward); rebuilding" in capsys.readouterr().out
    assert other["metrics"][0]["objective/scores"] != first["metrics"][0]["objective/scores"]
