"""`ebtune confirm`: re-score a search's front and baselines with more images."""
from __future__ import annotations

import argparse

from ebtune.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("confirm", help="re-score a search's Pareto front and baselines with more images",
                       description="Re-evaluate every front point and baseline of a search folder with n=N images "
                       "(default 1000; same model, sampler and labels as the search, on fresh seeds unless seed=S is "
                       "given) and write confirmed.json there.")
    p.add_argument("folder", help="a folder written by `ebtune search`")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ebtune.cli.config import compose
    from ebtune.run.overrides import settings
    from ebtune.search.confirm import confirm, search_overrides, search_settings

    given = settings("confirm", args.overrides, {"n": int, "seed": int})
    n = given.get("n", 1000)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if not (Path(args.folder) / "pareto.json").is_file():
        raise FileNotFoundError(f"no pareto.json in {args.folder}; pass a folder written by `ebtune search`")
    cfg = compose(search_overrides(search_settings(Path(args.folder)), n, given.get("seed")), config_name="search")
    result = confirm(args.folder, cfg)
    for trial, beaten in result["dominates"].items():
        print(f"{trial} with {result['n_samples']} images dominates: {', '.join(beaten) or 'no baseline'}")
    print(f"written: {args.folder}/confirmed.json")
    return 0
