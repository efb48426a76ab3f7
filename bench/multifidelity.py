"""Multi-fidelity on dit-tiny, in one run: the confirmed front's hypervolume against the total
sampling cost, with the first fidelity (`metric.n_proxy`, the default) and without it (n_proxy=0).

    .venv/bin/python bench/multifidelity.py [--trials 24] [--json bench/results-multifidelity.json] [key=value ...]

Both searches use the same seed, space, trials and confirmation size, so they propose the same
first points; the cost is images × MACs per image over every evaluation (baselines, trials,
confirmation), as `ebtune search` prints it. The hypervolume is that of the confirmed front in
(quality, GMACs per image), both minimised, against one reference point for both runs: the worst
confirmed quality of any front point or baseline of either run and the no-cache MACs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates minimised) inside the box below `ref`."""
    inside = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(inside):
        best_y = min(best_y, y)
        next_x = inside[i + 1][0] if i + 1 < len(inside) else ref[0]
        area += (next_x - x) * (ref[1] - best_y)
    return area


def search(workdir: Path, *overrides: str) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "TORCH_HOME": str(workdir / "torch")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ebtune.cli", "search", "name=mf", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"search failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cost = float(re.search(r"sampling cost: ([0-9.eE+-]+) TMACs", proc.stdout).group(1))
    pareto = json.loads((workdir / "outputs" / "search" / "mf" / "pareto.json").read_text())
    return {"wall_s": time.perf_counter() - start, "cost_tmacs": cost, "pruned": proc.stdout.count(" pruned after "),
            "pareto": pareto}


def quality_key(pareto: dict) -> str:
    """The quality metric's key in a pareto.json ("fid" in files written before metrics had names)."""
    return pareto.get("quality", "fid")


def reference_point(runs: dict[str, dict], base: str) -> tuple[float, float]:
    """The hypervolume reference shared by every run compared: 5 % past the worst confirmed quality
    of any front point or baseline of any run, and run `base`'s no-cache GMACs."""
    quality = [e["metrics"][quality_key(r["pareto"])] for r in runs.values() for e in r["pareto"]["points"] + r["pareto"]["baselines"]]
    nocache = next(b for b in runs[base]["pareto"]["baselines"] if b["name"] == "nocache")["metrics"]["macs"]
    return max(quality) * 1.05, nocache / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", help="more key=value settings for both searches (e.g. threads=1)")
    a = p.parse_args()
    runs = {}
    for label, extra in (("multi-fidelity", []), ("full size", ["metric.n_proxy=0"])):
        with tempfile.TemporaryDirectory(prefix="ebtune-mf-") as tmp:
            runs[label] = search(Path(tmp), f"trials={a.trials}", *a.overrides, *extra)
    ref = reference_point(runs, "full size")
    report = {"trials": a.trials, "overrides": a.overrides, "reference_point": ref, "load_avg": os.getloadavg(), "runs": {}}
    for label, r in runs.items():
        front = [(pt["metrics"][quality_key(r["pareto"])], pt["metrics"]["macs"] / 1e9) for pt in r["pareto"]["points"]]
        report["runs"][label] = {"wall_s": r["wall_s"], "cost_tmacs": r["cost_tmacs"], "pruned": r["pruned"],
                                 "hypervolume": hypervolume_2d(front, ref), "front": front}
    mf, full = report["runs"]["multi-fidelity"], report["runs"]["full size"]
    report["cost_ratio"] = mf["cost_tmacs"] / full["cost_tmacs"]
    report["hypervolume_ratio"] = mf["hypervolume"] / full["hypervolume"] if full["hypervolume"] else None
    for label, r in report["runs"].items():
        print(f"{label:>15}: cost {r['cost_tmacs']:.3f} TMACs, {r['pruned']} trial(s) pruned, confirmed front "
              f"{len(r['front'])} point(s), hypervolume {r['hypervolume']:.4g}, {r['wall_s']:.0f} s")
    print(f"cost ratio {report['cost_ratio']:.2f}, hypervolume ratio {report['hypervolume_ratio']}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
