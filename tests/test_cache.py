"""The cache engine's contract: all-compute is exact, reuse skips work and uses the current gate,
unwrapping restores the model, and attach errors are loud."""
from __future__ import annotations

import pytest
import torch

from ebtune import cached, make_sampler, no_cache
from ebtune.cache.adapters import Adapter
from ebtune.core.dit import DiT, DiTConfig
from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import Guidance
from ebtune.schedules import ScheduleContext, fora

from .conftest import SMALL, randomised

STEPS = 8


def _run(model, sampler_name, cfg_scale, schedule, seed=0):
    sampler = make_sampler(sampler_name, STEPS, Guidance(cfg_scale, SMALL.num_classes, channels=3), **({"eta": 0.5} if sampler_name == "ddim" else {}))
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([0, 1, 2, 4])
    return sampler.sample(model, noise, labels, schedule, torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("sampler_name", ["ddpm", "ddim"])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_all_compute_schedule_is_bit_identical(small_dit, sampler_name, cfg_scale):
    plain = _run(small_dit, sampler_name, cfg_scale, None)
    full = _run(small_dit, sampler_name, cfg_scale, no_cache(STEPS, SMALL.depth))
    assert torch.equal(plain, full)
    reuse = _run(small_dit, sampler_name, cfg_scale, fora(ScheduleContext.linear(STEPS, SMALL.depth), 2))
    assert not torch.allclose(plain, reuse)  # the comparison above is not vacuous


def _count_branch_calls(model):
    counts = {"attn": 0, "mlp": 0}
    hooks = [b.attn.register_forward_hook(lambda *_: counts.__setitem__("attn", counts["attn"] + 1)) for b in model.blocks]
    hooks += [b.mlp.register_forward_hook(lambda *_: counts.__setitem__("mlp", counts["mlp"] + 1)) for b in model.blocks]
    return counts, hooks


def test_reuse_skips_the_branch(small_dit):
    sched = Schedule.from_step_masks([i % 3 == 0 for i in range(STEPS)], [i % 2 == 0 for i in range(STEPS)], SMALL.depth)
    counts, hooks = _count_branch_calls(small_dit)
    _run(small_dit, "ddim", 1.0, sched)
    for h in hooks:
        h.remove()
    assert counts["attn"] == SMALL.depth * sum(i % 3 == 0 for i in range(STEPS))  # steps 0, 3, 6
    assert counts["mlp"] == SMALL.depth * sum(i % 2 == 0 for i in range(STEPS))


def test_only_branches_the_schedule_reuses_are_kept(small_dit):
    """Attention reused every other step, MLP never: only attention outputs stay in the cache, and an
    override (a step policy's what-if) keeps everything it computes, since it may reuse anything next."""
    sched = Schedule.from_step_masks([i % 2 == 0 for i in range(STEPS)], [True] * STEPS, SMALL.depth)
    x, c = torch.randn(2, SMALL.num_patches, SMALL.hidden_size), torch.randn(2, SMALL.hidden_size)
    with cached(small_dit, sched) as cache:
        cache.reset()
        cache.set_step(0)
        small_dit.blocks[0](x, c)
        assert set(cache.state.copy()) == {(0, "attn")}
        cache.set_step(1, (True, True))
        small_dit.blocks[1](x, c)
        assert set(cache.state.copy()) == {(0, "attn"), (1, "attn"), (1, "mlp")}
    with cached(small_dit, no_cache(STEPS, SMALL.depth)) as cache:
        cache.reset()
        cache.set_step(0)
        small_dit.blocks[0](x, c)
        assert cache.state.copy() == {}


def test_a_policy_may_reuse_what_a_step_it_left_to_the_schedule_computed(small_dit):
    """A policy that returns None (follow the schedule: here compute everything) and reuses the next step:
    the reuse must read that step's outputs, though the all-compute schedule alone keeps nothing."""
    from ebtune.sampling.samplers import StepPolicy

    class Alternate(StepPolicy):
        def decide(self, i, trial):
            return None if i % 2 == 0 else (False, False)

    sampler = make_sampler("ddim", STEPS)
    noise, labels = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    got = sampler.sample(small_dit, noise, labels, no_cache(STEPS, SMALL.depth), policy=Alternate())
    fora2 = Schedule.from_step_masks([i % 2 == 0 for i in range(STEPS)], [i % 2 == 0 for i in range(STEPS)], SMALL.depth)
    assert torch.equal(got, sampler.sample(small_dit, noise, labels, fora2))


def test_reuse_applies_the_current_gate():
    model = randomised(DiT(DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=16, depth=1, num_heads=2, num_classes=3)))
    block = model.blocks[0]
    sched = Schedule(attn=[[True], [False]], mlp=[[True], [True]])
    x0, x1 = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    c0, c1 = torch.randn(2, 16), torch.randn(2, 16)
    with cached(model, sched) as cache:
        cache.reset()
        cache.set_step(0)
        block(x0, c0)
        cache.set_step(1)
        got = block(x1, c1)
    # Independent reference from the block's own parts: the step-0 attention output, gated by c1.
    shift_a0, scale_a0, *_ = block.adaLN_modulation(c0).chunk(6, dim=1)
    a0 = block.attn(block.norm1(x0) * (1 + scale_a0[:, None]) + shift_a0[:, None])
    _, _, gate_a1, shift_m1, scale_m1, gate_m1 = block.adaLN_modulation(c1).chunk(6, dim=1)
    h = x1 + gate_a1[:, None] * a0
    want = h + gate_m1[:, None] * block.mlp(block.norm2(h) * (1 + scale_m1[:, None]) + shift_m1[:, None])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(got, block(x1, c1))  # computing attention at step 1 would differ


def test_close_restores_the_model_exactly(small_dit):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    before = small_dit(x, t, y)
    sched = fora(ScheduleContext.linear(4, SMALL.depth), 2)
    with cached(small_dit, sched) as cache:
        assert all("attn_branch" in vars(b) for b in small_dit.blocks)
        with pytest.raises(RuntimeError, match="already attached"):
            cached(small_dit, sched)
        cache.reset()
        small_dit(x, t, y)
    assert not any("attn_branch" in vars(b) or "mlp_branch" in vars(b) for b in small_dit.blocks)
    assert not hasattr(small_dit, "_ebtune_cache")
    assert torch.equal(small_dit(x, t, y), before)
    cached(small_dit, sched).close()  # attachable again after closing


def test_attach_errors(small_dit):
    with pytest.raises(ValueError, match="schedule has 5 blocks but the model has 3"):
        cached(small_dit, no_cache(4, 5))

    class NoBlocks(Adapter):
        @classmethod
        def matches(cls, model):
            return True

        def branch_sites(self, model):
            return []

    with pytest.raises(ValueError, match="found no blocks"):
        cached(small_dit, no_cache(4, 3), adapter=NoBlocks())
    sched = Schedule(attn=[[True] * 3, [False] * 3], mlp=[[True] * 3] * 2)
    with cached(small_dit, sched) as cache:
        cache.reset()
        cache.set_step(1)
        with pytest.raises(RuntimeError, match="nothing is cached"):
            small_dit(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_same_seed_same_samples_across_calls(small_dit):
    sched = fora(ScheduleContext.linear(STEPS, SMALL.depth), 3)
    first = _run(small_dit, "ddpm", 4.0, sched, seed=3)
    other = _run(small_dit, "ddpm", 4.0, sched, seed=7)
    assert torch.equal(first, _run(small_dit, "ddpm", 4.0, sched, seed=3))
    assert not torch.allclose(first, other)
