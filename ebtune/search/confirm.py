"""Confirm a search's front with more images: re-score the front and the baselines on one larger set.

A search ranks schedules on a cheap proxy (a few hundred images); a quality metric from few images
is noisy (FID's is), so the field's practice is to confirm the final Pareto set at a larger size. This re-evaluates every
front point and every baseline with `n_samples` images under the search's own settings (model,
sampler, steps, guidance, seed, class-balanced labels) and reports which front points still
dominate which baselines. The front and the baselines are read from the study, and the result is
recorded there, whether `ebtune search` (search.confirm_n) or `ebtune confirm` ran it.
"""
from __future__ import annotations

from typing import Any, Callable

from ebtune.errors import ConfigError
from ebtune.io.atomic import write_json
from ebtune.io.schedule_file import load_schedule_file
from ebtune.run.factory import resolve_device
from ebtune.search.baseline_cache import BaselineCache
from ebtune.search.baselines import NO_CACHE
from ebtune.search.evaluator import Evaluator, Reference
from ebtune.search.pareto import DOMINATES, relation, std_key
from ebtune.search.records import LEGACY_QUALITY, QUALITY_DRAWS, scored, shown
from ebtune.search.views import Views


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


def as_stored(metrics: dict[str, float], name: str, key: str) -> dict[str, float]:
    """`metrics` with the quality metric `name` (and its error) under `key`, the key the search's records
    keep it under: the same name, or "fid" in a study written before metrics had names of their own.

    Raises:
        ConfigError: the search was scored by another quality metric.
    """
    if name == key:
        return metrics
    if key != LEGACY_QUALITY:
        raise ConfigError(f"the search was scored by {key!r} and this confirmation by {name!r}; confirm with "
                          f"the search's model.fid")
    moved = {name: key, std_key(name): std_key(key)}
    return {moved.get(k, k): v for k, v in metrics.items()}


def confirm(views: Views, cfg: dict[str, Any], log: Callable[[str], None] = print,
            only: set[str] | None = None, cache: BaselineCache | None = None) -> dict[str, Any]:
    """Re-score the front and the baselines of the search `views` shows, read from its study, under
    the resolved search config `cfg` (its `metric.n_samples` images from its seed; see
    `search_overrides`), or only the points and baselines named in `only` (no cache, the reference,
    always); writes `confirmed.json` in the search folder and returns it. A baseline's evaluation
    is taken from `cache` when a confirmation with the same settings stored it (`reused` lists those). Record it in
    the study with `views.record_confirmation`. The quality metric is stored under the key the study
    keeps it under (`as_stored`). `relations` judge each front point against each
    baseline with paired inference and the search's margin (`pareto.relation`); `dominates` lists
    the baselines each point dominates.

    Raises:
        ConfigError: n_samples < 1, or the search has no front yet.
    """
    n_samples = int(cfg["metric"]["n_samples"])
    if n_samples < 1:
        raise ConfigError(f"n must be at least 1, got {n_samples}")
    points = [p for p in views.front() if only is None or p["name"] in only]
    if not points:
        raise ConfigError(f"the search in {views.folder} has no front yet; run `ebtune search` on it first")
    evaluator, q = Evaluator(cfg, resolve_device(cfg["device"])), views.quality
    baselines = [b for b in views.current_baselines() if only is None or b["name"] in only or b["name"] == NO_CACHE]
    entries = sorted(baselines, key=lambda b: b["name"] != NO_CACHE)  # no cache first: the reference
    rows, reference, reused = [], None, []
    for entry in entries + points:
        file = load_schedule_file(views.folder / entry["schedule_file"])
        sampler = evaluator.sampler_at(file.schedule.steps, file.sampler["name"])  # the one it was searched with
        key, outcome = cache.find(evaluator, file.schedule, sampler) if cache and "number" not in entry else ("", None)
        if outcome is not None:
            reused.append(entry["name"])
        else:
            outcome = evaluator.evaluate(file.schedule, reference, sampler)
            if key:
                cache.store(key, outcome)
        if entry["name"] == NO_CACHE:
            reference = Reference(outcome.latents, outcome.metrics["latency_s"])
        searched = entry.get("search_metrics", entry["metrics"])
        m = as_stored(outcome.metrics, evaluator.metric.name, q)
        rows.append({"name": entry["name"], "trial": entry.get("number"), "metrics": m,
                     "search_metrics": searched, QUALITY_DRAWS: list(outcome.quality_draws)})
        log(f"confirm {entry['name']:>18}: {q} {m[q]:.4g} ± {m[std_key(q)]:.2g} (search {searched[q]:.4g})  "
            f"speedup {m['speedup']:.2f}x" + ("  (reused: an earlier confirmation's evaluation)"
                                              if entry["name"] in reused else ""))
    objectives, margin = views.objectives, views.record.margin
    baselines = [r for r in rows if r["trial"] is None]
    relations = {r["name"]: {b["name"]: relation(scored(r, q), scored(b, q), objectives, margin) for b in baselines}
                 for r in rows if r["trial"] is not None}
    dominated = {name: [b for b, rel in rels.items() if rel == DOMINATES] for name, rels in relations.items()}
    result = {"n_samples": n_samples, "seed": int(cfg["seed"]), "evaluator": evaluator.spec.fid, "quality": q,
              "objectives": objectives, "margin": margin, "rows": rows, "dominates": dominated, "relations": relations,
              "reused": reused}
    write_json(views.folder / "confirmed.json", {**result, "rows": [shown(r) for r in rows]})
    return result
