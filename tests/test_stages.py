"""dpo_edu.stages: a stage is built once, reused while its settings match, resumed when cut short."""

import json

import pytest

from dpo_edu import stages
from dpo_edu.stages import BUILDING, CHECKPOINT, SETTINGS, Stage, changes, fingerprint, stage


def writer(calls, text="built"):
    """A build that records its folder, what it found there, and writes one artifact."""

    def build(folder):
        calls.append(sorted(p.name for p in folder.iterdir()))
        (folder / "artifact.txt").write_text(text)

    return build


def test_a_stage_builds_then_reuses(tmp_path, capsys):
    calls, folder = [], tmp_path / "stage"
    settings = {"dpo": {"beta": 0.1, "lr": 1e-3}, "seed": 0}
    first = stage(folder, settings, writer(calls), "stage")
    assert first == Stage(folder, settings) and calls == [[BUILDING]]  # built in an emptied folder
    assert "stage: new; building" in capsys.readouterr().out
    again = stage(folder, settings, writer(calls), "stage")
    assert again == first and len(calls) == 1  # not built again
    assert capsys.readouterr().out == f"stage: reusing {folder}\n"
    assert json.loads((folder / SETTINGS).read_text()) == settings
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", SETTINGS]  # building.json removed


def test_changed_settings_rebuild_empty_the_folder_and_name_the_change(tmp_path, capsys):
    calls, folder = [], tmp_path / "stage"
    stage(folder, {"dpo": {"beta": 0.1, "lr": 1e-3}, "seed": 0}, writer(calls), "DPO")
    (folder / "stale.txt").write_text("from the old settings")
    capsys.readouterr()
    new = {"dpo": {"beta": 0.5, "lr": 1e-3}, "seed": 1}
    stage(folder, new, writer(calls, "rebuilt"), "DPO")
    assert capsys.readouterr().out == f"DPO: settings changed (dpo.beta, seed); building {folder}\n"
    assert calls == [[BUILDING], [BUILDING]]  # the old files were gone before the build ran
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", SETTINGS]
    assert (folder / "artifact.txt").read_text() == "rebuilt"
    assert json.loads((folder / SETTINGS).read_text()) == new


def test_changes_names_dotted_fields_added_removed_or_changed():
    old = {"sft": {"lr": 1e-3, "steps": 10}, "seed": 0, "gone": 1}
    new = {"sft": {"lr": 1e-3, "steps": 20}, "seed": 0, "added": {"x": 1}}
    assert changes(old, new) == ["added.x", "gone", "sft.steps"]
    assert changes(old, old) == []


def crash_after_a_checkpoint(folder):
    (folder / CHECKPOINT).mkdir()
    (folder / CHECKPOINT / "step_3.pt").write_text("weights at step 3")
    raise KeyboardInterrupt  # the student pressed stop mid-training


def cut_short(folder, settings):
    with pytest.raises(KeyboardInterrupt):
        stage(folder, settings, crash_after_a_checkpoint, "SFT")


def test_a_build_cut_short_resumes_from_its_checkpoint(tmp_path, capsys):
    folder, settings = tmp_path / "stage", {"sft": {"steps": 10}, "seed": 0}
    cut_short(folder, settings)
    assert not (folder / SETTINGS).exists()  # no settings: not a finished stage
    assert json.loads((folder / BUILDING).read_text()) == settings
    capsys.readouterr()
    seen = []

    def resume(folder):
        seen.append((folder / CHECKPOINT / "step_3.pt").read_text())
        (folder / "artifact.txt").write_text("done")

    stage(folder, settings, resume, "SFT")
    assert capsys.readouterr().out == f"SFT: resuming {folder}\n"
    assert seen == ["weights at step 3"]  # the checkpoint was kept for the build
    assert not (folder / CHECKPOINT).exists()  # a finished build's resume point is removed
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", SETTINGS]
    assert json.loads((folder / SETTINGS).read_text()) == settings


def test_a_build_cut_short_is_wiped_when_the_settings_change(tmp_path, capsys):
    folder = tmp_path / "stage"
    cut_short(folder, {"sft": {"steps": 10}, "seed": 0})
    capsys.readouterr()
    calls = []
    stage(folder, {"sft": {"steps": 20}, "seed": 0}, writer(calls), "SFT")
    assert capsys.readouterr().out == f"SFT: settings changed (sft.steps); building {folder}\n"
    assert calls == [[BUILDING]]  # no checkpoint/ of the other settings
    assert json.loads((folder / SETTINGS).read_text()) == {"sft": {"steps": 20}, "seed": 0}


def test_tuples_compare_equal_after_the_json_round_trip(tmp_path, capsys):
    calls, folder = [], tmp_path / "stage"
    first = stage(folder, {"frontier": {"dpo_betas": (0.1, 0.5)}}, writer(calls), "sweep")
    assert first.settings == {"frontier": {"dpo_betas": [0.1, 0.5]}}  # as JSON reads it back
    stage(folder, {"frontier": {"dpo_betas": (0.1, 0.5)}}, writer(calls), "sweep")
    assert len(calls) == 1 and "sweep: reusing" in capsys.readouterr().out
    stage(folder, {"frontier": {"dpo_betas": (0.1, 1.0)}}, writer(calls), "sweep")
    assert len(calls) == 2 and "settings changed (frontier.dpo_betas)" in capsys.readouterr().out


@pytest.mark.parametrize("corrupt", ["{", "", '{"seed": '])
def test_a_corrupt_settings_file_counts_as_unfinished(tmp_path, capsys, corrupt):
    calls, folder = [], tmp_path / "stage"
    stage(folder, {"seed": 0}, writer(calls), "stage")
    (folder / SETTINGS).write_text(corrupt)  # a write cut short by a crash, say
    capsys.readouterr()
    stage(folder, {"seed": 0}, writer(calls), "stage")
    assert len(calls) == 2 and "reusing" not in capsys.readouterr().out
    assert json.loads((folder / SETTINGS).read_text()) == {"seed": 0}


def test_fingerprint_is_a_short_stable_hash_of_the_value():
    prompts = ["The film", "I watched"]
    assert fingerprint(prompts) == fingerprint(list(prompts)) and len(fingerprint(prompts)) == 16
    assert fingerprint(prompts) != fingerprint(prompts[::-1]) != fingerprint(prompts[:1])
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})  # key order is not content
    assert stages.SETTINGS == "settings.json" and stages.CHECKPOINT == "checkpoint"
