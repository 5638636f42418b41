"""The run folder's cache: a stage is reused only when finished with the same settings."""

import json

import pytest

from dpo_edu import pipeline


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
