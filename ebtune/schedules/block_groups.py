"""Per-block-group intervals: G groups of consecutive blocks, each with its own attn/MLP interval."""
from __future__ import annotations

from typing import Sequence

from ebtune.core.schedule import Schedule
from ebtune.schedules.context import ScheduleContext, interval_pattern


def group_bounds(depth: int, groups: int) -> list[tuple[int, int]]:
    """[start, end) of each of `groups` near-equal runs of consecutive blocks."""
    if not 1 <= groups <= depth:
        raise ValueError(f"groups must be between 1 and the model depth {depth}, got {groups}")
    return [(g * depth // groups, (g + 1) * depth // groups) for g in range(groups)]


def block_groups(
    ctx: ScheduleContext,
    attn: Sequence[int] = (1, 2, 2, 3),
    mlp: Sequence[int] = (2, 2, 3, 3),
    warmup: int = 0,
    cooldown: int = 0,
    max_reuse: int | None = None,
) -> Schedule:
    """Group g (blocks in `group_bounds(depth, G)[g]`) uses intervals attn[g] and mlp[g]; G = len(attn)."""
    if len(attn) != len(mlp):
        raise ValueError(f"give one attn and one mlp interval per group (got {len(attn)} and {len(mlp)})")
    bounds = group_bounds(ctx.depth, len(attn))
    per_block_attn: list[list[bool]] = [[] for _ in range(ctx.steps)]
    per_block_mlp: list[list[bool]] = [[] for _ in range(ctx.steps)]
    for (start, end), a, m in zip(bounds, attn, mlp):
        a_flags = interval_pattern([a] * ctx.steps, warmup, cooldown, max_reuse)
        m_flags = interval_pattern([m] * ctx.steps, warmup, cooldown, max_reuse)
        for i in range(ctx.steps):
            per_block_attn[i].extend([a_flags[i]] * (end - start))
            per_block_mlp[i].extend([m_flags[i]] * (end - start))
    params = dict(attn=list(attn), mlp=list(mlp), warmup=warmup, cooldown=cooldown, max_reuse=max_reuse)
    return Schedule(per_block_attn, per_block_mlp, name="block-groups", params=tuple(params.items()))
