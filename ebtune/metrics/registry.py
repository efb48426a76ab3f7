"""Quality metrics by registry name (`model.fid=`): a new metric is one module plus one line here.

The registry name is what a user sets (`model.fid=inception`); the metric's own `name` is the key
its values are reported under ("fid" for `inception`, the Fréchet Inception Distance, and for no
other). This module imports every metric module, so no metric module imports another's registry.
"""
from __future__ import annotations

from pathlib import Path

from ebtune.errors import ConfigError
from ebtune.metrics.base import MAXIMIZE, MINIMIZE, Metric
from ebtune.metrics.digits_native import DigitsNativeFD
from ebtune.metrics.fid import DigitsFD, InceptionFID
from ebtune.registry import Registry

METRICS: Registry[Metric] = Registry("quality metric (model.fid)")
METRICS.register("digits", DigitsFD)
METRICS.register("inception", InceptionFID)
METRICS.register("digits-native", DigitsNativeFD)


def metric_class(registry_name: str) -> type[Metric]:
    """The metric registered as `registry_name`, not built (its name and direction are class attributes).

    Raises:
        ConfigError: unknown name, or the registered factory does not declare a name and direction.
    """
    cls = METRICS.get(registry_name)
    if not isinstance(getattr(cls, "name", None), str) or getattr(cls, "direction", None) not in (MINIMIZE, MAXIMIZE):
        raise ConfigError(f"quality metric {registry_name!r} must declare a name and a direction "
                          f"({MINIMIZE!r} or {MAXIMIZE!r}); see ebtune.metrics.base.Metric")
    return cls  # type: ignore[return-value]


def quality_name(registry_name: str) -> str:
    """The key `model.fid=registry_name` reports its values under, e.g. "fid" for "inception"."""
    return metric_class(registry_name).name


def make_metric(registry_name: str, reference: str | Path | None = None, **kw) -> Metric:
    """The metric registered as `registry_name`, built with keyword arguments `kw` and, when given,
    the reference statistics `reference` (`model.fid_reference`).

    Raises:
        ConfigError: unknown name or parameter, or a reference for a metric that takes none.
    """
    cls = metric_class(registry_name)
    if reference is not None:
        if not cls.needs_reference:
            raise ConfigError(f"model.fid={registry_name} compares against no reference statistics; "
                              f"drop model.fid_reference={reference}")
        kw["reference_npz"] = reference
    return METRICS.make(registry_name, **kw)


def metric_directions() -> dict[str, str]:
    """Every registered metric's name → its direction.

    Raises:
        ConfigError: two registered metrics share a name but not a direction.
    """
    out: dict[str, str] = {}
    for registry_name in METRICS:
        cls = metric_class(registry_name)
        if out.setdefault(cls.name, cls.direction) != cls.direction:
            raise ConfigError(f"quality metrics named {cls.name!r} disagree on their direction; give one a name of its own")
    return out
