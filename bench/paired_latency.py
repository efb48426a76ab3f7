"""Paired latency under concurrency, in one run: one trial evaluated alone, then two evaluated at once in
two processes (one torch thread each), and each one's `latency_speedup` against the lone run's.

    .venv/bin/python bench/paired_latency.py [--rounds 3] [--json bench/results-paired-latency.json] [key=value ...]

As in a search, the no-cache reference is evaluated first, alone (`Reference.latency_s`), and the trial
(FORA(3) by default) is evaluated by `Evaluator.evaluate` afterwards. Each evaluation yields both
measurements: `unpaired` = reference latency measured alone / the trial's own median latency (what
`latency_speedup` was before pairing, and what `metric.latency_pairs=0` still gives), and `paired` =
the evaluator's `latency_speedup` (median over back-to-back pairs of no-cache batch / trial batch;
`metric.latency_pairs: auto` with latency ranked: 4 to 7 pairs, as in a default search's 7 timed batches). Rounds repeat lone, then concurrent, so drifting machine load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BASE = ["model=dit-tiny", "steps=20", "metric.n_samples=128", "metric.batch_size=16", "metric.latency_warmup=1",
        "metric.n_proxy=0", "metric.bootstrap=0", "device=cpu",
        "search.objectives=[fid,latency_s]"]  # latency ranked: the pairing a latency search gets


def _evaluator(cfg: dict[str, Any]):
    import torch

    from ebtune.search.evaluator import Evaluator

    torch.set_num_threads(1)
    return Evaluator(cfg, "cpu")


def _trial(cfg: dict[str, Any], family: str, params: dict[str, Any], reference, barrier, results) -> None:
    """One trial's evaluation in this process, started when every concurrent process is ready."""
    from ebtune.schedules import make_schedule

    ev = _evaluator(cfg)
    schedule = make_schedule(family, ev.ctx, **params)
    barrier.wait()
    start = time.perf_counter()
    m = ev.evaluate(schedule, reference).metrics
    results.put({"latency_s": m["latency_s"], "paired": m["latency_speedup"],
                 "unpaired": reference.latency_s / m["latency_s"], "wall_s": time.perf_counter() - start})


def run_trials(n: int, cfg, family, params, reference) -> list[dict[str, Any]]:
    """`n` concurrent evaluations of the trial, each in its own process."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(cfg, family, params, reference, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a trial process failed (exit {p.exitcode})")
    return out


def main() -> None:
    from ebtune.cli.config import compose
    from ebtune.search.evaluator import Reference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--interval", type=int, default=3, help="the trial: FORA(interval)")
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", help="more key=value search settings (e.g. metric.latency_pairs=3)")
    a = p.parse_args()
    # metric.latency_pairs is read with a default in code, so it is set here whether or not conf/ lists it.
    pairs = [o.partition("=")[2] for o in a.overrides if o.lstrip("+").startswith("metric.latency_pairs=")]
    cfg = compose([*BASE, *(o for o in a.overrides if not o.lstrip("+").startswith("metric.latency_pairs="))],
                  config_name="search")
    if pairs:
        cfg["metric"]["latency_pairs"] = int(pairs[-1])
    ev = _evaluator(cfg)
    family, params = "fora", {"interval": a.interval}
    rounds = []
    for r in range(a.rounds):
        ref = ev.evaluate(ev.no_cache, None)  # alone, as a search measures it before the trials
        reference = Reference(ref.latents, ref.metrics["latency_s"])
        lone = run_trials(1, cfg, family, params, reference)[0]
        pair = run_trials(2, cfg, family, params, reference)
        row = {"reference_latency_s": reference.latency_s, "lone": lone, "concurrent": pair}
        for kind in ("unpaired", "paired"):
            row[f"{kind}_deviation"] = [t[kind] / lone[kind] - 1 for t in pair]
        rounds.append(row)
        print(f"round {r}: reference {reference.latency_s:.3f}s; lone trial {lone['latency_s']:.3f}s, concurrent "
              + ", ".join(f"{t['latency_s']:.3f}s" for t in pair))
        for kind in ("unpaired", "paired"):
            print(f"  {kind:>8} latency_speedup: lone {lone[kind]:.3f}, concurrent "
                  + ", ".join(f"{t[kind]:.3f} ({t[kind] / lone[kind] - 1:+.1%})" for t in pair))
    summary = {kind: {"max_abs_deviation": max(abs(d) for r in rounds for d in r[f"{kind}_deviation"]),
                      "median_abs_deviation": statistics.median(abs(d) for r in rounds for d in r[f"{kind}_deviation"])}
               for kind in ("unpaired", "paired")}
    print("deviation of a concurrent trial's latency_speedup from the lone run's (bar: within 10 %):")
    for kind, s in summary.items():
        print(f"  {kind:>8}: median |dev| {s['median_abs_deviation']:.1%}, max |dev| {s['max_abs_deviation']:.1%}")
    if a.json:
        doc = {"command": "python bench/paired_latency.py " + " ".join(sys.argv[1:]), "settings": BASE + a.overrides,
               "trial": f"fora{a.interval}", "latency_pairs": [ev.pairs, ev.max_pairs], "threads_per_process": 1,
               "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "rounds": rounds, "summary": summary}
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"written: {a.json}")


if __name__ == "__main__":
    main()
