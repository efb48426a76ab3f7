"""Where trials run: `local` (in this process, an ask/tell loop) or `ray` (Ray Tune workers).

Both launchers ask the same Optuna study for points, store each trial's metrics and constraint
violations on the Optuna trial before telling it, and hand every finished trial to the driver's
`Recorder` (MLflow, schedule files, front). A trial that raises, produces NaN or runs out of
memory is told FAIL with its error, and the search goes on. A new launcher is one module with a
`Launcher` subclass taking the `SearchConfig`, plus one `LAUNCHERS.register` line here.
"""
from __future__ import annotations

from ebtune.registry import Registry
from ebtune.search.config import SearchConfig
from ebtune.search.launchers.base import Launcher
from ebtune.search.launchers.local import LocalLauncher


def _ray(config: SearchConfig) -> Launcher:
    """Trials as Ray Tune trials with OptunaSearch; the cluster and each trial's resources are set under `ray:`."""
    from ebtune.search.launchers.ray import (
        RayLauncher,  # Ray is imported only when it is asked for
    )

    return RayLauncher(config)


LAUNCHERS: Registry[Launcher] = Registry("launcher")
LAUNCHERS.register("local", LocalLauncher)
LAUNCHERS.register("ray", _ray)

__all__ = ["LAUNCHERS", "Launcher", "LocalLauncher"]
