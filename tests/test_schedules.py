"""Each schedule family produces its documented pattern."""
from __future__ import annotations

import pytest
import torch

from ebtune import make_sampler
from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import Guidance
from ebtune.schedules import CalibrationProbe, ScheduleContext, make_schedule

from .conftest import SMALL


def steps_computed(mask):
    return [i for i, row in enumerate(mask) if all(row)]


def ctx(steps=50, depth=4):
    return ScheduleContext.linear(steps, depth)


def test_fora_computes_every_nth_step():
    s = make_schedule("fora", ctx(10), interval=3)
    assert steps_computed(s.attn) == steps_computed(s.mlp) == [0, 3, 6, 9]
    assert make_schedule("fora", ctx(10), interval=1).full_steps == 10


def test_ebcache_table_has_34_full_steps_of_50():
    s = make_schedule("ebcache-table", ctx(50))
    full = steps_computed(s.attn)
    assert s.full_steps == 34 and full[:22] == list(range(22)) and full[-1] == 49
    reuse_runs, run = [], 0
    for i in range(50):
        run = 0 if i in full else run + 1
        reuse_runs.append(run)
    assert max(reuse_runs) == 3 and max(reuse_runs[:40]) == 1  # alternating, runs of 3 only near the end


def test_ebcache_table_other_step_count_keeps_its_share():
    s = make_schedule("ebcache-table", ctx(100))
    assert abs(s.full_steps / 100 - 34 / 50) <= 0.03 and all(s.attn[0])


def test_intervals_per_stage_warmup_cooldown():
    c = ctx(20)  # times 1 .. 0; t < 0.4 from step 12 on
    s = make_schedule("intervals", c, attn=1, mlp=3, attn_late=2, mlp_late=1, warmup=2, cooldown=1)
    attn = [row[0] for row in s.attn]
    mlp = [row[0] for row in s.mlp]
    assert all(attn[:12]) and all(mlp[12:])  # early: attention always; late: MLP always
    assert mlp[:12] == [True, True, False, False, True, False, False, True, False, False, True, False]
    assert attn[12:] == [False, True, False, True, False, True, False, True]  # cool-down computes the last step


def test_max_reuse_caps_runs():
    s = make_schedule("intervals", ctx(12), attn=5, mlp=5, max_reuse=2)
    assert steps_computed(s.attn) == [0, 3, 6, 9]


def test_block_groups_pattern():
    s = make_schedule("block-groups", ctx(6, depth=6), attn=[1, 2, 3], mlp=[1, 1, 2])
    assert s.attn[1] == (True, True, False, False, False, False)
    assert s.attn[2] == (True, True, True, True, False, False)
    assert s.attn[3] == (True, True, False, False, True, True)
    assert s.mlp[1] == (True, True, True, True, False, False)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("fora", {"interval": 0}, "at least 1"),
        ("intervals", {"warmup": 40, "cooldown": 20}, "exceed"),
        ("block-groups", {"attn": [1, 2], "mlp": [1]}, "one attn and one mlp"),
        ("fora", {"intervall": 2}, "check the parameter names"),
        ("nope", {}, "unknown schedule 'nope'; choose one of"),
    ],
)
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(name, ctx(50), **params)


def test_schedule_validation():
    with pytest.raises(ValueError, match="step 0 must compute"):
        Schedule(attn=[[False]], mlp=[[True]])
    with pytest.raises(ValueError, match="ragged"):
        Schedule(attn=[[True, True], [True]], mlp=[[True, True], [True, True]])
    with pytest.raises(ValueError, match="eps_scale has 1 entries for 2 steps"):
        Schedule(attn=[[True]] * 2, mlp=[[True]] * 2, eps_scale=[1.0])


def _probe(model, steps):
    sampler = make_sampler("ddim", steps, Guidance(2.0, SMALL.num_classes))
    return CalibrationProbe(model, sampler, torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3]))


def test_calibration_thresholds_and_stage_rule(small_dit):
    steps = 10
    sampler_ctx = ScheduleContext(steps, SMALL.depth, make_sampler("ddim", steps).times)
    tight = make_schedule("ebcache-calibrated", sampler_ctx, probe=_probe(small_dit, steps), a=0.0, c=-1.0)
    assert tight.full_steps == steps  # nothing is within a negative threshold
    loose = make_schedule("ebcache-calibrated", sampler_ctx, probe=_probe(small_dit, steps), a=0.0, c=1e9)
    assert loose.full_steps == 1 and not any(any(r) for r in loose.attn[1:] + loose.mlp[1:])
    mid = make_schedule("ebcache-calibrated", sampler_ctx, probe=_probe(small_dit, steps), a=0.05, c=0.01)
    for i, t in enumerate(sampler_ctx.times):
        attn, mlp = mid.attn[i][0], mid.mlp[i][0]
        if t >= 0.4:
            assert attn or not mlp  # early: attention reused only together with the MLP
        else:
            assert mlp or not attn
    assert "attn_branch" not in vars(small_dit.blocks[0])  # calibration detaches its cache
