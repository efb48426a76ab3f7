"""`ebtune` command line: argparse picks the sub-command, Hydra composes the `key=value` overrides.

Each sub-command is one module here with `add_parser(subparsers)` and `run(args) -> int`, listed in
`COMMANDS`. One convention for every command: run settings are `key=value` overrides; flags are only
for the CLI itself (`--dry-run`, `--port`, `--host`, `--help`) and Hydra's own (`--cfg`, `--info`,
`--config-dir`, `-m` on the commands that compose `conf/`, see `config.add_hydra_flags`). Exit
codes: 0 success, 2 bad input or configuration (`ConfigError`, one line on stderr), 130
interrupted; any other exception is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ebtune.cli import (
    bench,
    confirm,
    diagnose,
    export,
    fid_weights,
    sample,
    search,
    sync,
    train_default,
    ui,
)
from ebtune.errors import ConfigError

# The sub-command modules, in the order `ebtune --help` lists them.
COMMANDS = [search, confirm, sample, diagnose, export, sync, ui, train_default, fid_weights, bench]

UsageError = ConfigError  # the name sub-commands used before ConfigError was shared


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(
        prog="ebtune", description="Find, prove and apply feature-caching schedules for Diffusion Transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    args, rest = parser.parse_known_args(argv)
    unknown_flags = [r for r in rest if r.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    args.overrides = rest
    try:
        if hasattr(args, "config_name"):  # a command that composes conf/: Hydra's flags
            from ebtune.cli.config import hydra_overrides, show

            args.overrides = hydra_overrides(args)
            if args.multirun and not args.sweeps:
                raise ConfigError(f"ebtune {args.command} does not sweep (-m): it writes one result per run; run it "
                                  "once per setting (ebtune search -m sweeps search settings)")
            if show(args):
                return 0
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError) as e:
        print(f"ebtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "ebtune":
            raise  # a broken install or a bug, not a missing optional package
        print(f"ebtune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
