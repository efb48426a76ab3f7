"""`ebtune bench`: latency, efficiency and peak memory of cache schedules (torch only)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ebtune.bench.command import HELP

    p = sub.add_parser("bench", help="time sampling under cache schedules against no cache", description=HELP)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ebtune.bench.command import main

    return main(args.overrides)
