"""Paired inference on bootstrap draws: the error of a difference, equivalence, and a standing.

Every evaluation of a search samples the same seeds and labels, and the quality metric resamples the
same image indices for every image set of one size and seed (`Metric.score_draws`), so draw k
of two evaluations is computed on the same images. The standard error of a difference a − b is then
the spread of the paired differences, std(draws_a − draws_b), which cancels what both share (the
particular images drawn, the small-sample bias) and is far tighter than the combined independent
errors sqrt(σ_a² + σ_b²) that treat the two sets as unrelated. Without paired draws (old records, a
different bootstrap size) the independent errors are the honest fallback, and the record says so.

Decisions are one-sided tests at 95 % (z = `Z_95`): a is *better* than b on a minimised metric when
the upper bound d + z·se of d = a − b is below 0, *worse* when the lower bound d − z·se is above 0.
*Equivalent* within a margin m is the two one-sided tests (TOST, Schuirmann 1987) at α = 0.05: the
90 % interval d ± z·se lies inside (−m, +m). Equivalence is a claim of its own: a difference that
is merely not resolved (neither better, worse nor equivalent at this n) is *inconclusive*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ebtune.errors import ConfigError

# One-sided 95 % quantile of the standard normal: each of TOST's two tests at α = 0.05, and the
# bound a "better" or "worse" claim must clear.
Z_95 = 1.6448536269514722

# A point's standing against another on one minimised metric (`standing`).
BETTER, EQUIVALENT, WORSE, INCONCLUSIVE = "better", "equivalent", "worse", "inconclusive"


@dataclass(frozen=True)
class Difference:
    """d = a − b with its standard error.

    `se` is std(draws_a − draws_b) (ddof = 1) over `n_draws` paired draws, or with `n_draws` 0 (not
    `paired`) the combined independent errors sqrt(se_a² + se_b²); 0 when neither point carries an
    error (an exact metric such as MACs).
    """

    value: float
    se: float
    n_draws: int

    @property
    def paired(self) -> bool:
        return self.n_draws > 0

    @property
    def low(self) -> float:
        """Lower end of the 90 % interval (the one-sided 95 % lower bound)."""
        return self.value - Z_95 * self.se

    @property
    def high(self) -> float:
        """Upper end of the 90 % interval (the one-sided 95 % upper bound)."""
        return self.value + Z_95 * self.se

    def within(self, margin: float) -> bool:
        """TOST at 95 %: the 90 % interval lies inside (−margin, +margin)."""
        return -margin < self.low and self.high < margin

    def negated(self) -> "Difference":
        """b − a, with the same error (to orient a maximised metric so that lower is better)."""
        return replace(self, value=-self.value)


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def paired_difference(draws_a: Sequence[float], draws_b: Sequence[float], value_a: float, value_b: float,
                      std_a: float = math.nan, std_b: float = math.nan) -> Difference:
    """value_a − value_b with the paired bootstrap error when both draw sets match.

    Args:
        draws_a, draws_b: the metric on the same bootstrap resamples of each point's images (e.g.
            `Outcome.quality_draws`); paired when both hold two or more draws of the same length.
        value_a, value_b: the point values (on all images), whose difference is reported.
        std_a, std_b: each point's own standard error (its draws' std), for the independent fallback;
            a non-finite one counts as 0, an exact value (no bootstrap was run).

    Returns:
        The difference; `paired` False when the independent errors were combined.
    """
    a, b = np.asarray(draws_a, dtype=np.float64), np.asarray(draws_b, dtype=np.float64)
    value = float(value_a) - float(value_b)
    if len(a) > 1 and len(a) == len(b):
        return Difference(value, float(np.std(a - b, ddof=1)), len(a))
    return Difference(value, math.hypot(_finite_or_zero(std_a), _finite_or_zero(std_b)), 0)


def standing(d: Difference, margin: float) -> str:
    """How a stands against b on a minimised metric, from d = a − b: `EQUIVALENT` when TOST shows
    |d| < margin, else `BETTER` (d's upper bound < 0), `WORSE` (lower bound > 0) or `INCONCLUSIVE`.

    Equivalence comes first: a difference shown smaller than the margin is no difference a person
    would see, even when the draws resolve its sign (paired errors often do). This keeps the
    standing antisymmetric: standing(b − a) is standing(a − b) with better and worse swapped.
    """
    if d.within(margin):
        return EQUIVALENT
    if d.high < 0:
        return BETTER
    if d.low > 0:
        return WORSE
    return INCONCLUSIVE


def equivalence_margin(metric: Mapping[str, Any]) -> float:
    """`metric.margin` (conf/search.yaml): the equivalence margin in the quality metric's units.

    Raises:
        ConfigError: missing, not a number, or negative.
    """
    value = metric.get("margin")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"metric.margin must be a number >= 0 in the quality metric's units (0 = never claim "
                          f"equivalence), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Scored:
    """A point as inference judges it: a baseline or a trial of one search.

    Args:
        metrics: every metric the evaluation reported (`pareto.direction`), errors as `<metric>_std`.
        draws: per measured metric, its bootstrap draws (e.g. {"digits-native": Outcome.quality_draws}); a
            metric without draws falls back to its stored error (see `paired_difference`).
        name: how lines and records name the point ("nocache", "trial 7").
        params: the point's parameters; a baseline's `schedule` names its family ("none" = no cache).
    """

    metrics: Mapping[str, float]
    draws: Mapping[str, Sequence[float]] = field(default_factory=dict)
    name: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
