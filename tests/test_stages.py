"""dpo_edu.stages: a stage is built once, reused while its settings match, resumed when cut short."""

import json

import pytest

from dpo_edu import stages
from dpo_edu.stages import BUILDING, CHECKPOINT, CONTENTS, EVENTS, SETTINGS, Stage, changes, fingerprint, stage


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
    assert first == Stage(folder, settings) and calls == [[BUILDING, EVENTS]]  # built in an emptied folder
    assert "stage: new; building" in capsys.readouterr().out
    again = stage(folder, settings, writer(calls), "stage")
    assert again == first and len(calls) == 1  # not built again
    assert capsys.readouterr().out == f"stage: reusing {folder}\n"
    assert json.loads((folder / SETTINGS).read_text()) == settings
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", CONTENTS, EVENTS, SETTINGS]


def test_changed_settings_rebuild_empty_the_folder_and_name_the_change(tmp_path, capsys):
    calls, folder = [], tmp_path / "stage"
    stage(folder, {"dpo": {"beta": 0.1, "lr": 1e-3}, "seed": 0}, writer(calls), "DPO")
    (folder / "stale.txt").write_text("from the old settings")
    capsys.readouterr()
    new = {"dpo": {"beta": 0.5, "lr": 1e-3}, "seed": 1}
    stage(folder, new, writer(calls, "rebuilt"), "DPO")
    assert capsys.readouterr().out == f"DPO: settings changed (dpo.beta, seed); building {folder}\n"
    assert calls == [[BUILDING, EVENTS], [BUILDING, EVENTS]]  # the old files were gone before the build ran
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", CONTENTS, EVENTS, SETTINGS]
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
    assert sorted(p.name for p in folder.iterdir()) == ["artifact.txt", CONTENTS, EVENTS, SETTINGS]
    assert json.loads((folder / SETTINGS).read_text()) == settings


def test_a_build_cut_short_is_wiped_when_the_settings_change(tmp_path, capsys):
    folder = tmp_path / "stage"
    cut_short(folder, {"sft": {"steps": 10}, "seed": 0})
    capsys.readouterr()
    calls = []
    stage(folder, {"sft": {"steps": 20}, "seed": 0}, writer(calls), "SFT")
    assert capsys.readouterr().out == f"SFT: settings changed (sft.steps); building {folder}\n"
    assert calls == [[BUILDING, EVENTS]]  # no checkpoint/ of the other settings
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


def test_a_stage_records_its_files_and_rebuilds_when_one_is_cut_or_edited(tmp_path, capsys):
    """A stage proves what it holds: a JSONL file cut at a line boundary, a file edited or deleted is named, and
    the stage is built again (issue 15: a pairs cache cut to half its rows was reused silently)."""
    folder, settings, calls = tmp_path / "pairs", {"n": 4}, []

    def build(folder):
        calls.append(1)
        (folder / "pairs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(4)))
        (folder / "model").mkdir()
        (folder / "model" / "weights.bin").write_bytes(b"\x00\x01\x02")

    stage(folder, settings, build, "pairs")
    recorded = json.loads((folder / CONTENTS).read_text())
    assert set(recorded) == {"pairs.jsonl", "model/weights.bin"}
    assert recorded["pairs.jsonl"]["rows"] == 4 and recorded["model/weights.bin"]["bytes"] == 3
    assert "rows" not in recorded["model/weights.bin"]
    capsys.readouterr()
    lines = (folder / "pairs.jsonl").read_text().splitlines(keepends=True)
    (folder / "pairs.jsonl").write_text("".join(lines[:2]))  # cut at a line boundary: still valid JSONL
    stage(folder, settings, build, "pairs")
    assert capsys.readouterr().out == f"pairs: pairs.jsonl holds 2 rows, 4 when built; building {folder}\n"
    assert len(calls) == 2 and len((folder / "pairs.jsonl").read_text().splitlines()) == 4
    (folder / "model" / "weights.bin").write_bytes(b"\x00\x01\x09")  # same size, other bytes
    stage(folder, settings, build, "pairs")
    expected = "model/weights.bin has changed (3 bytes, 3 when built)"
    assert capsys.readouterr().out == f"pairs: {expected}; building {folder}\n"
    (folder / "model" / "weights.bin").unlink()
    (folder / CONTENTS).write_text("{")  # and its record cut short
    stage(folder, settings, build, "pairs")
    assert "contents.json is unreadable" in capsys.readouterr().out and len(calls) == 4
    stage(folder, settings, build, "pairs")
    assert capsys.readouterr().out == f"pairs: reusing {folder}\n" and len(calls) == 4


def test_a_stage_finished_before_stages_recorded_their_files_is_adopted(tmp_path, capsys):
    """A run folder made by an older dpo_edu (settings.json, no contents.json) is not rebuilt: its files are
    recorded once, and checked from then on."""
    folder, calls = tmp_path / "sft", []
    stage(folder, {"n": 1}, writer(calls), "SFT")
    (folder / CONTENTS).unlink()
    capsys.readouterr()
    stage(folder, {"n": 1}, writer(calls), "SFT")
    assert capsys.readouterr().out == (f"SFT: recording the files of {folder} (made before stages recorded them)\n"
                                       f"SFT: reusing {folder}\n")
    assert len(calls) == 1 and json.loads((folder / CONTENTS).read_text())["artifact.txt"]["bytes"] == 5
    (folder / "artifact.txt").write_text("edited")
    stage(folder, {"n": 1}, writer(calls), "SFT")
    assert "artifact.txt has changed" in capsys.readouterr().out and len(calls) == 2


def test_each_call_is_logged_and_events_since_reads_what_a_run_did(tmp_path):
    import time

    start = time.time()
    folder = tmp_path / "runs" / "dpo"
    stage(folder, {"n": 1}, writer([]), "DPO")
    stage(folder, {"n": 1}, writer([]), "DPO")
    stage(folder, {"n": 2}, writer([]), "DPO")
    cut_short(tmp_path / "sft", {"steps": 3})
    stage(tmp_path / "sft", {"steps": 3}, writer([]), "SFT")
    events = stages.events_since(tmp_path, start)
    assert [(e["stage"], e["outcome"]) for e in events] == [
        ("runs/dpo", "built"), ("runs/dpo", "reused"), ("runs/dpo", "built"), ("sft", "built"), ("sft", "resumed")]
    assert events[2]["why"] == "settings changed (n)" and events[4]["why"] == "from its checkpoint"
    assert stages.events_since(tmp_path, time.time() + 1) == []
    assert "events.jsonl" not in json.loads((folder / CONTENTS).read_text())  # a log, not a file the stage made
