"""`ebtune confirm`: re-score a search's front and baselines with more images."""
from __future__ import annotations

import argparse

from ebtune.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("confirm", help="re-score a search's Pareto front and baselines with more images",
                       description="Re-evaluate every front point and baseline of a search folder with n=N images "
                       "(default 1000; same model, sampler and labels as the search, on fresh seeds unless seed=S is "
                       "given), record the result in the search's study (pareto.json, MLflow and `ebtune export` then use it) "
                       "and write confirmed.json there.")
    p.add_argument("folder", help="a folder written by `ebtune search`")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ebtune.cli.config import compose
    from ebtune.run.overrides import settings
    from ebtune.search.baseline_cache import BaselineCache
    from ebtune.search.confirm import confirm, search_overrides
    from ebtune.search.views import folder_views

    given = settings("confirm", args.overrides, {"n": int, "seed": int})
    n = given.get("n", 1000)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    views = folder_views(Path(args.folder))
    overrides = search_overrides(views.study.user_attrs["search"], n, given.get("seed"))
    if "quality_evaluator" in views.meta:  # the search's quality metric, when it was not the model's default
        overrides.append(f"model.fid={views.meta['quality_evaluator']}")
    cfg = compose(overrides, config_name="search")
    result = confirm(views, cfg, cache=BaselineCache.at(cfg["search"]["baseline_cache"]))
    views.record_confirmation(result)
    for trial, beaten in result["dominates"].items():
        print(f"{trial} with {result['n_samples']} images dominates: {', '.join(beaten) or 'no baseline'}")
    print(f"recorded in the study; written: {args.folder}/confirmed.json and pareto.json")
    return 0
