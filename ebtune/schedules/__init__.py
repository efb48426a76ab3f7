"""Schedule families: name → function(ctx, **params) → Schedule.

A new family is one module with one function `(ctx, **params) -> Schedule`, plus one
`SCHEDULES.register` line here.
"""
from __future__ import annotations

from typing import Any

from ebtune.core.schedule import Schedule, no_cache
from ebtune.registry import Registry
from ebtune.schedules.block_groups import block_groups, group_bounds
from ebtune.schedules.calibrated import CalibrationProbe, ebcache_calibrated
from ebtune.schedules.context import ScheduleContext, interval_pattern
from ebtune.schedules.ebcache_table import ebcache_table
from ebtune.schedules.fora import fora
from ebtune.schedules.forecast import forecast
from ebtune.schedules.intervals import intervals
from ebtune.schedules.taylor import taylor


def _none(ctx: ScheduleContext) -> Schedule:
    return no_cache(ctx.steps, ctx.depth)


SCHEDULES: Registry[Schedule] = Registry("schedule")
SCHEDULES.register("none", _none)
SCHEDULES.register("fora", fora)
SCHEDULES.register("intervals", intervals)
SCHEDULES.register("ebcache-table", ebcache_table)
SCHEDULES.register("ebcache-calibrated", ebcache_calibrated)
SCHEDULES.register("block-groups", block_groups)
SCHEDULES.register("taylor", taylor)
SCHEDULES.register("forecast", forecast)


def make_schedule(name: str, ctx: ScheduleContext, **params: Any) -> Schedule:
    """Build family `name` in `ctx`; unknown names and parameters are one-line errors."""
    return SCHEDULES.make(name, ctx, **params)


__all__ = [
    "SCHEDULES", "CalibrationProbe", "ScheduleContext", "block_groups", "ebcache_calibrated", "ebcache_table",
    "fora", "forecast", "group_bounds", "interval_pattern", "intervals", "make_schedule", "taylor",
]
