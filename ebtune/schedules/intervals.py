"""Separate attention and MLP intervals, per stage, with warm-up, cool-down and a reuse cap.

The EB-Cache paper's observation is that attention (low-frequency structure) is fragile early and
the MLP late, so each branch gets its own interval in the early (t ≥ boundary) and late stage.
"""
from __future__ import annotations

from ebtune.core.schedule import Schedule
from ebtune.schedules.context import ScheduleContext, interval_pattern


def intervals(
    ctx: ScheduleContext,
    attn: int = 2,
    mlp: int = 2,
    attn_late: int | None = None,
    mlp_late: int | None = None,
    boundary: float = 0.4,
    warmup: int = 0,
    cooldown: int = 0,
    max_reuse: int | None = None,
) -> Schedule:
    """All blocks share the pattern; `attn`/`mlp` apply while t ≥ boundary, `*_late` after.

    Args:
        attn, mlp: intervals in the early stage (1 = compute every step).
        attn_late, mlp_late: intervals in the late stage; default to the early ones.
        boundary: normalised time of the stage split (paper: 0.4).
        warmup, cooldown: full steps at the start and at the end.
        max_reuse: longest run of consecutive reuses of one branch.
    """
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must lie in [0, 1], got {boundary}")
    if warmup + cooldown > ctx.steps:
        raise ValueError(f"warmup {warmup} + cooldown {cooldown} exceed the {ctx.steps} steps; lower them")
    late = [t < boundary for t in ctx.times]
    attn_late = attn if attn_late is None else attn_late
    mlp_late = mlp if mlp_late is None else mlp_late
    attn_flags = interval_pattern([attn_late if l else attn for l in late], warmup, cooldown, max_reuse)
    mlp_flags = interval_pattern([mlp_late if l else mlp for l in late], warmup, cooldown, max_reuse)
    params = dict(attn=attn, mlp=mlp, attn_late=attn_late, mlp_late=mlp_late, boundary=boundary,
                  warmup=warmup, cooldown=cooldown, max_reuse=max_reuse)
    return Schedule.from_step_masks(attn_flags, mlp_flags, ctx.depth, name="intervals", params=tuple(params.items()))
