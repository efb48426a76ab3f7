"""The cache schedule: the value every part of ebtune passes around.

A `Schedule` says, for each sampling step and each block, whether the attention branch and whether
the MLP branch are computed (True) or reused from the cache (False), and by what factor the
predicted noise ε is scaled at that step. It is decided before the sampling loop and never changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

Mask = tuple[tuple[bool, ...], ...]  # [step][block]

BRANCHES = ("attn", "mlp")


def _freeze(mask: Sequence[Sequence[bool]]) -> Mask:
    return tuple(tuple(bool(v) for v in row) for row in mask)


@dataclass(frozen=True)
class Schedule:
    """Per-step, per-block compute masks and per-step ε factors.

    Args:
        attn: attn[i][b] is True when block b computes attention at step i (step 0 = first, noisiest).
        mlp: the same for the MLP branch.
        eps_scale: ε ← eps_scale[i]·ε at step i (after guidance); defaults to 1 everywhere.
        name: a short label for reports.

    Raises:
        ValueError: ragged masks, a reuse at step 0 (nothing is cached yet), or bad ε factors.
    """

    attn: Mask
    mlp: Mask
    eps_scale: tuple[float, ...] = ()
    name: str = "custom"
    params: tuple[tuple[str, object], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attn", _freeze(self.attn))
        object.__setattr__(self, "mlp", _freeze(self.mlp))
        steps = len(self.attn)
        if steps < 1:
            raise ValueError("a schedule needs at least one step")
        if len(self.mlp) != steps:
            raise ValueError(f"attn mask has {steps} steps but mlp mask has {len(self.mlp)}; give both the same length")
        depth = len(self.attn[0])
        if depth < 1 or any(len(r) != depth for r in self.attn + self.mlp):
            raise ValueError("every step of a schedule must list every block (ragged mask)")
        if not (all(self.attn[0]) and all(self.mlp[0])):
            raise ValueError("step 0 must compute every branch: nothing is cached before the first step")
        scale = tuple(float(v) for v in self.eps_scale) if self.eps_scale else (1.0,) * steps
        if len(scale) != steps:
            raise ValueError(f"eps_scale has {len(scale)} entries for {steps} steps; give one per step")
        if not all(math.isfinite(v) and v > 0 for v in scale):
            raise ValueError("eps_scale factors must be finite and positive")
        object.__setattr__(self, "eps_scale", scale)
        object.__setattr__(self, "params", tuple(self.params))

    @classmethod
    def from_step_masks(
        cls, attn_steps: Sequence[bool], mlp_steps: Sequence[bool], depth: int, **kwargs
    ) -> "Schedule":
        """A schedule whose blocks all follow the same per-step pattern."""
        return cls(
            attn=tuple((bool(a),) * depth for a in attn_steps),
            mlp=tuple((bool(m),) * depth for m in mlp_steps),
            **kwargs,
        )

    @property
    def steps(self) -> int:
        return len(self.attn)

    @property
    def depth(self) -> int:
        return len(self.attn[0])

    def mask(self, branch: str) -> Mask:
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose one of: {', '.join(BRANCHES)}")
        return self.attn if branch == "attn" else self.mlp

    def compute_fraction(self, branch: str) -> float:
        """Share of (step, block) slots in which `branch` is computed."""
        m = self.mask(branch)
        return sum(map(sum, m)) / (self.steps * self.depth)

    @property
    def full_steps(self) -> int:
        """Steps at which every branch of every block is computed."""
        return sum(all(a) and all(m) for a, m in zip(self.attn, self.mlp))

    def with_eps_scale(self, eps_scale: Sequence[float]) -> "Schedule":
        return Schedule(self.attn, self.mlp, tuple(eps_scale), self.name, self.params)

    def renamed(self, name: str, params: dict | None = None) -> "Schedule":
        return Schedule(self.attn, self.mlp, self.eps_scale, name, tuple((params or {}).items()))

    def describe(self) -> str:
        """One line: name, full steps, and the share of attention and MLP work kept."""
        return (
            f"{self.name}: {self.steps} steps x {self.depth} blocks, {self.full_steps} full steps, "
            f"attn computed {self.compute_fraction('attn'):.0%}, mlp computed {self.compute_fraction('mlp'):.0%}"
        )


def no_cache(steps: int, depth: int) -> Schedule:
    """Every branch computed at every step."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return Schedule.from_step_masks([True] * steps, [True] * steps, depth, name="none")
