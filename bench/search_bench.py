"""Performance bars of `ebtune search` on dit-tiny (issue 4), measured in one run.

    .venv/bin/python bench/search_bench.py [--trials 24] [--ray-trials 12] [--ray-n-samples 256] [--json FILE]

1. The default search (`ebtune search trials=N`, local launcher, as a user runs it): wall time, and
   whether its Pareto front holds a schedule that dominates FORA(2) or FORA(3) on the search's
   objectives. Bar: N >= 24 trials within 10 minutes on 2 cores, and a dominating schedule.
2. Ray with 2 CPU workers versus 1: the same search (random sampler, same seed, so both evaluate the
   same points) with `ray.max_concurrent=2` and `=1` on a 2-CPU local Ray, trials per minute over
   the trial phase (first trial start to last trial end, from Tune's results; the baselines, which
   the driver evaluates first, are excluded; each worker's first trial includes loading the model,
   so enough trials are needed to amortise it). Bar: ratio >= 1.6.

Every search runs in a fresh temporary directory (MLflow store and search folder inside it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebtune.search.pareto import dominates

EBTUNE = [sys.executable, "-m", "ebtune.cli"]


def search(workdir: Path, name: str, *overrides: str) -> tuple[float, Path]:
    """Run `ebtune search` in `workdir`; returns (wall seconds, search folder)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "TORCH_HOME": str(workdir / "torch")}
    start = time.perf_counter()
    proc = subprocess.run([*EBTUNE, "search", "--name", name, *overrides], cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"search {name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, workdir / "outputs" / "search" / name


def default_search(trials: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ebtune-bench-") as tmp:
        seconds, folder = search(Path(tmp), "bench-default", f"trials={trials}")
        pareto = json.loads((folder / "pareto.json").read_text())
    objectives, base = pareto["objectives"], {b["name"]: b["metrics"] for b in pareto["baselines"]}
    beats = {name: [p["number"] for p in pareto["points"] if dominates(p["metrics"], base[name], objectives)]
             for name in ("fora2", "fora3")}
    return {"trials": trials, "wall_s": seconds, "objectives": objectives, "front_size": len(pareto["points"]),
            "front": [{"number": p["number"], **{k: p["metrics"][k] for k in objectives}, "speedup": p["metrics"]["speedup"]}
                      for p in pareto["points"]],
            "baselines": {k: {m: v[m] for m in (*objectives, "speedup")} for k, v in base.items()},
            "dominating_fora2": beats["fora2"], "dominating_fora3": beats["fora3"],
            "pass": seconds <= 600 and trials >= 24 and bool(beats["fora2"] or beats["fora3"])}


def trial_phase_rate(folder: Path) -> tuple[float, int]:
    """(trials per minute, trials) from Tune's per-trial results: first start to last end."""
    windows = []
    for path in (folder / "ray_results").rglob("result.json"):
        last = json.loads(path.read_text().strip().splitlines()[-1])
        windows.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    span = max(e for _, e in windows) - min(s for s, _ in windows)
    return len(windows) / span * 60, len(windows)


def ray_scaling(trials: int, n_samples: int) -> dict:
    rows = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="ebtune-bench-") as tmp:
            seconds, folder = search(Path(tmp), f"bench-ray{workers}", f"trials={trials}", "launcher=ray",
                                     "ray.num_cpus=2", f"ray.max_concurrent={workers}", "search.sampler=random",
                                     f"metric.n_samples={n_samples}")
            rate, done = trial_phase_rate(folder)
        rows[workers] = {"trials_per_min": rate, "trials": done, "wall_s": seconds}
    ratio = rows[2]["trials_per_min"] / rows[1]["trials_per_min"]
    return {"workers_1": rows[1], "workers_2": rows[2], "ratio": ratio, "pass": ratio >= 1.6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24, help="trials of the default search")
    p.add_argument("--ray-trials", type=int, default=12)
    p.add_argument("--ray-n-samples", type=int, default=256)
    p.add_argument("--skip-default", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    report: dict = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not a.skip_default:
        d = report["default_search"] = default_search(a.trials)
        print(f"default search: {d['trials']} trials in {d['wall_s']:.0f} s (bar 600 s); front {d['front_size']} point(s) "
              f"over {', '.join(d['objectives'])}; dominating FORA(2): {d['dominating_fora2'] or 'none'}, "
              f"FORA(3): {d['dominating_fora3'] or 'none'} -> {'PASS' if d['pass'] else 'FAIL'}")
    if not a.skip_ray:
        r = report["ray_scaling"] = ray_scaling(a.ray_trials, a.ray_n_samples)
        print(f"ray: 1 worker {r['workers_1']['trials_per_min']:.2f} trials/min, 2 workers "
              f"{r['workers_2']['trials_per_min']:.2f} trials/min, ratio {r['ratio']:.2f} (bar 1.6) -> "
              f"{'PASS' if r['pass'] else 'FAIL'}")
    report["load_avg_end"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
