"""Exposure-bias correction: a per-step factor applied to the guided ε before the sampler step.

Each rule maps normalised time t (1 at the first, noisiest step, 0 at the last) to a factor b,
and the sampler uses b·ε in place of ε (the learned-variance channels are left alone).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from ebtune.registry import Registry


class EpsScale(ABC):
    """One ε-scaling rule; `factor(t)` must be positive for t in [0, 1]."""

    @abstractmethod
    def factor(self, t: float) -> float:
        """Multiplier of ε at normalised time t."""

    def factors(self, times: Sequence[float]) -> tuple[float, ...]:
        return tuple(float(self.factor(float(t))) for t in times)


@dataclass(frozen=True)
class NoScale(EpsScale):
    def factor(self, t: float) -> float:
        return 1.0


@dataclass(frozen=True)
class EBCacheScale(EpsScale):
    """The EB-Cache paper's two-stage b(t) (arXiv 2503.07120, Sec. 3.3).

    t ≥ t_s: b = b_h + (1 − b_h)·exp(−5(1 − t)/(1 − t_s));
    t < t_s: b = b_l + (b_h − b_l)·exp(5(t − t_s)/(1 − t_s)).
    """

    b_h: float = 0.98
    b_l: float = 0.96
    t_s: float = 0.4

    def __post_init__(self) -> None:
        if not 0 < self.t_s < 1:
            raise ValueError(f"t_s must lie in (0, 1), got {self.t_s}")
        if self.b_h <= 0 or self.b_l <= 0:
            raise ValueError("b_h and b_l must be positive")

    def factor(self, t: float) -> float:
        if t >= self.t_s:
            return self.b_h + (1 - self.b_h) * math.exp(-5 * (1 - t) / (1 - self.t_s))
        return self.b_l + (self.b_h - self.b_l) * math.exp(5 * (t - self.t_s) / (1 - self.t_s))


@dataclass(frozen=True)
class ConstantScale(EpsScale):
    """ε ← value·ε at every step (the EB-Cache code divides by 0.965, i.e. value ≈ 1.036)."""

    value: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"eps_scale.value must be positive, got {self.value}")

    def factor(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class LinearScale(EpsScale):
    """Ning et al., "Elucidating the Exposure Bias in Diffusion Models" (ICLR 2024): ε ← ε / (k·t + b)."""

    k: float = 0.0
    b: float = 1.005

    def __post_init__(self) -> None:
        if min(self.b, self.k + self.b) <= 0:
            raise ValueError(f"k·t + b must stay positive on [0, 1]; got k={self.k}, b={self.b}")

    def factor(self, t: float) -> float:
        return 1.0 / (self.k * t + self.b)


EPS_SCALES: Registry[EpsScale] = Registry("eps_scale")
EPS_SCALES.register("none", NoScale)
EPS_SCALES.register("ebcache", EBCacheScale)
EPS_SCALES.register("constant", ConstantScale)
EPS_SCALES.register("linear", LinearScale)


def make_eps_scale(name: str, **params: float) -> EpsScale:
    """The ε-scaling rule `name` with `params`; unknown names and parameters are one-line errors."""
    return EPS_SCALES.make(name, **params)
