"""Retarget a tuned schedule to another step count or another model depth.

Both functions return the new `Schedule` and a list of one-line notes saying what was approximated
(empty when the result is exact), for the CLI to print.

Steps. A schedule has three parts: warm-up (leading steps where every branch of every block is
computed), a middle with reuses, and cool-down (trailing full steps). Warm-up and cool-down keep
their share of the step count (rounded half up; at least one warm-up step, and at least one
cool-down step when the source had one). In the middle, each target step is placed at the source
position of its normalised time and covers a cell of source steps (cells tile the source middle).
Per (branch, block) the target gets N = round(R·K/S) reuses, R being the source's reuses, S and K
the step counts, so the cached fraction moves by at most half a step whenever the target middle
has room for N reuses. The reuses are placed where the source had them: target step j reuses
when the source's cumulative reuse share up to the end of its cell, scaled to N, rounds above the
reuses placed so far; a run longer than the source's longest run of that block is broken by a
compute, since a searched reuse cap is part of what made the source good. Same steps and times
give back the source exactly. Both keep everything else of the schedule (name, parameters, and
each branch's predictor: a forecast's coefficients follow the actual step distances, so a
retargeted interval forecasts with the same rule).

Depth. Target block b covers source blocks [b·D/D', (b+1)·D/D') (fractional overlaps weigh in
proportion); per step and branch it computes when the blocks it covers that compute weigh at
least half (ties compute: a spurious compute costs speed, a spurious reuse costs quality).
"""
from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from typing import Sequence

import numpy as np

from ebtune.core.eps_scale import EpsScale
from ebtune.core.schedule import BRANCHES, Mask, Schedule


def _round(x: float) -> int:
    """Round half up, so a rounding never depends on banker's parity."""
    return math.floor(x + 0.5)


def _check_times(times: Sequence[float], count: int, label: str) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.shape != (count,):
        raise ValueError(f"{label} has {t.size} entries for {count} steps; give one normalised time per step")
    if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)):
        raise ValueError(f"{label} must be finite and strictly decreasing (1 = first, noisiest step); use Sampler.times")
    return t


def _longest_run(column: Sequence[bool]) -> int:
    best = run = 0
    for computed in column:
        run = 0 if computed else run + 1
        best = max(best, run)
    return best


def _place_reuses(reused: Sequence[bool], cells: Sequence[tuple[float, float]], n: int, cap: int) -> list[bool]:
    """Target reuse flags for one (branch, block): n reuses following the source's reuse share.

    `reused[i]` is source middle step i (occupying [i, i+1)); `cells[j]` the source interval of
    target middle step j. A reuse is forced when the remaining steps are exactly the remaining
    reuses, so all n are placed even where a cell holds more than one reuse's worth, except that no
    run of reuses grows beyond `cap` (the source's longest): a reuse the cap defers is placed at the
    next step that allows it.
    """
    total = sum(reused)
    prefix = np.concatenate([[0.0], np.cumsum(reused, dtype=np.float64)])

    def cumulative(u: float) -> float:
        """Source reuses in [0, u), counting a partly covered step by the covered part."""
        i = min(int(u), len(reused) - 1)
        return float(prefix[i] + (u - i) * reused[i])

    out, placed, run = [], 0, 0
    for j, (_, hi) in enumerate(cells):
        goal = n * cumulative(hi) / total if total else 0.0
        reuse = placed < n and run < cap and (_round(goal) > placed or n - placed >= len(cells) - j)
        placed += reuse
        run = run + 1 if reuse else 0
        out.append(reuse)
    return out


def retarget_steps(
    schedule: Schedule,
    steps: int,
    times_from: Sequence[float],
    times_to: Sequence[float],
    eps_scale: EpsScale | None = None,
) -> tuple[Schedule, list[str]]:
    """Map `schedule` onto `steps` sampling steps (see the module docstring for the rule).

    Args:
        schedule: the source schedule (S steps).
        steps: the target step count K.
        times_from: normalised time of each source step (S values, strictly decreasing, e.g. `Sampler.times`).
        times_to: normalised time of each target step (K values).
        eps_scale: the parametric rule the ε factors came from; the target factors are then
            `eps_scale.factors(times_to)`. Without it the source factors are interpolated linearly
            in normalised time (held constant beyond the source's first and last step).

    Returns:
        (the K-step schedule with the same depth, name and predictors, notes on what was approximated).

    Raises:
        ValueError: steps < 1, or times of the wrong length or not strictly decreasing.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    S, K = schedule.steps, steps
    t_from = _check_times(times_from, S, "times_from")
    t_to = _check_times(times_to, K, "times_to")
    if K == S and np.array_equal(t_from, t_to) and eps_scale is None:
        return schedule, []

    notes = []
    if eps_scale is not None:
        eps = eps_scale.factors(t_to)
        notes.append(f"eps factors re-evaluated from {eps_scale!r} at the {K} new times")
    else:
        eps = tuple(float(v) for v in np.interp(t_to, t_from[::-1], np.asarray(schedule.eps_scale)[::-1]))
        if len(set(schedule.eps_scale)) > 1:
            notes.append("eps factors interpolated linearly in normalised time (no parametric form given)")

    full = [all(a) and all(m) for a, m in zip(schedule.attn, schedule.mlp)]
    W = next((i for i, f in enumerate(full) if not f), S)
    C = next((i for i, f in enumerate(reversed(full)) if not f), S)
    depth = schedule.depth
    all_compute = replace(schedule, attn=[(True,) * depth] * K, mlp=[(True,) * depth] * K, eps_scale=eps)
    if W == S:
        return all_compute, notes
    W2 = max(1, _round(W * K / S))
    C2 = max(1, _round(C * K / S)) if C else 0
    notes.append(f"steps {S} -> {K}: warm-up {W} -> {W2} full steps, cool-down {C} -> {C2}")
    if W2 + C2 >= K:
        notes.append(f"warm-up and cool-down fill all {K} steps, so nothing is reused")
        return all_compute, notes

    # Source position of each target middle step, through normalised time; +0.5 = centre of the cell.
    lo_src, hi_src = W, S - C
    centres = np.interp(t_to[W2:K - C2], t_from[::-1], np.arange(S, dtype=np.float64)[::-1]) + 0.5
    bounds = np.concatenate([[lo_src], (centres[:-1] + centres[1:]) / 2, [hi_src]])
    bounds = np.maximum.accumulate(np.clip(bounds, lo_src, hi_src)) - lo_src
    cells = list(zip(bounds[:-1], bounds[1:]))

    masks: dict[str, Mask] = {}
    for branch in BRANCHES:
        source = schedule.mask(branch)
        middle = []  # per block, the target middle's reuse flags
        for b in range(depth):
            reused = [not source[i][b] for i in range(lo_src, hi_src)]
            n = min(_round(sum(reused) * K / S), len(cells))
            middle.append(_place_reuses(reused, cells, n, cap=_longest_run([source[i][b] for i in range(S)])))
        rows = tuple(
            tuple(not (W2 <= i < K - C2 and middle[b][i - W2]) for b in range(depth)) for i in range(K)
        )
        masks[branch] = rows
        before = 1 - schedule.compute_fraction(branch)
        after = 1 - sum(map(sum, rows)) / (K * depth)
        runs = max(_longest_run([r[b] for r in source]) for b in range(depth))
        runs2 = max(_longest_run([r[b] for r in rows]) for b in range(depth))
        notes.append(
            f"{branch}: reused share {before:.1%} -> {after:.1%}, reuses re-placed by their density in "
            f"normalised time (longest reuse run {runs} -> {runs2})"
        )
    return replace(schedule, attn=masks["attn"], mlp=masks["mlp"], eps_scale=eps), notes


def retarget_depth(schedule: Schedule, depth: int) -> tuple[Schedule, list[str]]:
    """Map `schedule`'s blocks proportionally onto a model with `depth` blocks.

    Returns:
        (the schedule with `depth` blocks, same steps, ε factors, name and predictors; notes, empty when no
        target block covered source blocks that disagreed).

    Raises:
        ValueError: depth < 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    D = schedule.depth
    if depth == D:
        return schedule, []
    # Overlap weight of source block s in target block b, in exact fractions so ties are exact.
    cover = []
    for b in range(depth):
        lo, hi = Fraction(b * D, depth), Fraction((b + 1) * D, depth)
        cover.append([(s, min(hi, s + 1) - max(lo, s)) for s in range(math.floor(lo), math.ceil(hi))])
    masks: dict[str, Mask] = {}
    mixed = 0
    for branch in BRANCHES:
        rows = []
        for row in schedule.mask(branch):
            out = []
            for group in cover:
                computed = sum(w for s, w in group if row[s])
                mixed += 0 < computed < sum(w for _, w in group)
                out.append(2 * computed >= sum(w for _, w in group))
            rows.append(tuple(out))
        masks[branch] = tuple(rows)
    notes = []
    if mixed:
        notes.append(
            f"depth {D} -> {depth}: {mixed} of {2 * schedule.steps * depth} (step, block, branch) slots cover source "
            "blocks that disagree; they compute when the computing blocks weigh at least half"
        )
    return replace(schedule, attn=masks["attn"], mlp=masks["mlp"]), notes
