"""Schedule families: name → function(ctx, **params) → Schedule.

A new family is one module with one function, plus one line in `SCHEDULES`.
"""
from __future__ import annotations

from typing import Any, Callable

from ..schedule import Schedule, no_cache
from .block_groups import block_groups, group_bounds
from .calibrated import CalibrationProbe, ebcache_calibrated
from .context import ScheduleContext, interval_pattern
from .ebcache_table import ebcache_table
from .fora import fora
from .intervals import intervals


def _none(ctx: ScheduleContext) -> Schedule:
    return no_cache(ctx.steps, ctx.depth)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "none": _none,
    "fora": fora,
    "intervals": intervals,
    "ebcache-table": ebcache_table,
    "ebcache-calibrated": ebcache_calibrated,
    "block-groups": block_groups,
}


def make_schedule(name: str, ctx: ScheduleContext, **params: Any) -> Schedule:
    """Build family `name`; unknown names and parameters are one-line errors."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[name](ctx, **params)
    except TypeError as e:
        raise ValueError(f"schedule={name}: {e}; check the parameter names") from None


__all__ = [
    "SCHEDULES", "CalibrationProbe", "ScheduleContext", "block_groups", "ebcache_calibrated", "ebcache_table",
    "fora", "group_bounds", "interval_pattern", "intervals", "make_schedule",
]
