"""The cache schedule: the value every part of ebtune passes around.

A `Schedule` says, for each sampling step and each block, whether the attention branch and whether
the MLP branch are computed (True) or reused from the cache (False), and by what factor the
predicted noise ε is scaled at that step, and per branch what a non-computed slot returns (its
`PredictorSpec`: reuse of the last computed output by default, or a forecast from the computed ones).
It is decided before the sampling loop and never changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from ebtune.core.predictors import PREDICTORS, Predictor

Mask = tuple[tuple[bool, ...], ...]  # [step][block]

BRANCHES = ("attn", "mlp")


def _freeze(mask: Sequence[Sequence[bool]]) -> Mask:
    return tuple(tuple(bool(v) for v in row) for row in mask)


@dataclass(frozen=True)
class PredictorSpec:
    """What a branch's non-computed slots return: a name in `ebtune.core.predictors.PREDICTORS`
    ("reuse", "taylor", "lagrange") and its polynomial order (0 = reuse, for every predictor).

    Raises:
        ConfigError: unknown name. ValueError: an order the predictor does not take.
    """

    name: str = "reuse"
    order: int = 0

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> Predictor:
        """A fresh predictor (the cache engine builds one per branch when it attaches)."""
        return PREDICTORS.make(self.name, order=self.order)

    @property
    def reuses(self) -> bool:
        """True when the slot returns its last computed output (order 0 of any predictor)."""
        return self.order == 0

    def __str__(self) -> str:
        return self.name if self.reuses else f"{self.name}({self.order})"


REUSE = PredictorSpec()


@dataclass(frozen=True)
class Schedule:
    """Per-step, per-block compute masks, per-step ε factors and per-branch predictors.

    Args:
        attn: attn[i][b] is True when block b computes attention at step i (step 0 = first, noisiest).
        mlp: the same for the MLP branch.
        eps_scale: ε ← eps_scale[i]·ε at step i (after guidance); defaults to 1 everywhere.
        name: a short label for reports.
        attn_predictor, mlp_predictor: what that branch's non-computed slots return (default: reuse).

    Raises:
        ValueError: ragged masks, a reuse at step 0 (nothing is cached yet), bad ε factors, or a
            predictor that is not a `PredictorSpec`.
    """

    attn: Mask
    mlp: Mask
    eps_scale: tuple[float, ...] = ()
    name: str = "custom"
    params: tuple[tuple[str, object], ...] = field(default=(), compare=False)
    attn_predictor: PredictorSpec = REUSE
    mlp_predictor: PredictorSpec = REUSE

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
        for spec in (self.attn_predictor, self.mlp_predictor):
            if not isinstance(spec, PredictorSpec):
                raise ValueError(f"a branch predictor must be a PredictorSpec, not {spec!r}; "
                                 "use PredictorSpec(name, order)")

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

    def predictor(self, branch: str) -> PredictorSpec:
        """What the non-computed slots of `branch` return."""
        self.mask(branch)  # validates the branch name
        return self.attn_predictor if branch == "attn" else self.mlp_predictor

    @property
    def forecasts(self) -> bool:
        """True when some branch forecasts instead of reusing (order > 0)."""
        return not (self.attn_predictor.reuses and self.mlp_predictor.reuses)

    def compute_fraction(self, branch: str) -> float:
        """Share of (step, block) slots in which `branch` is computed."""
        m = self.mask(branch)
        return sum(map(sum, m)) / (self.steps * self.depth)

    @property
    def full_steps(self) -> int:
        """Steps at which every branch of every block is computed."""
        return sum(all(a) and all(m) for a, m in zip(self.attn, self.mlp))

    # `replace` keeps every other field (the predictors too), so these survive any field added later.
    def with_eps_scale(self, eps_scale: Sequence[float]) -> "Schedule":
        return replace(self, eps_scale=tuple(eps_scale))

    def renamed(self, name: str, params: dict | None = None) -> "Schedule":
        return replace(self, name=name, params=tuple((params or {}).items()))

    def with_predictors(self, attn: PredictorSpec = REUSE, mlp: PredictorSpec = REUSE) -> "Schedule":
        """The same masks with these predictors (no arguments: reuse on both branches)."""
        return replace(self, attn_predictor=attn, mlp_predictor=mlp)

    def describe(self) -> str:
        """One line: name, full steps, and the share of attention and MLP work kept."""
        return (
            f"{self.name}: {self.steps} steps x {self.depth} blocks, {self.full_steps} full steps, "
            f"attn computed {self.compute_fraction('attn'):.0%}, mlp computed {self.compute_fraction('mlp'):.0%}"
            + (f", skipped attn {self.attn_predictor}, mlp {self.mlp_predictor}" if self.forecasts else "")
        )


def no_cache(steps: int, depth: int) -> Schedule:
    """Every branch computed at every step."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return Schedule.from_step_masks([True] * steps, [True] * steps, depth, name="none")
