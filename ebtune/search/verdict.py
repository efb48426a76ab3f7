"""The verdict of a search: which schedule to use, and whether caching pays at each speed it reaches.

A pure function of the front, the baselines, the objectives and the equivalence margin, so the
terminal, `pareto.json` (`verdict`) and any later reader say the same.

- **Recommended**: the knee of the front (`pareto.knee`); with constraints, the front point meeting
  them that is best on the quality metric.
- **Speed levels**: the distinct MAC speedups of the baselines that cache nothing (`params["schedule"]
  == "none"`: no cache and fewer steps, with or without the ε rule). A front point of speedup s
  belongs to the slowest level ≥ s, so every uncached baseline of that level costs no more MACs than
  it; points faster than every level form a last level with no such baseline. At each level the front
  reaches, its best cached point (on the quality metric) is judged against the strongest uncached
  baseline of no more MACs than that point: better (beats), equivalent within the margin, worse
  (loses to) or inconclusive (`inference.standing`), with the paired difference and its error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ebtune.search.inference import BETTER, EQUIVALENT, INCONCLUSIVE, WORSE, Difference, Scored, standing
from ebtune.search.pareto import Constraint, difference, direction, knee, std_key

# How a line says a standing of the cached point against the uncached baseline.
SAYS = {BETTER: "beats", EQUIVALENT: "is equivalent to", WORSE: "loses to", INCONCLUSIVE: "is inconclusive against"}
MAX_LINES = 10


@dataclass(frozen=True)
class Level:
    """One speed level: the best cached front point there against the strongest uncached baseline.

    `level` is the uncached baselines' speedup (None: faster than all of them, `baseline` None);
    `difference` is point − baseline on the quality metric, in its units (< 0 = the point is better
    for a minimised metric, > 0 for a maximised one); `standing` accounts for the direction.
    """

    level: float | None
    point: Scored
    baseline: Scored | None = None
    difference: Difference | None = None
    standing: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What a search recommends and how caching fares at each speed (see the module docstring)."""

    recommended: Scored | None
    rule: str  # why it is recommended
    quality: str  # the quality metric judged
    margin: float
    levels: tuple[Level, ...] = ()

    def lines(self) -> list[str]:
        """At most `MAX_LINES` lines for a person: the recommendation, then one line per level."""
        if self.recommended is None:
            return [f"No schedule to recommend: {self.rule}."]
        m = self.recommended.metrics
        head = (f"Use {self.recommended.name}: {m['speedup']:.2f}x fewer MACs than no cache, {self.quality} "
                f"{_num(m[self.quality])}{_pm(m.get(std_key(self.quality)))} ({self.rule}).")
        return [head] + [self._line(level) for level in self.levels][: MAX_LINES - 1]

    def _line(self, level: Level) -> str:
        point = f"{level.point.name} ({level.point.metrics['speedup']:.2f}x)"
        if level.level is None:
            return f"Beyond every uncached baseline's speed: {point}; no schedule that caches nothing is as cheap."
        if level.baseline is None or level.difference is None or level.standing is None:
            return f"At <= {level.level:.2f}x: {point}; no uncached baseline of no more MACs was confirmed."
        d, n = level.difference, int(level.point.metrics.get("images", 0))
        how = f"paired over {d.n_draws} draws" if d.paired else "independent errors"
        return (f"At <= {level.level:.2f}x: {point} {SAYS[level.standing]} {level.baseline.name}: {self.quality} "
                f"{d.value:+.3g} ± {d.se:.2g} ({how}; margin {self.margin:g}, n = {n}).")

    def depends_on(self) -> set[str]:
        """The names of the points and baselines the verdict judges: what a confirmation must re-score."""
        named = {self.recommended.name} if self.recommended is not None else set()
        for level in self.levels:
            named |= {level.point.name} | ({level.baseline.name} if level.baseline is not None else set())
        return named

    def to_dict(self) -> dict[str, Any]:
        """The `verdict` entry of pareto.json."""
        return {"recommended": None if self.recommended is None else self.recommended.name, "rule": self.rule,
                "quality": self.quality, "direction": direction(self.quality), "margin": self.margin,
                "levels": [_level_dict(v) for v in self.levels]}


def _num(value: float) -> str:
    return f"{value:.3g}"


def _pm(std: float | None) -> str:
    return f" ± {std:.2g}" if isinstance(std, (int, float)) and math.isfinite(std) and std > 0 else ""


def _level_dict(level: Level) -> dict[str, Any]:
    d = level.difference
    return {"level": level.level, "point": level.point.name, "speedup": level.point.metrics["speedup"],
            "baseline": None if level.baseline is None else level.baseline.name, "standing": level.standing,
            "difference": None if d is None else d.value, "se": None if d is None else d.se,
            "paired": None if d is None else d.paired, "n_draws": None if d is None else d.n_draws,
            "n_images": level.point.metrics.get("images")}


def _quality_metric(records: Sequence[Scored], objectives: Sequence[str]) -> str:
    """The first objective measured with an error (draws or a stored std), else the first objective."""
    measured = [m for m in objectives if any(m in r.draws or std_key(m) in r.metrics for r in records)]
    return (measured or list(objectives))[0]


def _best(records: Sequence[Scored], quality: str) -> Scored:
    """Best on `quality`; among equals, the faster."""
    sign = 1.0 if direction(quality) == "minimize" else -1.0
    return min(records, key=lambda r: (sign * float(r.metrics[quality]), -float(r.metrics["speedup"])))


def _recommend(front: Sequence[Scored], objectives: Sequence[str], quality: str, constraints: Sequence[Constraint],
               baselines: Mapping[str, Mapping[str, float]]) -> tuple[Scored | None, str]:
    if not front:
        return None, "the front is empty (run more trials or relax the constraints)"
    if not constraints:
        return front[knee([p.metrics for p in front], objectives)], "the knee of the front"
    meeting = [p for p in front if all(c.violation(p.metrics, baselines) <= 0 for c in constraints)]
    said = ", ".join(map(str, constraints))
    if not meeting:
        return None, f"no front point meets {said}"
    return _best(meeting, quality), f"the best {quality} meeting {said}"


def caches_nothing(baseline: Scored) -> bool:
    """Whether a baseline is uncached (no cache or fewer steps, with or without the ε rule)."""
    return baseline.params.get("schedule") == "none"


def speed_levels(baselines: Sequence[Scored]) -> list[float]:
    """The distinct MAC speedups of the baselines that cache nothing, slowest first."""
    return sorted({float(b.metrics["speedup"]) for b in baselines if caches_nothing(b)})


def verdict(front: Sequence[Scored], baselines: Sequence[Scored], objectives: Sequence[str], margin: float,
            constraints: Sequence[Constraint] = (), speeds: Sequence[float] | None = None) -> Verdict:
    """The verdict of a search (see the module docstring).

    Args:
        front: the front points (cached schedules), each with metrics incl. `speedup` and `macs`.
        baselines: every baseline; those with params["schedule"] == "none" set the speed levels.
        objectives: the search's objectives; the first one with an error is the quality metric.
        margin: the equivalence margin on the quality metric (`metric.margin`).
        constraints: the search's constraints; when given, the recommendation is the best quality
            meeting them instead of the knee.
        speeds: the speed levels (default: `speed_levels(baselines)`); a confirmed search passes its
            search's baselines' levels, so re-scoring only some baselines does not move them.
    """
    quality = _quality_metric([*front, *baselines], objectives)
    recommended, rule = _recommend(front, objectives, quality, constraints, {b.name: b.metrics for b in baselines})
    uncached = [b for b in baselines if caches_nothing(b)]
    speeds = speed_levels(baselines) if speeds is None else sorted(set(speeds))

    def level_of(point: Scored) -> float | None:
        return next((s for s in speeds if s >= float(point.metrics["speedup"])), None)

    levels = []
    for level in [*speeds, None]:
        here = [p for p in front if level_of(p) == level]
        if not here:
            continue
        point = _best(here, quality)
        cheaper = [b for b in uncached if float(b.metrics["macs"]) <= float(point.metrics["macs"])]
        if not cheaper:
            levels.append(Level(level, point))
            continue
        base = _best(cheaper, quality)
        d = difference(point, base, quality)  # oriented: < 0 = the point is better
        raw = d if direction(quality) == "minimize" else d.negated()
        levels.append(Level(level, point, base, raw, standing(d, margin)))
    return Verdict(recommended, rule, quality, margin, tuple(levels))
