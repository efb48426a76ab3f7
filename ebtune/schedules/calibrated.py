"""EB-Cache calibration (the paper's Algorithm 1): choose each step's cache state from the model.

At every step the uncached prediction ε is compared with b(t)·ε̃ under each candidate state (reuse
both, reuse the MLP, reuse attention) on a few calibration samples; a sample accepts the most-reusing
candidate whose relative norm gap |‖ε‖ − ‖b(t)·ε̃‖| / ‖ε‖ is within δ(t) = a·t + c, and the step
takes the state most samples accepted (ties go to less reuse). The stage rule restricts candidates:
only the MLP may be reused while t ≥ boundary, only attention after ("reuse both" is always allowed).
The trajectory then advances with the chosen state, so later steps see the cache they will see at
run time. The calibration runs in the one sampling loop, as a `StepPolicy` of it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from ebtune.core.schedule import Schedule, no_cache
from ebtune.sampling.samplers import Sampler, StepPolicy
from ebtune.schedules.context import ScheduleContext

# (compute attention, compute MLP), most reuse first.
_REUSE_BOTH, _REUSE_MLP, _REUSE_ATTN, _FULL = (False, False), (True, False), (False, True), (True, True)


@dataclass
class CalibrationProbe:
    """What calibration runs: the model, its sampler, and a few labelled noise samples.

    Args:
        model: the network (a cache is attached during calibration and removed after).
        sampler: an `ebtune.sampling.samplers.Sampler` with the target step count.
        noise: (n, C, H, W) initial noise; labels: (n,) class labels.
    """

    model: nn.Module
    sampler: Sampler
    noise: torch.Tensor
    labels: torch.Tensor
    seed: int = 0


def _rel_gap(ref: torch.Tensor, cand: torch.Tensor, b: float) -> torch.Tensor:
    ref_norm = ref.flatten(1).norm(dim=1)
    return (ref_norm - b * cand.flatten(1).norm(dim=1)).abs() / ref_norm.clamp_min(1e-12)


class NormGapPolicy(StepPolicy):
    """Algorithm 1 as a step policy of the sampling loop: records the state it picks at each step."""

    def __init__(self, times: tuple[float, ...], scale: tuple[float, ...], a: float, c: float, boundary: float):
        self.times, self.scale, self.a, self.c, self.boundary = times, scale, a, c, boundary
        self.states: list[tuple[bool, bool]] = []

    def decide(self, i: int, trial) -> tuple[bool, bool]:
        chosen = _FULL
        if i > 0:
            ref = trial(_FULL)
            late = self.times[i] < self.boundary
            candidates = [_REUSE_BOTH, _REUSE_ATTN if late else _REUSE_MLP]
            delta = self.a * self.times[i] + self.c
            votes: list[tuple[bool, bool]] = [_FULL] * len(ref)
            for cand in reversed(candidates):  # less reuse first, so more reuse overwrites
                ok = _rel_gap(ref, trial(cand), self.scale[i]) <= delta
                votes = [cand if accept else v for v, accept in zip(votes, ok.tolist())]
            counts = Counter(votes)
            best = max(counts.values())
            chosen = next(s for s in (_FULL, _REUSE_ATTN, _REUSE_MLP, _REUSE_BOTH) if counts.get(s) == best)
        self.states.append(chosen)
        return chosen


@torch.no_grad()
def ebcache_calibrated(
    ctx: ScheduleContext,
    probe: CalibrationProbe | None = None,
    a: float = 0.02,
    c: float = 0.01,
    boundary: float = 0.4,
    eps_scale: tuple[float, ...] | None = None,
) -> Schedule:
    """Per-step states chosen by norm-gap thresholds δ(t) = a·t + c (see module docstring).

    Args:
        probe: the model, sampler and calibration samples (required).
        eps_scale: b(t) per step; defaults to 1 (no correction).
    Raises:
        ValueError: no probe, or a probe whose sampler runs another step count.
    """
    if probe is None:
        raise ValueError("schedule=ebcache-calibrated needs a model to calibrate on; run it through `ebtune sample`")
    sampler = probe.sampler
    if sampler.steps != ctx.steps:
        raise ValueError(f"calibration sampler runs {sampler.steps} steps, the schedule needs {ctx.steps}")
    scale = tuple(eps_scale or (1.0,) * ctx.steps)
    policy = NormGapPolicy(ctx.times, scale, a, c, boundary)
    gen = torch.Generator(device=probe.noise.device).manual_seed(probe.seed)
    sampler.sample(probe.model, probe.noise, probe.labels, no_cache(ctx.steps, ctx.depth).with_eps_scale(scale), gen,
                   policy=policy)
    params = dict(a=a, c=c, boundary=boundary, n=len(probe.noise), seed=probe.seed)
    return Schedule.from_step_masks(
        [s[0] for s in policy.states], [s[1] for s in policy.states], ctx.depth, eps_scale=scale,
        name="ebcache-calibrated", params=tuple(params.items()),
    )
