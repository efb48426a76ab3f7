"""FORA (Selvaraju et al. 2024): recompute every branch every N steps, reuse in between."""
from __future__ import annotations

from ebtune.core.schedule import Schedule
from ebtune.schedules.context import ScheduleContext, interval_pattern


def fora(ctx: ScheduleContext, interval: int = 2) -> Schedule:
    """Both branches of all blocks computed at steps 0, N, 2N, ...; FORA(1) is no cache."""
    flags = interval_pattern([interval] * ctx.steps)
    return Schedule.from_step_masks(flags, flags, ctx.depth, name=f"fora{interval}", params=(("interval", interval),))
