"""Confirm a search's front with more images: re-score the front and the baselines on one larger set.

A search ranks schedules on a cheap proxy (a few hundred images); FID from few images is noisy, so
the field's practice is to confirm the final Pareto set at a larger size. This re-evaluates every
front point and every baseline with `n_samples` images under the search's own settings (model,
sampler, steps, guidance, seed, class-balanced labels) and reports which front points still
dominate which baselines.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ebtune.errors import ConfigError
from ebtune.io.schedule_file import load_schedule_file
from ebtune.run.factory import resolve_device
from ebtune.search.baselines import NO_CACHE
from ebtune.search.evaluator import Evaluator, Reference
from ebtune.search.pareto import NOISE_Z, relation, std_key


def search_settings(folder: Path) -> dict[str, Any]:
    """The settings the folder's study was started with (model, sampler, steps, metric, ...)."""
    from ebtune.search.study import load_folder_study

    return load_folder_study(folder).user_attrs["search"]


# Confirmation draws its noise from seed + CONFIRM_SEED_OFFSET: images no trial was ranked on.
CONFIRM_SEED_OFFSET = 1_000_003


def fresh_seed(seed: int) -> int:
    """The seed a confirmation of a search with `seed` uses by default."""
    return int(seed) + CONFIRM_SEED_OFFSET


def search_overrides(settings: dict[str, Any], n_samples: int, seed: int | None = None) -> list[str]:
    """`key=value` overrides that reproduce a search's evaluation settings with `n_samples` images
    drawn from `seed` (default: fresh seeds, `fresh_seed`)."""
    sampler = settings["sampler"]
    seed = fresh_seed(settings["seed"]) if seed is None else seed
    overrides = [f"model={settings['model']}", f"sampler={sampler['name']}", f"steps={settings['steps']}",
                 f"cfg_scale={settings['cfg_scale']}", f"seed={seed}", f"metric.n_samples={n_samples}",
                 f"device={'cpu' if settings['device'] == 'cpu' else 'auto'}"]
    overrides += [f"sampler.{k}={v}" for k, v in sampler.items() if k != "name"]
    overrides += [f"metric.{k}={v}" for k, v in settings["metric"].items() if k != "n_samples"]
    if settings.get("ckpt"):
        overrides.append(f"model.ckpt={settings['ckpt']}")
    return overrides


def confirm(folder: str | Path, cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-score the front and the baselines of `folder` under the resolved search config `cfg` (its
    `metric.n_samples` images from its seed; see `search_overrides`); writes `confirmed.json` there
    and returns it. `dominates` and `relations` judge each front point against each baseline beyond
    NOISE_Z standard errors of the quality metric.

    Raises:
        FileNotFoundError: not a search folder.
        ValueError: n_samples < 1.
    """
    folder = Path(folder)
    n_samples = int(cfg["metric"]["n_samples"])
    if n_samples < 1:
        raise ConfigError(f"n must be at least 1, got {n_samples}")
    if not (folder / "pareto.json").is_file():
        raise FileNotFoundError(f"no pareto.json in {folder}; pass a folder written by `ebtune search`")
    front = json.loads((folder / "pareto.json").read_text())
    evaluator = Evaluator(cfg, resolve_device(cfg["device"]))
    entries = sorted(front["baselines"], key=lambda b: b["name"] != NO_CACHE)  # no cache first: the reference
    entries += [{"name": f"trial-{p['number']:04d}", **p} for p in front["points"]]
    rows, reference = [], None
    for entry in entries:
        schedule = load_schedule_file(folder / entry["schedule_file"]).schedule
        outcome = evaluator.evaluate(schedule, reference, evaluator.sampler_at(schedule.steps))
        if entry["name"] == NO_CACHE:
            reference = Reference(outcome.latents, outcome.metrics["latency_s"])
        searched = entry.get("search_metrics", entry["metrics"])
        rows.append({"name": entry["name"], "trial": entry.get("number"), "metrics": outcome.metrics,
                     "search_metrics": searched})
        m = outcome.metrics
        log(f"confirm {entry['name']:>18}: fid {m['fid']:.4g} ± {m[std_key('fid')]:.2g} (search {searched['fid']:.4g})  "
            f"speedup {m['speedup']:.2f}x")
    objectives = front["objectives"]
    baselines = [r for r in rows if r["trial"] is None]
    relations = {r["name"]: {b["name"]: relation(r["metrics"], b["metrics"], objectives, NOISE_Z) for b in baselines}
                 for r in rows if r["trial"] is not None}
    dominated = {name: [b for b, rel in rels.items() if rel == "dominates"] for name, rels in relations.items()}
    result = {"n_samples": n_samples, "seed": int(cfg["seed"]), "evaluator": evaluator.fid.name, "objectives": objectives,
              "noise_z": NOISE_Z, "rows": rows, "dominates": dominated, "relations": relations}
    (folder / "confirmed.json").write_text(json.dumps(result, indent=2))
    return result
