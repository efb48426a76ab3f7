"""Pareto fronts over trial metrics: dominance, constraints and the knee point.

Every metric a trial reports has one intrinsic direction, so an objective is just a metric name: the
costs and extras in `DIRECTIONS`, and the quality metrics by their own names and directions
(`ebtune.metrics.base.Metric`: "fid" for the Fréchet Inception Distance, "digits-native" for
dit-tiny's score, ...). In `search.objectives` and `search.constraints`, `quality` stands for the
search's quality metric (`resolve`). Points are metric mappings such as {"fid": 80.1, "macs": 6.1e8,
...}, or `inference.Scored` records that add the quality metric's bootstrap draws, so that
differences get paired errors and `relation` can claim equivalence within a margin (`metric.margin`).
Constraints are one-line strings, `metric <= bound` or `metric >= bound`, where bound is a number, a
baseline name (that baseline's value of the same metric) or a baseline plus or minus a number:
"quality <= nocache + 0.5", "speedup >= 1.3".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ebtune.errors import ConfigError
from ebtune.search.inference import (
    BETTER, EQUIVALENT, INCONCLUSIVE, WORSE, Difference, Scored, paired_difference, standing,
)

Metrics = Mapping[str, float]

# Rules that stop a trial rather than make a claim (the first-fidelity gate `Job.gate`, the gap gate)
# count a difference beyond NOISE_Z standard errors *of that difference*, the paired error
# std(draws_a − draws_b) (`inference.paired_difference`); the plots draw ± NOISE_Z of a point's own
# error. `relation` and the front no longer use it: they claim at one-sided 95 % (`inference.Z_95`)
# with the equivalence margin `metric.margin`, where NOISE_Z used to scale the combined independent
# errors sqrt(σ_a² + σ_b²).
NOISE_Z = 2.0

# The relation words (`relation`), best first. Files written before paired inference used "matches at
# lower cost", "tie" and "matched at higher cost" for "could not tell apart" (now: inconclusive, unless
# the new statistics show equivalence) and "dominated" (now: worse).
DOMINATES, EQUIVALENT_LOWER, EQUIVALENT_HIGHER, TRADE_OFF = (
    "dominates", "equivalent at lower cost", "equivalent at higher cost", "trade-off")
RELATIONS = (DOMINATES, EQUIVALENT_LOWER, EQUIVALENT, TRADE_OFF, INCONCLUSIVE, EQUIVALENT_HIGHER, WORSE)
MIRROR = {DOMINATES: WORSE, WORSE: DOMINATES, EQUIVALENT_LOWER: EQUIVALENT_HIGHER, EQUIVALENT_HIGHER: EQUIVALENT_LOWER,
          EQUIVALENT: EQUIVALENT, TRADE_OFF: TRADE_OFF, INCONCLUSIVE: INCONCLUSIVE}
_TABLE = {  # quality standing → cost side → relation (the table in `relation`)
    BETTER: {"lower": DOMINATES, "same": DOMINATES, "higher": TRADE_OFF, "mixed": TRADE_OFF},
    EQUIVALENT: {"lower": EQUIVALENT_LOWER, "same": EQUIVALENT, "higher": EQUIVALENT_HIGHER, "mixed": TRADE_OFF},
    WORSE: {"lower": TRADE_OFF, "same": WORSE, "higher": WORSE, "mixed": TRADE_OFF},
    INCONCLUSIVE: dict.fromkeys(("lower", "same", "higher", "mixed"), INCONCLUSIVE),
    "mixed": dict.fromkeys(("lower", "same", "higher", "mixed"), TRADE_OFF),
}
_CLASSIC = {"lower": DOMINATES, "same": EQUIVALENT, "higher": WORSE, "mixed": TRADE_OFF}  # no measured objective

# The metrics every evaluation reports besides its quality metric, whose direction is its own.
DIRECTIONS: dict[str, str] = {
    "macs": "minimize",  # per image
    "latency_s": "minimize",  # per timed batch
    "speedup": "maximize",  # MAC-ideal, versus no cache at the search's step count
    "latency_speedup": "maximize",
    "distance": "minimize",  # RMS to the uncached final latents from the same noise
    "accuracy": "maximize",  # share classified as their label (digits only)
    "quality_proxy": "minimize",  # the quality metric on the first metric.n_proxy images (multi-fidelity)
    "images": "minimize",  # images sampled by the evaluation
}


# In search.objectives and search.constraints: the search's quality metric, whatever its name.
QUALITY = "quality"


def objective_names(value: Any, device_type: str, quality: str | None = None) -> list[str]:
    """`search.objectives` as a list of metric names: `auto` ranks quality against latency on CUDA and
    against MACs elsewhere (CPU wall time is too noisy to rank by).

    Args:
        quality: the name of the search's quality metric (`ebtune.metrics.registry.quality_name`):
            `quality` resolves to it, and naming another quality metric is an error (`resolve`).
            None: the names as given, `auto`'s quality left as `quality` (enough to tell whether a
            search ranks by latency).
    """
    names = [quality or QUALITY, "latency_s" if device_type == "cuda" else "macs"] if value == "auto" else (
        [value] if isinstance(value, str) else list(value))
    return names if quality is None else [resolve(str(n), quality) for n in names]


def _quality_directions() -> dict[str, str]:
    from ebtune.metrics.registry import metric_directions  # torch-fidelity and the metric modules, on first use

    return metric_directions()


def resolve(metric: str, quality: str) -> str:
    """`metric` as a search whose quality metric is `quality` reports it: `quality` → `quality`'s name.

    Raises:
        ConfigError: `metric` names a quality metric this search does not measure (e.g. "fid", the
            Fréchet Inception Distance, in a search scored by "digits-native").
    """
    if metric == QUALITY:
        return quality
    if metric != quality and metric not in DIRECTIONS and metric in _quality_directions():
        raise ConfigError(f"{metric!r} is not measured by this search: its quality metric is {quality!r} "
                          f"(model.fid); write {QUALITY!r} or {quality!r} instead")
    return metric


def direction(metric: str) -> str:
    """"minimize" or "maximize" (a quality metric's own, `Metric.direction`); raises `ConfigError`
    for an unknown metric."""
    if metric in DIRECTIONS:
        return DIRECTIONS[metric]
    known = _quality_directions()
    if metric not in known:
        raise ConfigError(f"unknown metric {metric!r}; choose from: {', '.join([QUALITY, *known, *DIRECTIONS])}")
    return known[metric]


def _cost(metrics: Metrics, metric: str) -> float:
    """The metric oriented so that lower is better."""
    value = float(metrics[metric])
    return value if direction(metric) == "minimize" else -value


def std_key(metric: str) -> str:
    """Where a measured metric keeps its standard error (bootstrap over images): e.g. `fid_std`,
    `digits-native_std`."""
    return f"{metric}_std"


def _std(metrics: Metrics, metric: str) -> float:
    value = metrics.get(std_key(metric))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def compare(a: Metrics, b: Metrics, metric: str) -> int:
    """-1 when `a` is better than `b` on `metric`, +1 when worse, 0 for equal point values."""
    diff = _cost(a, metric) - _cost(b, metric)
    return -1 if diff < 0 else 1 if diff > 0 else 0


def dominates(a: Metrics, b: Metrics, objectives: Sequence[str]) -> bool:
    """The classic rule on point values: `a` no worse on every objective and strictly better on one.
    Beyond noise, see `relation` ("dominates")."""
    signs = [compare(a, b, m) for m in objectives]
    return all(s <= 0 for s in signs) and any(s < 0 for s in signs)


def scored(point: Scored | Metrics) -> Scored:
    """`point` as a `Scored`; a bare metrics mapping (an old record) is a point without draws, judged
    on its stored errors combined as independent."""
    return point if isinstance(point, Scored) else Scored(point)


def _measured(point: Scored, metric: str) -> bool:
    """Whether `point` carries an error for `metric`: bootstrap draws or a stored standard error."""
    return len(point.draws.get(metric, ())) > 1 or _std(point.metrics, metric) > 0


def difference(a: Scored, b: Scored, metric: str) -> Difference:
    """a − b on `metric` oriented so that < 0 means `a` is better, with its paired error (see
    `inference.paired_difference`; the independent errors when the draws do not pair)."""
    d = paired_difference(a.draws.get(metric, ()), b.draws.get(metric, ()), float(a.metrics[metric]),
                          float(b.metrics[metric]), _std(a.metrics, metric), _std(b.metrics, metric))
    return d if direction(metric) == "minimize" else d.negated()


def _cost_side(signs: Sequence[int]) -> str:
    if all(s == 0 for s in signs):
        return "same"
    if all(s <= 0 for s in signs):
        return "lower"
    return "higher" if all(s >= 0 for s in signs) else "mixed"


def _quality(standings: Sequence[str]) -> str:
    """One standing over several measured objectives; better on one and worse on another: "mixed"."""
    seen = set(standings)
    if seen <= {EQUIVALENT}:
        return EQUIVALENT
    if INCONCLUSIVE in seen:
        return INCONCLUSIVE
    return BETTER if seen <= {BETTER, EQUIVALENT} else WORSE if seen <= {WORSE, EQUIVALENT} else "mixed"


def relation(point: Scored | Metrics, baseline: Scored | Metrics, objectives: Sequence[str], margin: float) -> str:
    """How `point` stands against `baseline`: one of `RELATIONS`.

    Measured objectives (the quality metric: draws or a stored error) get a standing from their
    paired difference (`inference.standing`: equivalent within `margin` by TOST at 95 %, else better
    or worse beyond the one-sided 95 % bound, else inconclusive); the others (MACs, latency,
    speedup) are costs, compared exactly: lower (≤ on all, < on one), same, higher, or mixed.

    | quality / cost | lower                    | same       | higher                    | mixed     |
    |----------------|--------------------------|------------|---------------------------|-----------|
    | better         | dominates                | dominates  | trade-off                 | trade-off |
    | equivalent     | equivalent at lower cost | equivalent | equivalent at higher cost | trade-off |
    | worse          | trade-off                | worse      | worse                     | trade-off |
    | inconclusive   | inconclusive             | ...        | ...                       | ...       |

    Quality better on one measured objective and worse on another is a trade-off. Without a measured
    objective (no bootstrap) every objective is a cost and the words are the classic Pareto ones:
    lower → dominates, same → equivalent, higher → worse, mixed → trade-off. relation(b, a) is
    `MIRROR[relation(a, b)]`.
    """
    a, b = scored(point), scored(baseline)
    measured = [m for m in objectives if _measured(a, m) or _measured(b, m)]
    cost = _cost_side([compare(a.metrics, b.metrics, m) for m in objectives if m not in measured])
    if not measured:
        return _CLASSIC[cost]
    return _TABLE[_quality([standing(difference(a, b, m), margin) for m in measured])][cost]


def distinct_front(points: Sequence[Scored | Metrics], objectives: Sequence[str], margin: float) -> list[int]:
    """Indices of the points a person can tell apart: no point dominates them (`relation`, beyond
    noise), and none is equivalent within `margin` to a cheaper point already kept. Points are taken
    cheapest first (lexicographically on the cost objectives), so a chain of equivalences never
    collapses the front onto its cheapest point: each point is compared only with kept ones. Points
    with a non-finite objective are left out.
    """
    pts = [scored(p) for p in points]
    usable = [i for i, p in enumerate(pts) if all(math.isfinite(float(p.metrics.get(m, math.nan))) for m in objectives)]
    undominated = [i for i in usable if not any(
        relation(pts[j], pts[i], objectives, margin) == DOMINATES for j in usable if j != i)]
    costs = [m for m in objectives if not any(_measured(p, m) for p in pts)]
    kept: list[int] = []
    for i in sorted(undominated, key=lambda i: ([_cost(pts[i].metrics, m) for m in costs], i)):
        if not any(relation(pts[j], pts[i], objectives, margin) == EQUIVALENT_LOWER for j in kept):
            kept.append(i)
    return sorted(kept)


def non_dominated(points: Sequence[Metrics], objectives: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (the classic rule, `dominates`); points with a
    non-finite objective are left out. Duplicates (equal on every objective) are all kept."""
    usable = [i for i, p in enumerate(points) if all(math.isfinite(float(p.get(m, math.nan))) for m in objectives)]
    return [i for i in usable if not any(dominates(points[j], points[i], objectives) for j in usable if j != i)]


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
    def parse(cls, text: str, quality: str | None = None) -> "Constraint":
        """Parse "quality <= nocache + 0.5", "speedup >= 1.3" (spaces around the operators are required).

        Args:
            quality: the search's quality metric: `quality` resolves to it (`resolve`); None for a
                constraint as a study stored it (already resolved).

        Raises:
            ConfigError: the text does not follow the grammar or names an unknown metric.
        """
        tokens = str(text).split()
        bad = ConfigError(f"cannot parse constraint {text!r}; write e.g. 'quality <= nocache + 0.5' or 'speedup >= 1.3'")
        if len(tokens) not in (3, 5) or tokens[1] not in ("<=", ">="):
            raise bad
        if quality is not None:
            tokens[0] = resolve(tokens[0], quality)
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
    points: Sequence[Scored | Metrics], objectives: Sequence[str], constraints: Sequence[Constraint] = (),
    baselines: Mapping[str, Metrics] | None = None, margin: float = 0.0,
) -> list[int]:
    """Indices of `distinct_front` among the points meeting every constraint (margin 0: no point is
    dropped for equivalence, only for dominance beyond noise)."""
    pts = [scored(p) for p in points]
    ok = [i for i, p in enumerate(pts) if all(c.violation(p.metrics, baselines or {}) <= 0 for c in constraints)]
    return [ok[i] for i in distinct_front([pts[i] for i in ok], objectives, margin)]
