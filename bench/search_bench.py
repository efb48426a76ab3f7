"""Performance of `ebtune search` on dit-tiny, measured in one run.

    .venv/bin/python bench/search_bench.py [--trials 24] [--parallel-trials 12] [--parallel-n-samples 128] [--json FILE]

1. The default search (`ebtune search trials=N`, as a user runs it): wall time and the confirmed front.
2. Parallelism (issue 14): trials per minute over the trial phase (first trial start to last trial
   end, from the study; baselines and start-up excluded) for the old default (local, 1 thread), the
   new default (threads=auto), local with every core's thread, and Ray with one 1-thread worker per
   core, on the same points (random sampler, same seed, full-size trials, no confirmation), each
   also as a ratio to the best single-process setting.

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

EBTUNE = [sys.executable, "-m", "ebtune.cli"]


def search(workdir: Path, name: str, *overrides: str) -> tuple[float, Path]:
    """Run `ebtune search` in `workdir`; returns (wall seconds, search folder)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "TORCH_HOME": str(workdir / "torch")}
    start = time.perf_counter()
    proc = subprocess.run([*EBTUNE, "search", f"name={name}", *overrides], cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"search {name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, workdir / "outputs" / "search" / name


def default_search(trials: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ebtune-bench-") as tmp:
        seconds, folder = search(Path(tmp), "bench-default", f"trials={trials}")
        pareto = json.loads((folder / "pareto.json").read_text())
    objectives = pareto["objectives"]
    keep = (*objectives, f"{pareto.get('quality', 'fid')}_std", "speedup")
    return {"trials": trials, "wall_s": seconds, "objectives": objectives, "confirmed": pareto["confirmed"],
            "front": [{"number": p["number"], **{k: p["metrics"][k] for k in keep}, "relations": p["relations"]}
                      for p in pareto["points"]],
            "baselines": {b["name"]: {k: b["metrics"][k] for k in keep} for b in pareto["baselines"]}}


def trial_phase_rate(folder: Path, name: str) -> tuple[float, int]:
    """(trials per minute, trials) over the trial phase, from the study: first trial start to last
    trial end (baselines and start-up, Ray's included, are outside it)."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")
    done = [t for t in study.trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / span * 60, len(done)


# (label, overrides) of the settings compared; every run uses the random sampler with the same seed
# (the same points), full-size trials and no confirmation, so only the parallelism differs.
PARALLELISM = [
    ("old default: local, 1 thread", ["launcher=local", "threads=1"]),
    ("new default: local, threads=auto", []),
    ("local, all threads", ["launcher=local", f"threads={os.cpu_count()}"]),
    ("ray, one 1-thread worker per core", ["launcher=ray", f"ray.num_cpus={os.cpu_count()}", "ray.cpus_per_trial=1",
                                            "threads=1"]),
]


def parallelism(trials: int, n_samples: int) -> dict:
    rows = []
    for label, overrides in PARALLELISM:
        name = f"par{len(rows)}"
        with tempfile.TemporaryDirectory(prefix="ebtune-bench-") as tmp:
            seconds, folder = search(Path(tmp), name, f"trials={trials}", "search.sampler=random", "metric.n_proxy=0",
                                     "search.confirm_n=0", f"metric.n_samples={n_samples}", *overrides)
            rate, done = trial_phase_rate(folder, name)
        rows.append({"setting": label, "overrides": overrides, "trials_per_min": rate, "trials": done, "wall_s": seconds})
    best_single = max(r["trials_per_min"] for r in rows if "ray" not in r["setting"])
    for r in rows:
        r["vs_best_single_process"] = r["trials_per_min"] / best_single
    return {"rows": rows, "best_single_process_trials_per_min": best_single}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24, help="trials of the default search")
    p.add_argument("--parallel-trials", type=int, default=12)
    p.add_argument("--parallel-n-samples", type=int, default=128)
    p.add_argument("--skip-default", action="store_true")
    p.add_argument("--skip-parallel", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    report: dict = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not a.skip_default:
        d = report["default_search"] = default_search(a.trials)
        print(f"default search: {d['trials']} trials in {d['wall_s']:.0f} s; confirmed front {len(d['front'])} point(s)")
    if not a.skip_parallel:
        r = report["parallelism"] = parallelism(a.parallel_trials, a.parallel_n_samples)
        for row in r["rows"]:
            print(f"{row['setting']:>36}: {row['trials_per_min']:.2f} trials/min over {row['trials']} trials "
                  f"({row['vs_best_single_process']:.2f}x the best single process)")
    report["load_avg_end"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
