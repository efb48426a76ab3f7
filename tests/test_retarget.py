from __future__ import annotations

import random

import pytest

from ebtune.core.eps_scale import EBCacheScale
from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import make_sampler, step_times
from ebtune.schedules.retarget import retarget_depth, retarget_steps

T = {k: make_sampler("ddim", k).times for k in (10, 25, 50, 100)}


def ebcache_table(depth: int = 4) -> Schedule:
    """Shaped like the authors' 50-step table: 22 full steps, alternating, runs of 3 reuses late, last full."""
    attn = [True] * 22 + [False, True] * 9 + [False, False, False, True] * 2 + [False, True]
    mlp = [True] * 22 + [True, False] * 9 + [True] * 10
    assert len(attn) == 50 and attn[-1]
    return Schedule.from_step_masks(attn, mlp, depth, eps_scale=EBCacheScale().factors(T[50]), name="eb")


def fora(interval: int, steps: int = 50, depth: int = 4) -> Schedule:
    pattern = [i % interval == 0 for i in range(steps)]
    return Schedule.from_step_masks(pattern, pattern, depth, name=f"fora{interval}")


def random_schedule(seed: int, steps: int = 50, depth: int = 6) -> Schedule:
    rng = random.Random(seed)
    warm = rng.randint(1, 15)
    rows = {b: [[True] * depth if i < warm else [rng.random() < 0.5 for _ in range(depth)] for i in range(steps)]
            for b in ("attn", "mlp")}
    return Schedule(rows["attn"], rows["mlp"], name=f"random{seed}")


def reused_steps(schedule: Schedule, branch: str) -> float:
    """Reused (step, block) slots in units of steps (averaged over blocks)."""
    return (1 - schedule.compute_fraction(branch)) * schedule.steps


CASES = [ebcache_table(), fora(2), fora(3), *(random_schedule(s) for s in range(12))]


@pytest.mark.parametrize("source", CASES, ids=lambda s: s.name)
def test_50_to_25_keeps_the_cached_fraction_within_one_step(source):
    target, notes = retarget_steps(source, 25, T[50], T[25])
    assert (target.steps, target.depth) == (25, source.depth)
    for branch in ("attn", "mlp"):
        # one target step's worth of the cached fraction is 1/25
        assert abs(reused_steps(target, branch) / 25 - reused_steps(source, branch) / 50) <= 1 / 25
    assert any("warm-up" in n for n in notes)


def test_warm_up_and_cool_down_keep_their_proportions():
    target, notes = retarget_steps(ebcache_table(), 25, T[50], T[25])
    full = [all(a) and all(m) for a, m in zip(target.attn, target.mlp)]
    assert full[:11] == [True] * 11 and not full[11]
    assert full[-1] and not full[-2]
    assert "warm-up 22 -> 11 full steps, cool-down 1 -> 1" in notes[1]
    up, _ = retarget_steps(ebcache_table(), 100, T[50], T[100])
    up_full = [all(a) and all(m) for a, m in zip(up.attn, up.mlp)]
    assert up_full[:44] == [True] * 44 and not up_full[44] and up_full[-2:] == [True, True]


def test_reuses_stay_in_their_stage():
    """Attention reused only late (t < 0.4), MLP only early: the split survives 50 -> 25 and 50 -> 100."""
    t = T[50]
    attn = [i < 2 or t[i] >= 0.4 or i % 2 == 0 for i in range(50)]
    mlp = [i < 2 or t[i] < 0.4 or i % 2 == 0 for i in range(50)]
    source = Schedule.from_step_masks(attn, mlp, 2)
    for k in (25, 100):
        target, _ = retarget_steps(source, k, T[50], T[k])
        cell = 1 / (k - 1)  # one target step of normalised time
        assert all(a[0] or T[k][i] < 0.4 + cell for i, a in enumerate(target.attn))
        assert all(m[0] or T[k][i] >= 0.4 - cell for i, m in enumerate(target.mlp))


def test_same_steps_and_times_is_exact():
    source = random_schedule(3)
    assert retarget_steps(source, 50, T[50], T[50]) == (source, [])
    again, _ = retarget_steps(source, 50, T[50], T[50], EBCacheScale())
    assert (again.attn, again.mlp) == (source.attn, source.mlp)


def test_eps_factors_from_the_form_or_interpolated():
    rule = EBCacheScale()
    exact, notes = retarget_steps(ebcache_table(), 25, T[50], T[25], rule)
    assert exact.eps_scale == rule.factors(T[25]) and "re-evaluated" in notes[0]
    approx, notes = retarget_steps(ebcache_table(), 25, T[50], T[25])
    assert "interpolated" in notes[0]
    assert max(abs(a - b) for a, b in zip(approx.eps_scale, exact.eps_scale)) < 1e-3
    assert approx.eps_scale != exact.eps_scale


def test_one_target_step_or_no_room_gives_all_compute():
    target, notes = retarget_steps(fora(2), 1, T[50], [1.0])
    assert target.full_steps == 1 and "nothing is reused" in notes[-1]


@pytest.mark.parametrize("args, words", [
    ((0, T[50], T[25]), "steps must be at least 1"),
    ((25, T[25], T[25]), "times_from has 25 entries for 50 steps"),
    ((25, T[50], T[25][::-1]), "strictly decreasing"),
])
def test_retarget_steps_rejects_bad_arguments(args, words):
    with pytest.raises(ValueError, match=words):
        retarget_steps(fora(2), *args)


def grouped(depth: int, groups: list[list[bool]]) -> Schedule:
    """Blocks split into len(groups) equal groups; groups[g][i] = group g computes at step i."""
    size = depth // len(groups)
    rows = [tuple(groups[b // size][i] for b in range(depth)) for i in range(len(groups[0]))]
    return Schedule(rows, rows, name="grouped")


def test_retarget_depth_maps_block_groups_proportionally():
    pattern = [[True, False, True, False], [True, True, False, False]]
    source = grouped(8, pattern)
    down, notes = retarget_depth(source, 2)
    assert down == grouped(2, pattern) and notes == []
    up, notes = retarget_depth(source, 16)
    assert up == grouped(16, pattern) and notes == []
    assert retarget_depth(fora(2, depth=28), 6)[0] == fora(2, depth=6)


def test_retarget_depth_reports_mixed_groups_and_ties_compute():
    rows = [(True, True, True), (False, True, False), (True, False, False)]
    source = Schedule(rows, rows)
    target, notes = retarget_depth(source, 2)
    # block 0 covers source block 0 and half of 1, block 1 the other half of 1 and block 2
    assert target.attn == ((True, True), (False, False), (True, False))
    assert len(notes) == 1 and "6 of 12 (step, block, branch) slots" in notes[0]
    tie = Schedule([(True, True), (False, True)], [(True, True), (True, False)])
    assert retarget_depth(tie, 1)[0] == Schedule([(True,), (True,)], [(True,), (True,)])
    with pytest.raises(ValueError, match="depth must be at least 1"):
        retarget_depth(source, 0)


@pytest.mark.parametrize("source", CASES, ids=lambda s: s.name)
@pytest.mark.parametrize("steps", [10, 25, 37])
def test_retargeting_never_lengthens_reuse_runs(source, steps):
    target, _ = retarget_steps(source, steps, T[50], step_times(steps))

    def longest(schedule, branch, b):
        best = run = 0
        for row in schedule.mask(branch):
            run = 0 if row[b] else run + 1
            best = max(best, run)
        return best

    for branch in ("attn", "mlp"):
        for b in range(source.depth):
            assert longest(target, branch, b) <= longest(source, branch, b)
