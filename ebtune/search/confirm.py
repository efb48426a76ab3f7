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

from ..build import resolve_device
from ..config import compose
from ..schedule_file import load_schedule_file
from .baselines import NO_CACHE
from .objective import Evaluator, Reference
from .pareto import dominates


def search_settings(folder: Path) -> dict[str, Any]:
    """The settings the folder's study was started with (model, sampler, steps, metric, ...)."""
    import optuna

    from .study import DB_NAME

    if not (folder / DB_NAME).is_file():
        raise FileNotFoundError(f"no {DB_NAME} in {folder}; pass a folder written by `ebtune search`")
    url = f"sqlite:///{(folder / DB_NAME).absolute().as_posix()}"
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url).user_attrs["search"]


def evaluator_for(settings: dict[str, Any], n_samples: int) -> Evaluator:
    sampler = settings["sampler"]
    overrides = [f"model={settings['model']}", f"sampler={sampler['name']}", f"steps={settings['steps']}",
                 f"cfg_scale={settings['cfg_scale']}", f"seed={settings['seed']}", f"metric.n_samples={n_samples}"]
    overrides += [f"sampler.{k}={v}" for k, v in sampler.items() if k != "name"]
    overrides += [f"metric.{k}={v}" for k, v in settings["metric"].items() if k != "n_samples"]
    if settings.get("ckpt"):
        overrides.append(f"model.ckpt={settings['ckpt']}")
    cfg = compose(overrides, config_name="search")
    return Evaluator(cfg, resolve_device("cpu" if settings["device"] == "cpu" else "auto"))


def confirm(folder: str | Path, n_samples: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-score the front and the baselines of `folder` with `n_samples` images; writes
    `confirmed.json` there and returns its contents.

    Raises:
        FileNotFoundError: not a search folder.
        ValueError: n_samples < 1.
    """
    folder = Path(folder)
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    if not (folder / "pareto.json").is_file():
        raise FileNotFoundError(f"no pareto.json in {folder}; pass a folder written by `ebtune search`")
    front = json.loads((folder / "pareto.json").read_text())
    evaluator = evaluator_for(search_settings(folder), n_samples)
    entries = sorted(front["baselines"], key=lambda b: b["name"] != NO_CACHE)  # no cache first: the reference
    entries += [{"name": f"trial-{p['number']:04d}", **p} for p in front["points"]]
    rows, reference = [], None
    for entry in entries:
        schedule = load_schedule_file(folder / entry["schedule_file"]).schedule
        outcome = evaluator.evaluate(schedule, reference, evaluator.sampler_at(schedule.steps))
        if entry["name"] == NO_CACHE:
            reference = Reference(outcome.latents, outcome.metrics["latency_s"])
        rows.append({"name": entry["name"], "trial": entry.get("number"), "metrics": outcome.metrics,
                     "search_metrics": entry["metrics"]})
        m = outcome.metrics
        log(f"{entry['name']:>16}: fid {m['fid']:.4g} (search {entry['metrics']['fid']:.4g})  speedup {m['speedup']:.2f}x")
    objectives = front["objectives"]
    baselines = [r for r in rows if r["trial"] is None]
    dominated = {r["name"]: [b["name"] for b in baselines if dominates(r["metrics"], b["metrics"], objectives)]
                 for r in rows if r["trial"] is not None}
    result = {"n_samples": n_samples, "evaluator": evaluator.fid.name, "objectives": objectives, "rows": rows,
              "dominates": dominated}
    (folder / "confirmed.json").write_text(json.dumps(result, indent=2))
    return result
