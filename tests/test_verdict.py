"""The verdict on hand-made records: a cached point that beats its uncached baseline, one equivalent,
one worse, one inconclusive, one faster than every uncached baseline, and the recommendation."""
from __future__ import annotations

import json

import numpy as np

from ebtune.search.inference import Scored
from ebtune.search.pareto import Constraint
from ebtune.search.verdict import MAX_LINES, verdict

OBJECTIVES = ["fid", "macs"]
N = 50
DRAWS = np.random.default_rng(0).normal(20.0, 1.5, N)
JITTER = np.random.default_rng(1).normal(0.0, 0.1, (8, N))


def _record(name: str, fid: float, speedup: float, k: int | None, schedule: str = "none") -> Scored:
    """A point of `speedup` (MACs 100 / speedup) whose draws sit `fid − 20` from the shared draws, plus
    jitter k (no draws when k is None: only its stored error, 1.5)."""
    metrics = {"fid": fid, "fid_std": 1.5, "macs": 100.0 / speedup, "speedup": speedup, "images": 256.0}
    draws = {} if k is None else {"fid": tuple(DRAWS + (fid - 20.0) + JITTER[k])}
    return Scored(metrics, draws, name, {"schedule": schedule})


BASELINES = [
    _record("nocache", 20.0, 1.0, 0),
    _record("ddpm-35", 21.0, 50 / 35, 1),
    _record("ddpm-35+ebcache", 20.5, 50 / 35, 2),
    _record("fora2", 22.0, 1.92, 3, schedule="fora"),  # cached: never a speed level nor an uncached rival
    _record("ddpm-26", 22.5, 50 / 26, 4),
    _record("ddpm-18", 25.0, 50 / 18, 5),
    _record("ddpm-10", 30.0, 5.0, 6),
]
FRONT = [
    _record("trial 1", 18.0, 1.3, 7),  # level 1.43: beats ddpm-35+ebcache (the best uncached at ≤ its MACs) by 2.5
    _record("trial 2", 22.8, 1.9, 0),  # level 1.92: +0.3 on ddpm-26, paired: equivalent within 1.0
    _record("trial 3", 28.0, 2.5, 1),  # level 2.78: +3 on ddpm-18: loses
    _record("trial 4", 31.0, 3.0, None),  # level 5: +1 on ddpm-10 with independent errors ± 2.1: inconclusive
    _record("trial 5", 40.0, 6.0, 2),  # faster than every uncached baseline
]


def test_each_speed_level_against_the_strongest_uncached_baseline():
    lines = verdict(FRONT, BASELINES, OBJECTIVES, margin=1.0).lines()
    # knee: fid and MACs scaled to [0, 1] over the front; distances to (0, 0) 1.0, 0.634, 0.597, 0.653, 1.0
    assert lines[0] == "Use trial 3: 2.50x fewer MACs than no cache, fid 28 ± 1.5 (the knee of the front)."
    assert lines[1].startswith("At <= 1.43x: trial 1 (1.30x) beats ddpm-35+ebcache: fid -2.5 ± 0.1")
    assert lines[1].endswith("(paired over 50 draws; margin 1, n = 256).")
    assert lines[2].startswith("At <= 1.92x: trial 2 (1.90x) is equivalent to ddpm-26: fid +0.3 ± 0.1")
    assert lines[3].startswith("At <= 2.78x: trial 3 (2.50x) loses to ddpm-18: fid +3 ± 0.1")
    assert lines[4] == "At <= 5.00x: trial 4 (3.00x) is inconclusive against ddpm-10: fid +1 ± 2.1 (independent errors; margin 1, n = 256)."
    assert lines[5] == "Beyond every uncached baseline's speed: trial 5 (6.00x); no schedule that caches nothing is as cheap."
    assert len(lines) == 6


def test_the_record_for_pareto_json():
    out = verdict(FRONT, BASELINES, OBJECTIVES, margin=1.0).to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["recommended"] == "trial 3" and out["margin"] == 1.0 and out["quality"] == "fid"
    assert [(v["point"], v["baseline"], v["standing"]) for v in out["levels"]] == [
        ("trial 1", "ddpm-35+ebcache", "better"), ("trial 2", "ddpm-26", "equivalent"), ("trial 3", "ddpm-18", "worse"),
        ("trial 4", "ddpm-10", "inconclusive"), ("trial 5", None, None)]
    first = out["levels"][0]
    assert first["paired"] and first["n_draws"] == N and abs(first["difference"] + 2.5) < 1e-9 and first["se"] < 0.2


def test_a_constraint_recommends_the_best_quality_meeting_it():
    lines = verdict(FRONT, BASELINES, OBJECTIVES, 1.0, [Constraint.parse("speedup >= 2.8")]).lines()
    assert lines[0].startswith("Use trial 4: 3.00x") and lines[0].endswith("(the best fid meeting speedup >= 2.8).")
    none = verdict(FRONT, BASELINES, OBJECTIVES, 1.0, [Constraint.parse("speedup >= 9")])
    assert none.lines() == ["No schedule to recommend: no front point meets speedup >= 9."]


def test_at_most_ten_lines():
    many = [_record(f"ddpm-{k}", 20.0 + k, 1 + k / 4, None) for k in range(15)]
    front = [_record(f"trial {k}", 20.0 + k, 1 + k / 4, None) for k in range(15)]
    assert len(verdict(front, many, OBJECTIVES, 1.0).lines()) == MAX_LINES


def test_an_empty_front():
    assert verdict([], BASELINES, OBJECTIVES, 1.0).lines() == [
        "No schedule to recommend: the front is empty (run more trials or relax the constraints)."]


def test_confirming_some_baselines_keeps_the_searchs_speed_levels():
    # After a confirmation only the baselines the verdict judged are re-scored (here ddpm-18 and no
    # cache); trial 2 still belongs to the 1.92x level, not to the next confirmed one (2.78x).
    confirmed = [b for b in BASELINES if b.name in ("nocache", "ddpm-18")]
    levels = [float(b.metrics["speedup"]) for b in BASELINES if b.params["schedule"] == "none"]
    assert verdict([FRONT[1]], confirmed, OBJECTIVES, 1.0, speeds=levels).lines()[1].startswith(
        "At <= 1.92x: trial 2 (1.90x) beats ddpm-18: fid -2.2")
    assert verdict([FRONT[1]], confirmed, OBJECTIVES, 1.0).lines()[1].startswith("At <= 2.78x: trial 2 (1.90x)")
    alone = verdict([FRONT[2]], confirmed[:1], OBJECTIVES, 1.0, speeds=levels).lines()
    assert alone[1] == "At <= 2.78x: trial 3 (2.50x); no uncached baseline of no more MACs was confirmed."
