from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ebtune.core.eps_scale import EBCacheScale
from ebtune.core.schedule import Schedule
from ebtune.io.schedule_file import (
    FORMAT_VERSION,
    ScheduleFile,
    ScheduleFileError,
    check_model,
    load_schedule_file,
    save_schedule_file,
)

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "schedule.v2.schema.json").read_text())
MODEL = {"family": "dit", "name": "dit-tiny", "depth": 6, "input_size": 8, "patch_size": 2}
SAMPLER = {"name": "ddim", "steps": 10}
FORM = {"name": "ebcache", "b_h": 0.98, "b_l": 0.96, "t_s": 0.4}
PROVENANCE = {"metrics": {"fid": 3.05, "evaluator": "torch-fidelity inception-v3-compat", "samples": 1000},
              "macs": 1.2e9, "speedup": 1.49, "latency": {"seconds": 0.31, "device": "cpu"},
              "ebtune_version": "0.1.0", "git_commit": "7c3d95f", "mlflow_run_id": "abc123"}


def mixed_schedule() -> Schedule:
    """Uniform steps, one step where blocks disagree, and per-step ε factors from the paper's b(t)."""
    attn = [[True] * 6 for _ in range(10)]
    mlp = [[True] * 6 for _ in range(10)]
    for i in (3, 5, 7):
        attn[i] = [False] * 6
    mlp[4] = [False, False, True, True, False, True]
    mlp[6] = [False] * 6
    times = [1 - i / 9 for i in range(10)]
    return Schedule(attn, mlp, EBCacheScale().factors(times), name="mixed")


def write(tmp_path: Path, schedule: Schedule | None = None, name: str = "s.json") -> Path:
    return save_schedule_file(tmp_path / name, schedule or mixed_schedule(), model=MODEL, sampler=SAMPLER,
                              eps_scale=FORM, search_params={"delta": [0.01, 0.05]}, provenance=PROVENANCE)


def test_round_trip_is_byte_identical_and_keeps_the_schedule(tmp_path):
    first = write(tmp_path)
    loaded = load_schedule_file(first)
    assert isinstance(loaded, ScheduleFile)
    assert loaded.schedule == mixed_schedule()
    assert (loaded.model, loaded.sampler, loaded.eps_scale, loaded.provenance) == (MODEL, SAMPLER, FORM, PROVENANCE)
    second = loaded.save(tmp_path / "again.json")
    assert second.read_bytes() == first.read_bytes()


def test_masks_are_compact_one_char_when_blocks_agree(tmp_path):
    doc = json.loads(write(tmp_path).read_text())
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["schedule"]["attn"] == ["1", "1", "1", "0", "1", "0", "1", "0", "1", "1"]
    assert doc["schedule"]["mlp"][4] == "001101"
    assert doc["schedule"]["mlp"][6] == "0"


def test_written_file_validates_against_the_published_schema(tmp_path):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    doc = json.loads(write(tmp_path).read_text())
    jsonschema.validate(doc, SCHEMA)
    doc["schedule"]["attn"][2] = "12"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_eps_scale_rule_rebuilds_the_parametric_form(tmp_path):
    rule = load_schedule_file(write(tmp_path)).eps_scale_rule()
    assert rule == EBCacheScale(0.98, 0.96, 0.4)


def corrupt(tmp_path: Path, edit) -> Path:
    path = write(tmp_path)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(format_version=3), "format_version 3"),
    (lambda d: d.pop("format_version"), "format_version None"),
    (lambda d: d["schedule"]["attn"].pop(), "schedule.attn has 9 entries"),
    (lambda d: d["schedule"]["mlp"].__setitem__(4, "0011"), "schedule.mlp[4]"),
    (lambda d: d["schedule"]["eps_scale"].append(1.0), "schedule.eps_scale must list 10"),
    (lambda d: d["model"].pop("depth"), "model has no 'depth'"),
    (lambda d: d.pop("sampler"), "'sampler' is missing"),
    (lambda d: d["schedule"].pop("mlp"), "no schedule.mlp"),
    (lambda d: d["schedule"]["attn"].__setitem__(0, "0"), "step 0 must compute"),
])
def test_bad_files_fail_with_one_line_messages(tmp_path, edit, words):
    with pytest.raises(ScheduleFileError) as info:
        load_schedule_file(corrupt(tmp_path, edit))
    message = str(info.value)
    assert words in message and "\n" not in message and ";" in message


def test_not_json_is_a_schedule_file_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ScheduleFileError, match="is not JSON"):
        load_schedule_file(path)


def test_save_refuses_mismatched_lengths_and_non_json_values(tmp_path):
    with pytest.raises(ScheduleFileError, match="sampler.steps=20"):
        save_schedule_file(tmp_path / "x.json", mixed_schedule(), model=MODEL, sampler={"name": "ddim", "steps": 20},
                           eps_scale=FORM)
    with pytest.raises(ScheduleFileError, match="not plain JSON"):
        save_schedule_file(tmp_path / "x.json", mixed_schedule(), model=MODEL, sampler=SAMPLER, eps_scale=FORM,
                           provenance={"fid": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_check_model_names_the_mismatch(tmp_path):
    file = load_schedule_file(write(tmp_path))
    check_model(file, 6, "dit")
    with pytest.raises(ScheduleFileError, match="tuned for 6 blocks but the model has 28; retarget"):
        check_model(file, 28, "dit")
    with pytest.raises(ScheduleFileError, match="family 'dit' but the model is 'pixart'"):
        check_model(file, 6, "pixart")
