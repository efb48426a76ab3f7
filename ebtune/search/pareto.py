"""Pareto fronts over trial metrics: dominance, constraints and the knee point.

Every metric a trial reports has one intrinsic direction (`DIRECTIONS`), so an objective is just a
metric name. Points are metric mappings such as {"fid": 80.1, "macs": 6.1e8, ...}. Constraints are
one-line strings, `metric <= bound` or `metric >= bound`, where bound is a number, a baseline name
(that baseline's value of the same metric) or a baseline plus or minus a number:
"fid <= nocache + 0.5", "speedup >= 1.3".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ebtune.errors import ConfigError

Metrics = Mapping[str, float]

# Differences of a measured metric count only beyond NOISE_Z combined standard errors (≈ 95 %).
NOISE_Z = 2.0

DIRECTIONS: dict[str, str] = {
    "fid": "minimize",
    "macs": "minimize",  # per image
    "latency_s": "minimize",  # per timed batch
    "speedup": "maximize",  # MAC-ideal, versus no cache at the search's step count
    "latency_speedup": "maximize",
    "distance": "minimize",  # RMS to the uncached final latents from the same noise
    "accuracy": "maximize",  # share classified as their label (digits only)
    "fid_proxy": "minimize",  # the quality metric on the first metric.n_proxy images (multi-fidelity)
    "images": "minimize",  # images sampled by the evaluation
}


def objective_names(value: Any, device_type: str) -> list[str]:
    """`search.objectives` as a list: `auto` ranks quality against latency on CUDA and against MACs
    elsewhere (CPU wall time is too noisy to rank by)."""
    if value == "auto":
        return ["fid", "latency_s" if device_type == "cuda" else "macs"]
    return [value] if isinstance(value, str) else list(value)


def direction(metric: str) -> str:
    """"minimize" or "maximize"; raises `ConfigError` for an unknown metric."""
    if metric not in DIRECTIONS:
        raise ConfigError(f"unknown metric {metric!r}; choose from: {', '.join(DIRECTIONS)}")
    return DIRECTIONS[metric]


def _cost(metrics: Metrics, metric: str) -> float:
    """The metric oriented so that lower is better."""
    value = float(metrics[metric])
    return value if direction(metric) == "minimize" else -value


def std_key(metric: str) -> str:
    """Where a measured metric keeps its standard error (bootstrap over images): e.g. `fid_std`."""
    return f"{metric}_std"


def _std(metrics: Metrics, metric: str) -> float:
    value = metrics.get(std_key(metric))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def is_measured(a: Metrics, b: Metrics, metric: str) -> bool:
    """True when either point carries a standard error for `metric` (a sampled quality metric)."""
    return _std(a, metric) > 0 or _std(b, metric) > 0


def compare(a: Metrics, b: Metrics, metric: str, z: float = 0.0) -> int:
    """-1 when `a` is better than `b` on `metric`, +1 when worse, 0 for a tie.

    With z > 0 and a standard error stored for the metric (`std_key`), a difference counts only
    beyond z·sqrt(σ_a² + σ_b²); smaller differences are ties. Metrics without a stored error
    (MACs, speedup) are exact.
    """
    diff = _cost(a, metric) - _cost(b, metric)
    margin = z * math.hypot(_std(a, metric), _std(b, metric))
    return -1 if diff < -margin else 1 if diff > margin else 0


def dominates(a: Metrics, b: Metrics, objectives: Sequence[str], z: float = 0.0) -> bool:
    """True when `a` dominates `b`.

    z = 0: the classic rule, no worse on every objective and strictly better on one. z > 0, beyond
    noise: better than `b` beyond z standard errors on every measured objective (the quality
    metric) and no worse on the exact ones (MACs). A quality tie is not a win: a cheaper point whose
    quality is within noise *matches* `b` (see `relation`), and keeping ties out of dominance keeps
    it transitive, so a front never collapses onto its cheapest point through a chain of ties.
    """
    if z <= 0:
        signs = [compare(a, b, m) for m in objectives]
        return all(s <= 0 for s in signs) and any(s < 0 for s in signs)
    measured = [m for m in objectives if is_measured(a, b, m)]
    exact = [m for m in objectives if m not in measured]
    if not measured:
        return dominates(a, b, objectives)
    return all(compare(a, b, m, z) < 0 for m in measured) and all(compare(a, b, m) <= 0 for m in exact)


def relation(a: Metrics, b: Metrics, objectives: Sequence[str], z: float) -> str:
    """How `a` stands against `b`, beyond noise (z standard errors) on the measured objectives:
    "dominates" / "dominated" (see `dominates`), "matches at lower cost" / "matched at higher cost"
    (quality within noise, exact objectives one way), "tie", or "trade-off"."""
    if dominates(a, b, objectives, z):
        return "dominates"
    if dominates(b, a, objectives, z):
        return "dominated"
    measured = [m for m in objectives if is_measured(a, b, m)]
    if all(compare(a, b, m, z) == 0 for m in measured):
        exact = [compare(a, b, m) for m in objectives if m not in measured]
        if all(s == 0 for s in exact):
            return "tie"
        if all(s <= 0 for s in exact):
            return "matches at lower cost"
        if all(s >= 0 for s in exact):
            return "matched at higher cost"
    return "trade-off"


def non_dominated(points: Sequence[Metrics], objectives: Sequence[str], z: float = 0.0) -> list[int]:
    """Indices of the points no other point dominates; points with a non-finite objective are left out.

    Duplicates (equal on every objective) are all kept: neither dominates the other. With z > 0 a
    point dominated only within the metrics' noise stays (see `compare`).
    """
    usable = [i for i, p in enumerate(points) if all(math.isfinite(float(p.get(m, math.nan))) for m in objectives)]
    return [i for i in usable if not any(dominates(points[j], points[i], objectives, z) for j in usable if j != i)]


def knee(points: Sequence[Metrics], objectives: Sequence[str]) -> int:
    """Index of the knee of a front: the point nearest the utopia point after scaling each objective to
    [0, 1] over the given points (0 = best value seen). Ties go to the lower index.

    Raises:
        ValueError: no points.
    """
    if not points:
        raise ValueError("the front is empty; there is no knee to choose (run more trials or relax constraints)")
    costs = [[_cost(p, m) for m in objectives] for p in points]
    lows = [min(c[k] for c in costs) for k in range(len(objectives))]
    spans = [max(c[k] for c in costs) - lows[k] or 1.0 for k in range(len(objectives))]
    dist = [math.dist([(c[k] - lows[k]) / spans[k] for k in range(len(objectives))], [0.0] * len(objectives)) for c in costs]
    return min(range(len(points)), key=lambda i: (dist[i], i))


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`, bound = `value` plus, if `baseline` is set, that baseline's value of `metric`."""

    metric: str
    op: str
    value: float
    baseline: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        """Parse "fid <= nocache + 0.5", "speedup >= 1.3" (spaces around the operators are required).

        Raises:
            ConfigError: the text does not follow the grammar or names an unknown metric.
        """
        tokens = str(text).split()
        bad = ConfigError(f"cannot parse constraint {text!r}; write e.g. 'fid <= nocache + 0.5' or 'speedup >= 1.3'")
        if len(tokens) not in (3, 5) or tokens[1] not in ("<=", ">="):
            raise bad
        direction(tokens[0])
        rhs = tokens[2:]
        try:
            if len(rhs) == 1:
                try:
                    return cls(tokens[0], tokens[1], float(rhs[0]))
                except ValueError:
                    return cls(tokens[0], tokens[1], 0.0, rhs[0])
            if rhs[1] not in ("+", "-"):
                raise bad
            return cls(tokens[0], tokens[1], float(rhs[2]) * (1 if rhs[1] == "+" else -1), rhs[0])
        except ValueError:
            raise bad from None

    def violation(self, metrics: Metrics, baselines: Mapping[str, Metrics]) -> float:
        """≤ 0 when satisfied; the amount by which it is missed otherwise (Optuna's convention)."""
        bound = self.value
        if self.baseline is not None:
            if self.baseline not in baselines:
                raise ConfigError(f"constraint {self} names baseline {self.baseline!r}; baselines are: "
                                  f"{', '.join(baselines)}")
            bound += float(baselines[self.baseline][self.metric])
        value = float(metrics[self.metric])
        return value - bound if self.op == "<=" else bound - value

    def __str__(self) -> str:
        if self.baseline is None:
            return f"{self.metric} {self.op} {self.value:g}"
        return f"{self.metric} {self.op} {self.baseline} {'+' if self.value >= 0 else '-'} {abs(self.value):g}"


def feasible_front(
    points: Sequence[Metrics], objectives: Sequence[str], constraints: Sequence[Constraint] = (),
    baselines: Mapping[str, Metrics] | None = None, z: float = 0.0,
) -> list[int]:
    """Indices of the non-dominated points (beyond noise, for z > 0) among those meeting every constraint."""
    ok = [i for i, p in enumerate(points) if all(c.violation(p, baselines or {}) <= 0 for c in constraints)]
    return [ok[i] for i in non_dominated([points[i] for i in ok], objectives, z)]
