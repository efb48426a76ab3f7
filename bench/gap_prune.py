"""Gap pruning and the calibrated seed on dit-tiny, in one run: the same search (seed, space, trials,
confirmation) three times, each confirmed, with

- `fid gate`: the multi-fidelity FID-proxy gate only, the space without its calibrated seed;
- `fid + gap gate`: the same plus `metric.gap_prune=true` (ebtune/search/gap_gate.py);
- `fid + gap gate + calibrated seed`: the shipped ebcache space, whose EB-Cache Algorithm 1 schedule
  is one of the trials (ebtune/search/seeding.py).

    .venv/bin/python bench/gap_prune.py [--trials 12] [--json bench/results-gap-prune.json] [key=value ...]

Cost is images × MACs per image over every evaluation (baselines, trials, confirmation), as
`ebtune search` prints it, plus, for the gap runs, the real-data reference ‖ε‖_i (REAL_IMAGES
uncached images, once per search); the calibration's own forwards (n = 8 samples, up to four
forwards a step) are left out as negligible. The hypervolume is that of the confirmed front in
(quality, GMACs per image), both minimised, against one reference point for all runs (the worst
confirmed quality of any front point or baseline of any run, and the no-cache MACs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_cost import hypervolume_2d, quality_key, reference_point, search  # noqa: E402

from ebtune.search.gap_gate import REAL_IMAGES  # noqa: E402
from ebtune.search.space import CALIBRATED, MASKS_KEY, SPACES_DIR  # noqa: E402

RUNS = (("fid gate", False, False), ("fid + gap gate", True, False), ("fid + gap gate + calibrated seed", True, True))


def _space_file(folder: Path, calibrated: bool) -> str:
    doc = yaml.safe_load((SPACES_DIR / "ebcache.yaml").read_text())
    if not calibrated:
        doc.pop("calibrated_seed", None)
    path = folder / "ebcache.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _front_key(point: dict) -> str:
    return json.dumps(point["params"], sort_keys=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", help="more key=value settings for every search (e.g. threads=1)")
    a = p.parse_args()
    runs = {}
    for label, gap, calibrated in RUNS:
        with tempfile.TemporaryDirectory(prefix="ebtune-gap-") as tmp:
            space = _space_file(Path(tmp), calibrated)
            runs[label] = search(Path(tmp), f"trials={a.trials}", f"space={space}", *a.overrides,
                                 f"++metric.gap_prune={str(gap).lower()}")
            print(f"{label}: {runs[label]['cost_tmacs']:.3f} TMACs, {runs[label]['pruned']} pruned, "
                  f"{runs[label]['wall_s']:.0f} s", flush=True)
    ref = reference_point(runs, "fid gate")
    report = {"trials": a.trials, "overrides": a.overrides, "reference_point": ref, "real_images": REAL_IMAGES,
              "load_avg": os.getloadavg(), "runs": {}}
    base_front = {_front_key(pt) for pt in runs["fid gate"]["pareto"]["points"]}
    for (label, gap, _), r in zip(RUNS, runs.values()):
        reference_cost = REAL_IMAGES * ref[1] / 1e3 if gap else 0.0  # no-cache GMACs per real image, in TMACs
        points, q = r["pareto"]["points"], quality_key(r["pareto"])
        report["runs"][label] = {
            "wall_s": r["wall_s"], "cost_tmacs": r["cost_tmacs"] + reference_cost, "reference_tmacs": reference_cost,
            "pruned": r["pruned"], "hypervolume": hypervolume_2d([(pt["metrics"][q], pt["metrics"]["macs"] / 1e9)
                                                                   for pt in points], ref),
            "same_front_as_fid_gate": {_front_key(pt) for pt in points} == base_front,
            "calibrated_seed_on_front": any(pt["params"].get(MASKS_KEY) == CALIBRATED for pt in points),
            "front": [{"fid": pt["metrics"][q], "gmacs": pt["metrics"]["macs"] / 1e9, "params": pt["params"]}
                      for pt in points],
        }
    base = report["runs"]["fid gate"]
    for label, r in report["runs"].items():
        r["cost_ratio"] = r["cost_tmacs"] / base["cost_tmacs"]
        r["hypervolume_ratio"] = r["hypervolume"] / base["hypervolume"] if base["hypervolume"] else None
        print(f"{label:>34}: cost {r['cost_tmacs']:.3f} TMACs (ratio {r['cost_ratio']:.3f}), {r['pruned']} pruned, "
              f"confirmed front {len(r['front'])} point(s), hypervolume {r['hypervolume']:.4g} "
              f"(ratio {r['hypervolume_ratio']}), same front: {r['same_front_as_fid_gate']}, {r['wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
