"""`ebtune` command line: argparse picks the sub-command, Hydra composes the `key=value` overrides.

Each sub-command lives in its own module exposing `add_parser(subparsers)` and `run(args) -> int`.
Exit codes: 0 success, 1 runtime failure, 2 bad input (with a one-line message on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# Sub-command modules, in the order `ebtune --help` lists them.
COMMANDS = ["cli_search", "cli_confirm", "cli_sample", "cli_export", "cli_ui", "cli_train_default", "cli_fid_weights"]


class UsageError(ValueError):
    """Bad input the user can fix; printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = argparse.ArgumentParser(
        prog="ebtune", description="Find, prove and apply feature-caching schedules for Diffusion Transformers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ebtune.{name}").add_parser(sub)
    args, rest = parser.parse_known_args(argv)
    unknown_flags = [r for r in rest if r.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    args.overrides = rest
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        print(f"ebtune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
