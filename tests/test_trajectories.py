"""The pinned ``ci`` trajectories: notebooks 04-05 rerun give the numbers of ``tests/trajectories/ci.json``.

A refactor must keep this green without re-pinning; a change that must move numbers re-pins in a commit of
its own (``python scripts/pin_trajectories.py``) and says why.
"""

import json

import pytest
from conftest import load_script

pin = load_script("scripts/pin_trajectories.py")


@pytest.mark.notebook
def test_a_ci_rerun_matches_the_pinned_trajectories(ci_course_run):
    pinned = json.loads(pin.PIN.read_text())
    there, here = pinned.pop("environment"), pin.environment()
    if there != here:  # another torch build or CPU rounds otherwise: the comparison would say nothing
        pytest.skip(f"pinned with {there}, running with {here}")
    now = pin.collect(ci_course_run)
    changed = pin.differences(pinned, now)
    assert not changed, f"{len(changed)} differences from the pin, first ones:\n" + "\n".join(changed[:15])
    assert len(now["sft"]["metrics"]) == 120 and len(now["ppo"]["metrics"]) == 24  # the whole runs were read


def test_the_comparison_sees_what_it_must():
    pinned = {"a": [{"loss": 0.5, "n": 3, "text": "x"}], "b": 1.0}
    assert pin.differences(pinned, {"a": [{"loss": 0.5 + 1e-9, "n": 3, "text": "x", "new": 1}], "b": 1.0}) == []
    assert pin.differences(pinned, {"a": [{"loss": 0.5 + 1e-5, "n": 3, "text": "x"}], "b": 1.0}) == [
        "/a[0]/loss: 0.50001, pinned 0.5"]
    assert pin.differences(pinned, {"a": [{"loss": 0.5, "n": 4, "text": "y"}], "b": 1.0}) == [
        "/a[0]/n: 4, pinned 3", "/a[0]/text: 'y', pinned 'x'"]
    assert pin.differences(pinned, {"a": [], "b": 1.0}) == ["/a: 0 entries, pinned 1"]
    assert pin.differences(pinned, {"a": [{"loss": 0.5, "n": 3, "text": "x"}]}) == ["/b: missing"]
