"""MAC accounting against the DiT paper and against torch's FLOP counter."""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ebtune import make_sampler
from ebtune.core.dit import dit_config
from ebtune.core.macs import forward_macs, ideal_speedup, sampling_macs
from ebtune.core.schedule import Schedule, no_cache
from ebtune.sampling.samplers import Guidance
from ebtune.schedules import ScheduleContext, fora

from .conftest import SMALL


def _measured_macs(fn) -> float:
    # The math SDPA backend decomposes into matmuls the counter sees (the fused CPU kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2  # the counter reports FLOPs = 2 x MACs


def test_dit_xl2_forward_is_118_6_gmacs():
    f = forward_macs(dit_config("DiT-XL/2", 256))
    assert round(f.total / 1e9, 1) == 118.6
    per_block = f.attn + f.mlp + f.adaln
    assert round(100 * f.attn / per_block, 1) == 35.6 and round(100 * f.mlp / per_block, 1) == 64.2


def test_forward_macs_match_flop_counter(small_dit):
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 50, 999]), torch.tensor([0, 1, 5])
    measured = _measured_macs(lambda: small_dit(x, t, y))
    assert abs(measured - 3 * forward_macs(SMALL).total) <= 0.01 * measured


def test_sampling_macs_count_only_computed_branches(small_dit):
    steps = 6
    sched = Schedule(
        attn=[[True] * 3, [False, True, False], [True] * 3, [False] * 3, [True, False, True], [False] * 3],
        mlp=[[True] * 3, [True] * 3, [False] * 3, [False, False, True], [True] * 3, [False] * 3],
    )
    sampler = make_sampler("ddim", steps, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([0, 3])
    measured = _measured_macs(lambda: sampler.sample(small_dit, noise, labels, sched))
    predicted = sampling_macs(SMALL, sched, batch=2, cfg=True)
    assert abs(measured - predicted) <= 0.01 * measured
    assert predicted < sampling_macs(SMALL, no_cache(steps, 3), batch=2, cfg=True)


def test_ideal_speedup():
    xl = dit_config("DiT-XL/2")
    assert ideal_speedup(xl, no_cache(50, 28)) == 1.0
    # FORA(2) computes half the steps; what is always computed (adaLN, embedders) keeps it below 2x.
    s = ideal_speedup(xl, fora(ScheduleContext.linear(50, 28), 2))
    assert 1.98 < s < 2.0
