"""What coupling a fewer-step DDPM run's step noise to the K-step path buys the paired comparison.

    PYTHONPATH=. .venv/bin/python bench/noise_coupling.py [--seeds 0 1 2 3 4]
        [--json bench/results-noise-coupling.json] [--png /tmp/noise-coupling.png] [key=value ...]

On the embedded dit-tiny with the search defaults (ddpm, steps=50, digits-native), evaluates as a
search does (same seeds, labels and bootstrap resamples for all) the 50-step no-cache run, FORA(2)
at 50 steps and ddpm at 25 and 17 steps, the fewer-step runs with `metric.couple_noise` on and off.
For each pair (ddpm-k − ddpm-50, ddpm-k − fora2) it reports, with and without coupling, the
difference, its paired bootstrap error (`inference.paired_difference` on the outcomes' quality
draws), the independent error (the two points' own errors combined), the RMS distance of the two
runs' final latents, and what the search's verdict would call the pair at `metric.margin`
(`standing`). The 50-step runs draw the same noise either way; both settings evaluate them, and the
script checks that their draws agree exactly.
`--png` writes the first images of ddpm-50, ddpm-25 uncoupled and ddpm-25 coupled, one row each.
With several `--seeds` (image sets), the spread of a pair's difference over them is an independent
check of its bootstrap error.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebtune.cli.config import compose  # noqa: E402
from ebtune.core.schedule import no_cache  # noqa: E402
from ebtune.schedules import make_schedule  # noqa: E402
from ebtune.search.evaluator import Evaluator, Outcome  # noqa: E402
from ebtune.search.inference import equivalence_margin, paired_difference, standing  # noqa: E402

FEWER = (25, 17)


def evaluations(ev: Evaluator) -> dict[str, Outcome]:
    """The no-cache and FORA(2) runs at the search's K and ddpm at each of `FEWER` steps."""
    out = {f"ddpm-{ev.sampler.steps}": ev.evaluate(ev.no_cache, None),
           "fora2": ev.evaluate(make_schedule("fora", ev.ctx, interval=2), None)}
    for k in FEWER:
        out[f"ddpm-{k}"] = ev.evaluate(no_cache(k, ev.loaded.config.depth), None, ev.sampler_at(k))
    return out


def row(name: str, a: Outcome, b: Outcome, metric: str, margin: float) -> dict[str, Any]:
    d = paired_difference(a.quality_draws, b.quality_draws, a.metrics[metric], b.metrics[metric])
    assert d.paired, name
    independent = math.hypot(a.metrics[f"{metric}_std"], b.metrics[f"{metric}_std"])
    rms = float(np.sqrt(np.mean((a.latents - b.latents) ** 2)))  # how far apart the paired images are
    return {"pair": name, "metric": metric, "difference": round(d.value, 4), "paired_error": round(d.se, 4),
            "independent_error": round(independent, 4), "latent_rms": round(rms, 4),
            "standing": standing(d, margin)}  # what the search's verdict would call a against b


def save_png(path: str, rows: list[np.ndarray], count: int = 10) -> None:
    """The first `count` images of each of `rows` (uint8 n×h×w×c grids), one row each, enlarged 4×."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(r[:count]), axis=1) for r in rows], axis=0)
    image = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    image.resize((image.width * 4, image.height * 4), Image.NEAREST).save(path)


def one_seed(base: list[str], seed: int) -> tuple[list[dict], dict, dict[bool, dict[str, Outcome]]]:
    """Every evaluation under both settings from `seed`: the pairs' rows, the points and the outcomes."""
    runs, rows = {}, []
    for couple in (True, False):
        ev = Evaluator(compose([*base, f"seed={seed}", f"metric.couple_noise={str(couple).lower()}"],
                               config_name="search"), "cpu")
        runs[couple] = evaluations(ev)
    metric, K = ev.metric.name, ev.sampler.steps
    for name in (f"ddpm-{K}", "fora2"):  # K-step runs are never coupled: both settings draw the same noise
        assert runs[True][name].quality_draws == runs[False][name].quality_draws, name
    for k in FEWER:
        for other in (f"ddpm-{K}", "fora2"):
            for couple in (True, False):
                r = row(f"ddpm-{k} - {other}", runs[couple][f"ddpm-{k}"], runs[couple][other], metric,
                        equivalence_margin(ev.cfg["metric"]))
                rows.append({**r, "coupled": couple, "seed": seed})
    points = {f"{name}{' coupled' if c else ' plain'}": {metric: round(o.metrics[metric], 4),
                                                          "std": round(o.metrics[f"{metric}_std"], 4)}
              for c in (True, False) for name, o in runs[c].items()}
    return rows, points, runs


def summary(rows: list[dict]) -> list[dict]:
    """Per pair and setting, the mean over seeds of the difference and of each error."""
    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        for couple in (True, False):
            some = [r for r in rows if r["pair"] == pair and r["coupled"] == couple]
            out.append({"pair": pair, "coupled": couple, "seeds": len(some),
                        "standings": dict(Counter(r["standing"] for r in some)),
                        **{key: round(float(np.mean([r[key] for r in some])), 4)
                           for key in ("difference", "paired_error", "independent_error", "latent_rms")},
                        "difference_sd_over_seeds": round(float(np.std([r["difference"] for r in some], ddof=1)), 4)
                        if len(some) > 1 else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="bench/results-noise-coupling.json")
    p.add_argument("--png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="image sets (seed=): each evaluates every run")
    p.add_argument("overrides", nargs="*", help="more key=value search settings (e.g. metric.n_samples=128)")
    a = p.parse_args()
    torch.set_num_threads(1)
    base = ["model=dit-tiny", "device=cpu", "metric.latency_pairs=0", *a.overrides]
    cfg = compose(base, config_name="search")
    start = time.perf_counter()
    rows, points = [], {}
    for seed in a.seeds:
        seed_rows, points[seed], runs = one_seed(base, seed)
        rows += seed_rows
        if a.png and seed == a.seeds[0]:
            save_png(a.png, [runs[True][f"ddpm-{cfg['steps']}"].grid, runs[False]["ddpm-25"].grid,
                             runs[True]["ddpm-25"].grid])
    result = {"model": cfg["model"]["name"], "sampler": cfg["sampler"]["name"], "steps": cfg["steps"],
              "metric": rows[0]["metric"], "n_samples": cfg["metric"]["n_samples"],
              "bootstrap": cfg["metric"]["bootstrap"], "threads": 1, "seeds": a.seeds, "overrides": a.overrides,
              "wall_s": round(time.perf_counter() - start, 1),
              "summary": summary(rows), "pairs": rows, "points": points}
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    for r in result["summary"]:
        print(r)


if __name__ == "__main__":
    main()
