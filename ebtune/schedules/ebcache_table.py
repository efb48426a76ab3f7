"""The EB-Cache authors' released 50-step table, reconstructed from its published description.

The design card (shared/design/ebcache.md §2) describes it: the first 22 steps computed in full,
then compute/reuse alternating, with runs of up to 3 reuses near the end, the last step computed;
34 full steps of 50 (≈1.47× ideal). Reuse steps reuse both branches: that is what makes 34 full
steps worth 1.47×. The exact positions of the late runs are ours (the table itself is unlicensed).
At other step counts each step takes the state of the 50-step table at the nearest normalised time.
"""
from __future__ import annotations

from ..schedule import Schedule
from .context import ScheduleContext

FULL_STEPS_50 = frozenset(range(22)) | {22, 24, 26, 28, 30, 32, 34, 36, 38, 41, 45, 49}


def ebcache_table(ctx: ScheduleContext) -> Schedule:
    source = [i in FULL_STEPS_50 for i in range(50)]
    if ctx.steps == 50:
        flags = source
    else:
        # Normalised time of step i in the 50-step table is 1 - i/49 (linear up to respacing rounding).
        flags = [source[round((1.0 - t) * 49)] for t in ctx.times]
        flags[0] = True
    return Schedule.from_step_masks(flags, flags, ctx.depth, name="ebcache-table")
