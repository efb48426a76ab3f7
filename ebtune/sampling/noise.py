"""Where a stochastic sampler step's noise comes from.

The sampling loop hands every step a `StepNoise`. `GeneratorNoise` draws from one `torch.Generator`
in step order, as DiT's `p_sample` does. `CoupledNoise` lets a k-step run share the randomness of
the K-step run of the same batch (both respaced from the same 1000-step chain): it draws the K-step
run's noises from the same generator in the same order and shapes, and gives coarse step c the
normalised combination z_c = Σ w_j z_j / sqrt(Σ w_j²) of the fine draws j whose timesteps fall in
c's interval (t_{c−1}, t_c], with w_j the fine chain's posterior standard deviation (fixed, not the
model's learned variance, so the coupling does not depend on the model). Each fine draw enters at
most one coarse step, so every z_c is exactly N(0, I) and the coarse steps stay independent; the
k-step run and the K-step run then inject correlated noise, and a paired comparison of the two no
longer carries the part of their difference that was only unrelated step noise.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ebtune.core.diffusion import GaussianDiffusion


class StepNoise(Protocol):
    """The noise of one sampling run, drawn by the steps that need it, in step order."""

    def draw(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (its device and dtype) for the step at chain index k."""


@dataclass
class GeneratorNoise:
    """Draws straight from `generator` (None: torch's global generator), one draw per call."""

    generator: torch.Generator | None = None

    def draw(self, k: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)


def coupling_groups(reference_steps: int, steps: int) -> list[list[int]]:
    """For each chain index c of the `steps`-step chain, the chain indices j of the `reference_steps`-step
    chain whose original timestep lies in (t_{c−1}, t_c] (for c = 0: t ≤ t_0 = 0). Only j ≥ 1 are
    listed: the reference run's last step (j = 0) draws no noise. Every such j lands in one group, except
    above the coarse grid's top timestep (only a 1-step grid, whose top is 0, has one), where it runs no step."""
    coarse = GaussianDiffusion.respaced(steps).timestep_map
    fine = GaussianDiffusion.respaced(reference_steps).timestep_map
    groups: list[list[int]] = [[] for _ in coarse]
    for j in range(1, len(fine)):
        c = bisect_left(coarse, fine[j])
        if c < len(coarse):
            groups[c].append(j)
    return groups


class CoupledNoise:
    """Step noise of a `steps`-step run coupled to the `reference_steps`-step run that draws from the
    same `generator` (see the module docstring); for one run only.

    With steps == reference_steps every group holds one draw, returned as drawn: the plain sequence.
    A coarse step no fine timestep falls in (a finer coarse grid) gets a fresh draw, taken from the
    generator after the reference draws, so it is independent of them.
    """

    def __init__(self, generator: torch.Generator | None, reference_steps: int, steps: int):
        self.generator = generator
        self.reference_steps = reference_steps
        self.groups = coupling_groups(reference_steps, steps)
        self.weights = np.sqrt(GaussianDiffusion.respaced(reference_steps).posterior_variance)
        self._coupled: dict[int, torch.Tensor] | None = None

    def draw(self, k: int, like: torch.Tensor) -> torch.Tensor:
        if self._coupled is None:  # the first step that needs noise knows the shape the reference run drew
            self._coupled = self._combine(like)
        if k in self._coupled:
            return self._coupled.pop(k)
        return GeneratorNoise(self.generator).draw(k, like)

    def _combine(self, like: torch.Tensor) -> dict[int, torch.Tensor]:
        """The coupled draw of every coarse step with a non-empty group, keyed by its chain index."""
        plain = GeneratorNoise(self.generator)
        # The reference run draws at chain indices K−1 down to 1, its steps' order.
        fine = {j: plain.draw(j, like) for j in range(self.reference_steps - 1, 0, -1)}
        coupled = {}
        for c, group in enumerate(self.groups):
            if len(group) == 1:  # w z / |w| = z mathematically; taking z itself keeps k == K bit-exact
                coupled[c] = fine[group[0]]
            elif group:
                w = self.weights[group]
                total = sum(float(wj) * fine[j] for wj, j in zip(w, group))
                coupled[c] = total / float(np.sqrt(np.sum(w**2)))
        return coupled
