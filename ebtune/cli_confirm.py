"""`ebtune confirm`: re-score a search's front and baselines with more images."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("confirm", help="re-score a search's Pareto front and baselines with more images",
                       description="Re-evaluate every front point and baseline of a search folder with --n images "
                       "(same model, sampler, seed and labels as the search) and write confirmed.json there.")
    p.add_argument("folder", help="a folder written by `ebtune search`")
    p.add_argument("--n", type=int, default=1000, help="images per evaluation (default 1000)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .search.confirm import confirm

    if args.overrides:
        raise ValueError(f"ebtune confirm takes no overrides (got {' '.join(args.overrides)}); the search's settings are used")
    result = confirm(args.folder, args.n)
    for trial, beaten in result["dominates"].items():
        print(f"{trial} with {result['n_samples']} images dominates: {', '.join(beaten) or 'no baseline'}")
    print(f"written: {args.folder}/confirmed.json")
    return 0
