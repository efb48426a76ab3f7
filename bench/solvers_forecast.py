"""Fewer steps per sampler against reuse and forecast caching on dit-tiny, paired (issue 21 item 4, issue 22 item 7).

    RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true PYTHONPATH=$PWD \
        .venv/bin/python bench/solvers_forecast.py --n 500 --boot 100 --threads 1 [--grid-sets A,B,... --notes FILE]

(The quoted run, `bench/results-solvers-forecast.md`: 32 min on the shared 2-core CPU, one thread.)

Every set is sampled by `Evaluator.evaluate` of one search config (dit-tiny, cfg 1.5, seed 0, the same
class-balanced labels, initial noise and step noise batch by batch), against the reference = DDPM 50
steps uncached, the default search's own uncached run: `speedup` is its MACs over the set's (MAC-ideal),
`latency_speedup` the evaluator's paired latency (median over `--pairs` batches of the reference batch's
seconds / the set's seconds, run back to back; `--pairs` batches per set).

Sets (`--sets`, comma separated; names as in the tables):
- `SAMPLER-K`: SAMPLER (ddpm | ddim | dpmpp-2m | dpmpp-3m) uncached at K steps;
- `SAMPLER-foraN`: FORA(N) at 50 steps (reuse);
- `SAMPLER-taylorNoO`: TaylorSeer `taylor` interval N, order O, its default warm-up (3 full steps);
- `SAMPLER-forecastAaMm`: `forecast`, attention every A and MLP every M steps, taylor order 2, warm-up 3;
- a `+eb` suffix adds the paper's ε rule (`eps_scale=ebcache`, b_h 0.98, b_l 0.96, t_s 0.4).
Group names expand: `steps` = ddpm, ddim, dpmpp-2m at 50 33 25 17 12 8 6; `cache:SAMPLER` = FORA 2-6 and
taylor 2-6 × O 1, 2, forecast a3m5, then FORA 7, 8, 10 and taylor 8, 10, 12 × O 1, 2 for SAMPLER; `cache:auto` = cache:ddim plus cache:<the sampler
whose uncached sets are best at most step counts below 50> (needs the `steps` sets first); `eb:auto` =
the `+eb` variant of the FORA, the taylor and the forecast set of each cached sampler with the lowest Δ
against its best uncached set at no more MACs (run it after `steps:matched`).
`steps:matched` = each cached sampler uncached at K = floor(50 / MAC speedup) steps for every cached set (the
most steps at no more MACs: the step grid above is too coarse to compare with); `ebsteps:matched` = the same with
the ε rule for the `+eb` sets (the ε-fair baselines). Default: `steps,cache:auto,steps:matched,eb:auto,ebsteps:matched`. FORA also at N = 7, 8, 10 and taylor at N = 8, 10, 12:
FORA(2..6) spans only 1.9-4.7x MACs.

Quality: dit-tiny's `digits-native` (lower is better) with `--boot` bootstrap draws; resampled indices
depend only on (seed, n), so the draws of two sets are paired and the error of a difference is
std(draws_a − draws_b). Each cached set is compared with the best uncached set of any sampler at no more
MACs (an uncached set with the best *other* uncached set at no more MACs): better if the difference is
below −2 se, worse above +2 se, else a tie at this n.

Results are written after every set (`--json`, with the draws), so an interrupted run resumes with
`--resume` (sets whose n, bootstrap and seed match are not sampled again). `--md`, `--plot` and
`--grids` write the table, the quality-vs-MAC-speedup plot and a 20-image grid per set in `--grid-sets`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebtune.cli.config import compose
from ebtune.io.grids import save_grid
from ebtune.run.generate import generate
from ebtune.schedules import ScheduleContext
from ebtune.schedules.spec import ScheduleSpec
from ebtune.search.evaluator import Evaluator, Reference

STEPS = (50, 33, 25, 17, 12, 8, 6)
STEP_SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")
REFERENCE = "ddpm-50"
HAND_WRITTEN = "<!-- hand-written below: kept when the script rewrites the tables -->"
GRID = 20  # images per saved grid: the first batch's first 20
EB = {"name": "ebcache", "b_h": 0.98, "b_l": 0.96, "t_s": 0.4}
NAME = re.compile(r"^(?P<sampler>ddpm|ddim|dpmpp-2m|dpmpp-3m)-(?:(?P<steps>\d+)|fora(?P<fora>\d+)|taylor(?P<tn>\d+)o(?P<to>\d+)"
                  r"|forecast(?P<fa>\d+)a(?P<fm>\d+)m)(?P<eb>\+eb)?$")


def parse(name: str) -> dict[str, Any]:
    """A set name → sampler, steps, schedule family and parameters, ε rule, kind (uncached/reuse/forecast)."""
    m = NAME.match(name)
    if not m:
        raise SystemExit(f"unknown set {name!r}: expected SAMPLER-K, SAMPLER-foraN, SAMPLER-taylorNoO, "
                         f"SAMPLER-forecastAaMm, optionally with +eb")
    g = m.groupdict()
    if g["steps"]:
        family, params, steps, kind = "none", {}, int(g["steps"]), "uncached"
    elif g["fora"]:
        family, params, steps, kind = "fora", {"interval": int(g["fora"])}, 50, "reuse"
    elif g["tn"]:
        family, params, steps, kind = "taylor", {"interval": int(g["tn"]), "order": int(g["to"])}, 50, "forecast"
    else:
        family, steps, kind = "forecast", 50, "forecast"
        params = {"attn": int(g["fa"]), "mlp": int(g["fm"]), "warmup": 3, "attn_order": 2, "mlp_order": 2}
    return {"sampler": g["sampler"], "steps": steps, "family": family, "params": params,
            "eps_scale": EB if g["eb"] else {"name": "none"}, "kind": kind}


# FORA(N) for N = 2..6 reaches only 1.9-4.7x MACs (the patch embedding, adaLN and final layer always run), so
# N = 7, 8, 10 and taylor N = 8, 10, 12 (its 3 warm-up steps cost more) extend both families to 5-7x.
FORA_N = (2, 3, 4, 5, 6, 7, 8, 10)
TAYLOR_N = (2, 3, 4, 5, 6, 8, 10, 12)


def cache_sets(sampler: str) -> list[str]:
    return ([f"{sampler}-fora{k}" for k in FORA_N if k <= 6] + [f"{sampler}-taylor{k}o{o}" for o in (1, 2) for k in TAYLOR_N if k <= 6]
            + [f"{sampler}-forecast3a5m"]
            + [f"{sampler}-fora{k}" for k in FORA_N if k > 6] + [f"{sampler}-taylor{k}o{o}" for o in (1, 2) for k in TAYLOR_N if k > 6])


def winner(results: dict[str, dict[str, Any]]) -> str:
    """The sampler whose uncached sets are best (lowest digits-native) at most step counts below 50; ties → lower mean."""
    wins = {s: 0 for s in STEP_SAMPLERS}
    for k in STEPS[1:]:
        have = {s: results[f"{s}-{k}"]["fid"] for s in STEP_SAMPLERS if f"{s}-{k}" in results}
        if len(have) == len(STEP_SAMPLERS):
            wins[min(have, key=have.get)] += 1
    mean = {s: np.mean([results[f"{s}-{k}"]["fid"] for k in STEPS if f"{s}-{k}" in results] or [math.inf]) for s in STEP_SAMPLERS}
    return min(STEP_SAMPLERS, key=lambda s: (-wins[s], mean[s]))


def expand(token: str, results: dict[str, dict[str, Any]]) -> list[str]:
    if token == "steps":
        return [f"{s}-{k}" for s in STEP_SAMPLERS for k in STEPS]
    if token.startswith("cache:"):
        which = token.split(":", 1)[1]
        samplers = ["ddim", winner(results)] if which == "auto" else [which]
        return [name for s in dict.fromkeys(samplers) for name in cache_sets(s)]
    if token in ("steps:matched", "ebsteps:matched"):
        # For every cached set (with the ε rule: ebsteps), each cached sampler uncached at the most steps that cost
        # no more MACs, K = floor(50 / MAC speedup) (with the same ε rule): a fixed step grid would compare a 4.3x
        # schedule with 8 steps (6.25x) when 11 steps (4.55x) also cost no more.
        eb = token.startswith("eb")
        cached = [r for r in results.values() if r["kind"] != "uncached" and (r["eps_scale"]["name"] != "none") == eb]
        samplers = dict.fromkeys(r["sampler"] for r in cached)
        ks = sorted({math.floor(50 / r["speedup"] + 1e-9) for r in cached}, reverse=True)
        return [f"{s}-{k}" + ("+eb" if eb else "") for s in samplers for k in ks]
    if token == "eb:auto":
        cached = [n for n, r in results.items() if r["kind"] != "uncached" and r["eps_scale"]["name"] == "none"]
        out = []
        for s in dict.fromkeys(results[n]["sampler"] for n in cached):
            for fam in ("fora", "taylor", "forecast"):
                mine = [n for n in cached if results[n]["sampler"] == s and results[n]["family"] == fam]
                if mine:  # the family's best against its baseline: the lowest paired Δ vs the best uncached at ≤ MACs
                    out.append(min(mine, key=lambda n: (results[n].get("vs") or {}).get("delta", math.inf)) + "+eb")
        return out
    parse(token)
    return [token]


def evaluator(n: int, boot: int, batch: int, pairs: int, seed: int) -> Evaluator:
    cfg = compose(["model=dit-tiny", "sampler=ddpm", "steps=50", "cfg_scale=1.5", f"seed={seed}", "device=cpu",
                   f"metric.n_samples={n}", f"metric.batch_size={batch}", "metric.latency_warmup=1", "metric.n_proxy=0",
                   f"metric.bootstrap={boot}", f"metric.latency_pairs={pairs}"], config_name="search")
    return Evaluator(cfg, "cpu")


def run_set(ev: Evaluator, name: str, reference: Reference | None, boot: int) -> tuple[dict[str, Any], np.ndarray]:
    """Sample and score one set; returns its record and its images."""
    p = parse(name)
    sampler = ev.sampler_at(p["steps"], p["sampler"])
    ctx = ScheduleContext(sampler.steps, ev.loaded.config.depth, sampler.times)
    schedule = ScheduleSpec.of(p["family"], p["params"], p["eps_scale"]).build(ctx)
    start = time.perf_counter()
    out = ev.evaluate(schedule, reference, sampler)
    wall = time.perf_counter() - start
    images = ev.loaded.decode(torch.from_numpy(out.latents))
    value, draws = ev.metric.score_draws(images, boot, ev.seed)
    if not math.isclose(value, out.metrics[ev.metric.name], rel_tol=1e-9, abs_tol=1e-9):
        raise SystemExit(f"{name}: re-decoded images score {value} but the evaluator's {ev.metric.name} is "
                         f"{out.metrics[ev.metric.name]}")
    rec = {**p, "name": name, "metrics": out.metrics, "fid": value, "fid_std": float(np.std(draws, ddof=1)),
           "speedup": out.metrics["speedup"], "latency_speedup": out.metrics["latency_speedup"],
           "wall_s": wall, "loadavg": list(os.getloadavg()), "draws": draws.tolist(), "latents": out.latents,
           "grid_sha1": hashlib.sha1(np.ascontiguousarray(images[:GRID]).tobytes()).hexdigest()}
    return rec, images


def save_set_grid(ev: Evaluator, name: str, rec: dict[str, Any], folder: str) -> Path:
    """Re-sample only the first batch of set `name` (the evaluator's batch 0: same labels, seed, batch size) and
    save its first GRID images; they must be the scored set's own (checked against the recorded hash)."""
    p = parse(name)
    sampler = ev.sampler_at(p["steps"], p["sampler"])
    ctx = ScheduleContext(sampler.steps, ev.loaded.config.depth, sampler.times)
    schedule = ScheduleSpec.of(p["family"], p["params"], p["eps_scale"]).build(ctx)
    images = generate(ev.loaded, sampler, schedule, ev.labels[:ev.batch], ev.seed, ev.batch).images[:GRID]
    if hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest() != rec["grid_sha1"]:
        raise SystemExit(f"{name}: the re-sampled first batch differs from the scored set's")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return save_grid(images, Path(folder) / f"{name.replace('+', '_')}.png", ncol=10)


def compare(results: dict[str, dict[str, Any]]) -> None:
    """Fill each set's paired difference against the best uncached set of any sampler at no more MACs (`vs`;
    ε rule none, the fewer-steps sets) and, for a set with the ε rule, against the best uncached set with
    or without it (`vs_eb`: the ε-fair baseline)."""
    _compare(results, "vs", lambda u: results[u]["eps_scale"]["name"] == "none", lambda r: True)
    _compare(results, "vs_eb", lambda u: True, lambda r: r["eps_scale"]["name"] != "none")
    # The same at no less *measured* paired latency speedup (noisier: a few batch pairs on a shared CPU).
    _compare(results, "vs_latency", lambda u: results[u]["eps_scale"]["name"] == "none", lambda r: r["kind"] != "uncached",
             cost=lambda r: -r["latency_speedup"])


def _compare(results, key, eligible, applies, cost=lambda r: r["metrics"]["macs"]) -> None:
    uncached = [n for n, r in results.items() if r["kind"] == "uncached" and eligible(n)]
    for name, r in results.items():
        if not applies(r):
            continue
        pool = [u for u in uncached if u != name and cost(results[u]) <= cost(r) + abs(cost(r)) * 1e-9]
        if not pool:
            r[key] = None
            continue
        best = min(pool, key=lambda u: results[u]["fid"])
        d = np.asarray(r["draws"]) - np.asarray(results[best]["draws"])
        delta, se = r["fid"] - results[best]["fid"], float(np.std(d, ddof=1))
        verdict = "better" if delta < -2 * se else "worse" if delta > 2 * se else "tie at this n"
        r[key] = {"baseline": best, "delta": delta, "se": se, "verdict": verdict}


def paired(results: dict[str, dict[str, Any]], a: str, b: str) -> tuple[float, float] | None:
    if a not in results or b not in results:
        return None
    d = np.asarray(results[a]["draws"]) - np.asarray(results[b]["draws"])
    return results[a]["fid"] - results[b]["fid"], float(np.std(d, ddof=1))


def _rows(results: dict[str, dict[str, Any]], notes: dict[str, str]) -> list[str]:
    """One row per set against the best uncached set at no more MACs."""
    lines: list[str] = []
    for name, r in results.items():
        vs = r.get("vs")
        dcol = f"{vs['delta']:+.2f} ± {vs['se']:.2f} ({vs['baseline']})" if vs else "–"
        lines.append(f"| {name} | {r['sampler']} | {r['steps']} | {r['speedup']:.2f}× | {r['latency_speedup']:.2f}× | "
                     f"{r['fid']:.2f} ± {r['fid_std']:.2f} | {dcol} | {vs['verdict'] if vs else '–'} | {notes.get(name, '')} |")
    return lines


def _eps_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each `+eb` set against its ε-fair baseline."""
    lines: list[str] = []
    eb = [(n, r) for n, r in results.items() if r.get("vs_eb")]
    if eb:
        lines += ["", "With the ε rule: each `+eb` set against the best uncached set with or without the rule at no more MACs "
                  "(the ε-fair baseline; paired Δ ± se):", "", "| set | MAC speedup | digits-native ± se | Δ ± se (baseline) | verdict |",
                  "|---|---|---|---|---|"]
        for n, r in eb:
            v = r["vs_eb"]
            lines.append(f"| {n} | {r['speedup']:.2f}× | {r['fid']:.2f} ± {r['fid_std']:.2f} | {v['delta']:+.2f} ± {v['se']:.2f} "
                         f"({v['baseline']}) | {v['verdict']} |")
    return lines


def _sampler_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Samplers against each other at equal steps."""
    lines: list[str] = []
    lines += ["", "Samplers at equal steps (paired Δ ± se, negative = the first is better):", "",
              "| steps | dpmpp-2m − ddim | dpmpp-2m − ddpm | ddim − ddpm |", "|---|---|---|---|"]
    for k in STEPS:
        cells = []
        for a, b in (("dpmpp-2m", "ddim"), ("dpmpp-2m", "ddpm"), ("ddim", "ddpm")):
            d = paired(results, f"{a}-{k}", f"{b}-{k}")
            cells.append(f"{d[0]:+.2f} ± {d[1]:.2f}" if d else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _latency_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Cached sets against the best uncached set at no less measured latency."""
    lines: list[str] = []
    lat = [(n, r) for n, r in results.items() if r.get("vs_latency")]
    if lat:
        lines += ["", "Cached sets against the best uncached set at no less *measured* paired latency speedup (same rule, "
                  "latency instead of MACs; the latency ratios are medians of 3 batch pairs on a loaded CPU, so a few % noisy):", "",
                  "| set | latency speedup | digits-native | Δ ± se (baseline, its latency speedup) | verdict |", "|---|---|---|---|---|"]
        for n, r in lat:
            v = r["vs_latency"]
            lines.append(f"| {n} | {r['latency_speedup']:.2f}× | {r['fid']:.2f} | {v['delta']:+.2f} ± {v['se']:.2f} ({v['baseline']}, "
                         f"{results[v['baseline']]['latency_speedup']:.2f}×) | {v['verdict']} |")
    return lines


def _family_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Reuse against forecast at no more MACs."""
    lines: list[str] = []
    lines += ["", "Reuse vs forecast at no more MACs: each forecasting set against the best FORA(N) of its sampler that costs "
              "no more MACs, and each FORA(N) against the best forecasting set that costs no more (paired Δ ± se, negative = "
              "the row's set is better):", "", "| set | MAC speedup | digits-native | best of the other family at ≤ MACs | Δ ± se | verdict |",
              "|---|---|---|---|---|---|"]
    plain = {n: r for n, r in results.items() if r["kind"] != "uncached" and r["eps_scale"]["name"] == "none"}
    for n, r in plain.items():
        other = [o for o, q in plain.items() if q["sampler"] == r["sampler"] and (q["kind"] == "reuse") != (r["kind"] == "reuse")
                 and q["metrics"]["macs"] <= r["metrics"]["macs"] * (1 + 1e-9)]
        if not other:
            lines.append(f"| {n} | {r['speedup']:.2f}× | {r['fid']:.2f} | none at ≤ MACs | – | – |")
            continue
        best = min(other, key=lambda o: plain[o]["fid"])
        d, se = paired(results, n, best)
        verdict = "better" if d < -2 * se else "worse" if d > 2 * se else "tie at this n"
        lines.append(f"| {n} | {r['speedup']:.2f}× | {r['fid']:.2f} | {best} ({plain[best]['speedup']:.2f}×, {plain[best]['fid']:.2f}) | "
                     f"{d:+.2f} ± {se:.2f} | {verdict} |")
    return lines


def _same_interval_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Reuse against forecast at the same interval N."""
    lines: list[str] = []
    lines += ["", "Reuse vs forecast at the same interval N (taylor's 3 warm-up steps make it cost more MACs than FORA(N); "
              "paired Δ ± se, negative = forecast better):", "",
              "| sampler | N | taylor O=1 − FORA | taylor O=2 − FORA |", "|---|---|---|---|"]
    for s in dict.fromkeys(r["sampler"] for r in results.values() if r["family"] == "fora"):
        for k in sorted(set(FORA_N) | set(TAYLOR_N)):
            if not any(f"{s}-{f}" in results for f in (f"fora{k}", f"taylor{k}o1", f"taylor{k}o2")):
                continue
            cells = []
            for o in (1, 2):
                d = paired(results, f"{s}-taylor{k}o{o}", f"{s}-fora{k}")
                t = results.get(f"{s}-taylor{k}o{o}")
                cells.append(f"{d[0]:+.2f} ± {d[1]:.2f}" if d else f"– (taylor {t['fid']:.2f} at {t['speedup']:.2f}×)" if t else "–")
            lines.append(f"| {s} | {k} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any], notes: dict[str, str]) -> str:
    lines = ["# Fewer steps vs reuse vs forecast on dit-tiny (issue 21 item 4, issue 22 item 7)", "",
             "```bash", meta["command"], "```", "",
             f"n = {meta['n']} images per set, {meta['boot']} bootstrap draws, seed {meta['seed']}, cfg 1.5, class-balanced "
             f"labels, the same noise for every set; reference = DDPM 50 steps uncached; batch {meta['batch']}, "
             f"{meta['pairs']} latency pair(s) per set; {meta['threads']} torch thread(s); CPU, "
             f"load average {meta['load_min']:.1f}–{meta['load_max']:.1f} (1-min, sampled after each set); "
             f"{meta['wall_min']:.1f} min in all.", "",
             "digits-native: lower is better. Δ: paired difference against the best uncached set (any sampler, "
             "ε rule none) with no more MACs; se from the paired bootstrap draws; better/worse beyond 2 se.", "",
             "| set | sampler | steps | MAC speedup | paired latency speedup | digits-native ± se | Δ vs best uncached at ≤ MACs ± se | verdict | images |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += _rows(results, notes) + _eps_rows(results) + _sampler_rows(results) + _latency_rows(results)
    lines += _family_rows(results) + _same_interval_rows(results)
    return "\n".join(lines) + "\n"

def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"ddpm": "tab:gray", "ddim": "tab:blue", "dpmpp-2m": "tab:orange", "dpmpp-3m": "tab:purple"}
    for s in STEP_SAMPLERS:
        pts = sorted((r["speedup"], r["fid"], r["fid_std"], r["steps"]) for r in results.values()
                     if r["sampler"] == s and r["kind"] == "uncached" and r["eps_scale"]["name"] == "none")
        if pts:
            x, y, e, k = zip(*pts)
            ax.errorbar(x, y, yerr=e, color=colors[s], marker="o", ms=3, capsize=1.5, elinewidth=0.6, label=f"{s}, fewer steps (uncached)")
            for xi, yi, ki in zip(x, y, k):
                ax.annotate(str(ki), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7, color=colors[s])
    marks = {"fora": ("s", "FORA(N) reuse"), "taylor": ("^", "taylor N, O"), "forecast": ("D", "forecast a3 m5")}
    for r in results.values():
        if r["kind"] == "uncached":
            continue
        m, label = marks[r["family"]]
        eb = r["eps_scale"]["name"] != "none"
        hollow = r["family"] == "taylor" and r["params"]["order"] == 1
        ax.plot([r["speedup"]], [r["fid"]], m, ms=6 if not eb else 8, color=colors[r["sampler"]],
                mfc="none" if hollow or eb else colors[r["sampler"]], mew=2 if eb else 1, alpha=0.85)
    from matplotlib.lines import Line2D
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="s", ls="", color="k", label="FORA(N), 50 steps"),
                Line2D([], [], marker="^", ls="", color="k", label="taylor N, O=2 (filled) / O=1 (hollow)"),
                Line2D([], [], marker="D", ls="", color="k", label="forecast attn 3, mlp 5, O=2"),
                Line2D([], [], marker="o", ls="", color="k", mfc="none", ms=9, mew=2, label="thick hollow: + ε rule ebcache")]
    ax.legend(handles=handles, fontsize=7, loc="upper left")
    ax.set_xlabel("MAC speedup vs DDPM 50 steps uncached")
    ax.set_ylabel("digits-native (lower is better); bars: unpaired bootstrap se")
    ax.set_title("dit-tiny, cfg 1.5, n = 500: fewer steps per sampler (numbers = steps) vs reuse/forecast caching at 50 steps;\n"
                 "the sets share noise, so their differences are far tighter than the bars (paired se in the table)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="images per set")
    p.add_argument("--boot", type=int, default=100, help="bootstrap draws of digits-native")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sets", default="steps,cache:auto,steps:matched,eb:auto,ebsteps:matched", help="comma-separated set names or groups (see the docstring)")
    p.add_argument("--batch", type=int, default=50, help="images per sampling (and latency) batch")
    p.add_argument("--pairs", type=int, default=3, help="paired reference batches per set for latency_speedup")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench/results-solvers-forecast.json")
    p.add_argument("--md", default="bench/results-solvers-forecast.md")
    p.add_argument("--plot", default="docs/solvers-forecast.png")
    p.add_argument("--grids", default="bench/grids-solvers-forecast")
    p.add_argument("--grid-sets", default="", help="comma-separated sets (already in --json) to save a grid of their first 20 images")
    p.add_argument("--notes", default="", help="a JSON file {set: one line on what its grid shows} for the table")
    p.add_argument("--resume", action="store_true", help="keep sets of a matching earlier --json instead of sampling them again")
    p.add_argument("--report-only", action="store_true", help="only rewrite the table and plot from --json (no sampling, no grids)")
    return p


def _sample(a: argparse.Namespace, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    """Sample and score every set of `a.sets` missing from `results`, saving the JSON after each."""
    ev = evaluator(a.n, a.boot, a.batch, a.pairs, a.seed)
    start, wall0 = time.perf_counter(), meta["wall_s"]

    def save() -> None:
        compare(results)
        meta["wall_s"] = wall0 + time.perf_counter() - start
        Path(a.json).write_text(json.dumps({"meta": meta, "sets": results}, indent=1))

    ref_latents = None
    if REFERENCE not in results:
        rec, _ = run_set(ev, REFERENCE, None, a.boot)
        ref_latents = rec.pop("latents")
        results[REFERENCE] = rec
        print(f"{REFERENCE}: {rec['fid']:.2f} ± {rec['fid_std']:.2f} ({rec['wall_s']:.0f} s, load {rec['loadavg'][0]:.1f})", flush=True)
        save()
    # A resumed run has no reference latents: its new sets get no `distance` (the latency pairs need none).
    reference = Reference(ref_latents if ref_latents is not None else np.zeros(1), results[REFERENCE]["metrics"]["latency_s"])
    for token in (t.strip() for t in a.sets.split(",") if t.strip()):
        for name in expand(token, results):
            if name in results:
                continue
            rec, _ = run_set(ev, name, reference, a.boot)
            rec.pop("latents")
            if ref_latents is None:
                rec["metrics"].pop("distance")
            results[name] = rec
            print(f"{name}: {rec['fid']:.2f} ± {rec['fid_std']:.2f}  {rec['speedup']:.2f}× MACs, {rec['latency_speedup']:.2f}× latency "
                  f"({rec['wall_s']:.0f} s, load {rec['loadavg'][0]:.1f})", flush=True)
            save()
    for name in (g for g in a.grid_sets.split(",") if g):
        print("grid:", save_set_grid(ev, name, results[name], a.grids), flush=True)


def main() -> None:
    a = _parser().parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    command = ("RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true PYTHONPATH=$PWD .venv/bin/python bench/solvers_forecast.py "
               f"--n {a.n} --boot {a.boot} --threads {a.threads} --batch {a.batch} --pairs {a.pairs} --sets {a.sets}"
               + (f" --grid-sets {a.grid_sets}" if a.grid_sets else "") + (f" --notes {a.notes}" if a.notes else ""))
    results: dict[str, dict[str, Any]] = {}
    meta = {"n": a.n, "boot": a.boot, "seed": a.seed, "batch": a.batch, "pairs": a.pairs, "threads": a.threads,
            "command": command, "wall_s": 0.0}
    if (a.resume or a.report_only) and Path(a.json).is_file():
        old = json.loads(Path(a.json).read_text())
        if all(old["meta"][k] == meta[k] for k in ("n", "boot", "seed", "batch")):
            results, meta["wall_s"] = old["sets"], old["meta"].get("wall_s", 0.0)
            meta["command"] = command
    if not a.report_only:
        _sample(a, results, meta)
    compare(results)
    loads = [r["loadavg"][0] for r in results.values()]
    meta.update(load_min=min(loads), load_max=max(loads), wall_min=meta["wall_s"] / 60)
    notes = json.loads(Path(a.notes).read_text()) if a.notes else {}
    # Text after HAND_WRITTEN in an existing table file (the conclusions) is kept when the tables are rewritten.
    kept = Path(a.md).read_text().partition(HAND_WRITTEN)[2] if Path(a.md).is_file() else ""
    Path(a.md).write_text(markdown(results, meta, notes) + ("\n" + HAND_WRITTEN + kept if kept else ""))
    if a.plot:
        plot(results, a.plot)
    for name, r in results.items():
        vs = r.get("vs")
        print(f"{name:<24}{r['speedup']:>6.2f}×{r['latency_speedup']:>6.2f}×  {r['fid']:6.2f} ± {r['fid_std']:.2f}  "
              + (f"{vs['delta']:+6.2f} ± {vs['se']:.2f} vs {vs['baseline']}: {vs['verdict']}" if vs else ""))


if __name__ == "__main__":
    main()
