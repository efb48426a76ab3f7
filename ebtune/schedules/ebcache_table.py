"""The EB-Cache authors' released 50-step table, reconstructed from its published description.

The design card (shared/design/ebcache.md §2) describes it: the first 22 steps computed in full,
then compute/reuse alternating, with runs of up to 3 reuses near the end, the last step computed;
34 full steps of 50 (≈1.47× ideal). Reuse steps reuse both branches: that is what makes 34 full
steps worth 1.47×. The exact positions of the late runs are ours (the table itself is unlicensed).
At other step counts the table is retargeted through normalised time (`ebtune.retarget`).
"""
from __future__ import annotations

from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import step_times
from ebtune.schedules.context import ScheduleContext
from ebtune.schedules.retarget import retarget_steps

FULL_STEPS_50 = frozenset(range(22)) | {22, 24, 26, 28, 30, 32, 34, 36, 38, 41, 45, 49}


def ebcache_table(ctx: ScheduleContext) -> Schedule:
    flags = [i in FULL_STEPS_50 for i in range(50)]
    table = Schedule.from_step_masks(flags, flags, ctx.depth, name="ebcache-table")
    if ctx.steps == 50:
        return table
    return retarget_steps(table, ctx.steps, step_times(50), ctx.times)[0]
