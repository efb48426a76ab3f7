"""Successive halving over images: the rule that stops an evaluation at a rung.

Every evaluation of a search samples the same seeds and labels, so the first r images of two
evaluations are paired image for image, and each rung's bootstrap draws resample the same indices.
At each rung (`Evaluator.rung_sizes`: n_proxy, 2 n_proxy, ... images) an evaluation stops when a
point already evaluated that costs no more is better on the same images beyond NOISE_Z paired
standard errors: it cannot then reach the front (trials), or be the strongest schedule at its cost
(baselines). Trials face every evaluated point; `ebtune.search.baselines` picks whom a baseline faces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ebtune.search.evaluator import Rung
from ebtune.search.inference import paired_difference
from ebtune.search.pareto import NOISE_Z


@dataclass(frozen=True)
class ProxyRule:
    """The successive-halving rule: at each rung (the first n_proxy, 2 n_proxy, ... images) stop an
    evaluation when an evaluated point that costs no more (a baseline or a finished trial) is better
    on those same images beyond NOISE_Z paired standard errors: it cannot then reach the front. Every
    evaluation draws the same images' seeds and the same bootstrap resamples, so the error of a
    difference is the spread of the paired draws' differences, which cancels the small-sample
    bias and most of the noise both share. The proxy is the quality metric itself on fewer
    images, not the distance to the uncached output: ε scaling moves samples away from the
    uncached ones while improving them.

    Args:
        known: (macs, rungs) of every evaluated point with paired rung draws.
        sign: +1 when the quality metric is lower-is-better, -1 when higher-is-better.
    """

    known: tuple[tuple[float, tuple[Rung, ...]], ...] = field(repr=False)
    sign: float = 1.0

    @classmethod
    def over(cls, points: Sequence[tuple[Mapping[str, float], Sequence[Mapping[str, Any]]]],
             direction: str = "minimize") -> "ProxyRule":
        """The rule over evaluated points given as (metrics, stored rungs) pairs, for a metric with `direction`."""
        return cls(tuple((float(m["macs"]), tuple(Rung.from_attr(r) for r in rungs)) for m, rungs in points if rungs),
                   sign_of(direction))

    def __call__(self, proxy: dict[str, float], draws: list[float]) -> bool:
        size = int(proxy["proxy_images"])
        for macs, rungs in self.known:
            for rung in (r for r in rungs if r.images == size and macs <= proxy["macs"]):
                d = paired_difference(rung.draws, draws, rung.value, proxy["quality_proxy"])
                if d.paired and self.sign * d.value < -NOISE_Z * d.se:  # the known point is better
                    return False
        return True


def sign_of(direction: str) -> float:
    """+1 for a lower-is-better metric, -1 for a higher-is-better one: sign × (theirs − mine) < 0 means theirs is better."""
    return 1.0 if direction == "minimize" else -1.0
