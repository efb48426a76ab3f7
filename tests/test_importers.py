from __future__ import annotations

import json

import pytest

from ebtune.io.importers import import_fora, import_smoothcache


def flags(schedule, branch):
    """Per-step flags of a schedule whose blocks all agree."""
    mask = schedule.mask(branch)
    assert all(len(set(row)) == 1 for row in mask)
    return [row[0] for row in mask]


def test_smoothcache_file_maps_1_to_compute_for_every_block(tmp_path):
    attn = [1, 0, 0, 1, 0, 1, 1]
    mlp = [1, 0, 1, 0, 1, 0, 1]
    path = tmp_path / "7-N-3-threshold-0.1.json"
    path.write_text(json.dumps({"attn": attn, "mlp": mlp}))
    schedule = import_smoothcache(path, depth=4)
    assert (schedule.steps, schedule.depth, schedule.name) == (7, 4, "smoothcache:7-N-3-threshold-0.1")
    assert flags(schedule, "attn") == [bool(v) for v in attn]
    assert flags(schedule, "mlp") == [bool(v) for v in mlp]
    assert schedule.eps_scale == (1.0,) * 7


def test_smoothcache_diffusers_names_and_missing_branch_always_computes():
    schedule = import_smoothcache({"attn1": [1, 0, 1, 1]}, depth=2)
    assert flags(schedule, "attn") == [True, False, True, True]
    assert flags(schedule, "mlp") == [True] * 4
    ff = import_smoothcache({"ff": [1, 1, 0]}, depth=2)
    assert flags(ff, "mlp") == [True, True, False] and flags(ff, "attn") == [True] * 3


@pytest.mark.parametrize("data, words", [
    ({"attn": [1, 0], "attn2": [1, 1]}, "'attn2' have no ebtune branch"),
    ({"attn": [1, 0], "attn1": [1, 0]}, "both 'attn' and 'attn1'"),
    ({"attn": [1, 2]}, "list of 0/1"),
    ({"attn": [1, 0.5]}, "list of 0/1"),
    ({"attn": []}, "non-empty list"),
    ({"attn": [1, 0, 1], "mlp": [1, 0]}, "different lengths [2, 3]"),
    ({}, "has none of"),
    ({"attn": [0, 1]}, "step 0 must compute"),
])
def test_bad_smoothcache_schedules_fail_with_one_line_messages(data, words):
    with pytest.raises(ValueError) as info:
        import_smoothcache(data, depth=2)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_smoothcache_file_that_is_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[1, 0,")
    with pytest.raises(ValueError, match="is not JSON"):
        import_smoothcache(path, depth=2)


def test_fora_interval_computes_every_nth_step():
    schedule = import_fora(3, steps=10, depth=4)
    expected = [i % 3 == 0 for i in range(10)]
    assert flags(schedule, "attn") == expected and flags(schedule, "mlp") == expected
    assert import_fora(1, steps=5, depth=2).full_steps == 5
    with pytest.raises(ValueError, match="at least 1"):
        import_fora(0, steps=5, depth=2)
