"""The same decision for less sampling: the default search's cost and verdict, three ways, in one run.

    .venv/bin/python bench/search_cost.py [--trials 24] [--json bench/results-search-cost.json] [key=value ...]

The same settings, seed and trials each time, one search after another on the same machine:
- `full` (only with `--full`, the slowest): every evaluation at full size (`metric.n_proxy=0`: no
  successive halving), no baseline store (`search.baseline_cache=null`);
- `halving`: the defaults (successive halving over images for trials and baselines), with an
  empty baseline store: the first search of a model;
- `repeated`: the defaults again, under another name, with the store `halving` filled: every later
  search of the same model, sampler, steps, seeds and n.
The cost is images × MACs per image over every evaluation (baselines, trials, confirmation), as
`ebtune search` prints it; `at_full_size` is what every planned baseline, the same trials and the
same confirmation would have sampled without halving, the store or the front's cost limit on the
baselines: `metric.n_samples` images each, read from the study and the plan, exact without running it. Each run's verdict (`pareto.json`) is kept whole; the decision compared is
the recommended schedule's parameters and, per speed level, the relation to the best uncached
schedule. The hypervolume is that of the confirmed front in (quality, GMACs per image), both
minimised, against one reference point for every run.
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


def search(workdir: Path, planned: list[float], *overrides: str, name: str = "mf") -> dict:
    """Run `ebtune search name=NAME overrides` in `workdir`; its cost line, pruning count, wall time and pareto.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "TORCH_HOME": str(workdir / "torch")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ebtune.cli", "search", f"name={name}", *overrides], cwd=workdir, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"search failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cost = float(re.search(r"sampling cost: ([0-9.eE+-]+) TMACs", proc.stdout).group(1))
    pareto = json.loads((workdir / "outputs" / "search" / name / "pareto.json").read_text())
    verdict = proc.stdout[proc.stdout.index("verdict ("):proc.stdout.index("sampling cost:")].rstrip()
    return {"wall_s": time.perf_counter() - start, "cost_tmacs": cost, "pareto": pareto, "verdict_text": verdict,
            "pruned": proc.stdout.count(" pruned after "), "baselines_stopped": proc.stdout.count(": stopped after "),
            "baselines": f"{len(re.findall(r'^baseline ', proc.stdout, re.M))} of {len(planned)}",
            "at_full_size_tmacs": at_full_size(workdir / "outputs" / "search" / name, planned) / 1e12}


def planned_baselines(*overrides: str) -> list[float]:
    """MACs per image of every baseline the search plans (it samples those its front reaches)."""
    from ebtune.cli.config import compose
    from ebtune.search import SearchConfig
    from ebtune.search.baselines import plan
    from ebtune.search.evaluator import Evaluator

    config = SearchConfig.from_mapping(compose(list(overrides), config_name="search"))
    return [p.macs for p in plan(Evaluator(config.cfg, config.device), config.space)]


def at_full_size(folder: Path, planned: list[float]) -> float:
    """MACs the search's trials and every planned baseline would sample at `metric.n_samples` images
    each, plus its confirmation without the store."""
    from ebtune.search.records import SearchRecord
    from ebtune.search.study import load_folder_study

    record = SearchRecord(load_folder_study(folder))
    n = int(record.settings["metric"]["n_samples"])
    evaluated = [{"macs": m} for m in planned]
    evaluated += [t.user_attrs["metrics"] for t in record.study.trials if "metrics" in t.user_attrs]
    confirmed = record.confirmation or {}
    confirmation = [*confirmed.get("trials", {}).values(), *confirmed.get("baselines", {}).values()]
    return n * sum(m["macs"] for m in evaluated) + sum(m.get("images", n) * m["macs"] for m in confirmation)


def reference_point(runs: dict[str, dict], base: str) -> tuple[float, float]:
    """The hypervolume reference shared by every run compared: 5 % past the worst confirmed quality
    of any front point or baseline of any run, and run `base`'s no-cache GMACs."""
    quality = [e["metrics"][quality_key(r["pareto"])] for r in runs.values() for e in r["pareto"]["points"] + r["pareto"]["baselines"]]
    nocache = next(b for b in runs[base]["pareto"]["baselines"] if b["name"] == "nocache")["metrics"]["macs"]
    return max(quality) * 1.05, nocache / 1e9


def quality_key(pareto: dict) -> str:
    """The quality metric's key in a pareto.json ("fid" in files written before metrics had names)."""
    return pareto.get("quality", "fid")


def decision(pareto: dict) -> dict:
    """What a user acts on: the recommended schedule's parameters and each speed level's relation."""
    verdict = pareto.get("verdict") or {}
    points = {p["name"]: p for p in pareto["points"]}
    chosen = points.get(verdict.get("recommended"), {})
    return {"recommended": verdict.get("recommended"), "params": chosen.get("params"),
            "levels": [(lv.get("standing"), lv.get("point"), lv.get("baseline")) for lv in verdict.get("levels", [])]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--json")
    p.add_argument("--full", action="store_true", help="also run the search without halving or store (slowest)")
    p.add_argument("overrides", nargs="*", help="more key=value settings for every search (e.g. threads=1)")
    a = p.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="ebtune-cost-") as tmp:
        common = (f"trials={a.trials}", *a.overrides)
        planned = planned_baselines(*common)
        if a.full:
            runs["full"] = search(Path(tmp) / "full", planned, *common, "metric.n_proxy=0", "search.baseline_cache=null")
        runs["halving"] = search(Path(tmp) / "store", planned, *common)
        runs["repeated"] = search(Path(tmp) / "store", planned, *common, name="mf2")
    ref = reference_point(runs, "full" if a.full else "halving")
    report = {"trials": a.trials, "overrides": a.overrides, "reference_point": ref, "load_avg": os.getloadavg(), "runs": {}}
    for label, r in runs.items():
        key = quality_key(r["pareto"])
        front = [(pt["metrics"][key], pt["metrics"]["macs"] / 1e9) for pt in r["pareto"]["points"]]
        report["runs"][label] = {"wall_s": r["wall_s"], "cost_tmacs": r["cost_tmacs"], "pruned": r["pruned"],
                                 "baselines_stopped": r["baselines_stopped"], "baselines": r["baselines"], "hypervolume": hypervolume_2d(front, ref),
                                 "at_full_size_tmacs": r["at_full_size_tmacs"],
                                 "front": front, "decision": decision(r["pareto"]), "verdict_text": r["verdict_text"]}
    for label, r in report["runs"].items():
        r["cost_ratio"] = r["cost_tmacs"] / r["at_full_size_tmacs"]
        print(f"{label:>9}: cost {r['cost_tmacs']:.3f} TMACs ({r['cost_ratio']:.2f} of the same evaluations at full size, "
              f"{r['at_full_size_tmacs']:.3f}), {r['pruned']} trial(s) and "
              f"{r['baselines_stopped']} baseline(s) stopped at a rung ({r['baselines']} planned ones recorded), confirmed front {len(r['front'])} point(s), "
              f"hypervolume {r['hypervolume']:.4g}, {r['wall_s']:.0f} s")
        print("\n".join(f"           {line}" for line in r["verdict_text"].splitlines()))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
