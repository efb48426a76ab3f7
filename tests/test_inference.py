"""Paired inference: the paired error, TOST at its boundary, every relation word, the draws an
evaluation keeps, and a front that drops only what a person could not tell apart."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ebtune.search.inference import (
    BETTER, EQUIVALENT, INCONCLUSIVE, WORSE, Z_95, Difference, Scored, equivalence_margin, paired_difference,
    standing,
)
from ebtune.search.pareto import MIRROR, RELATIONS, distinct_front, relation

QUALITY = ["fid", "macs"]


def _shared_draws(seed: int = 0, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Two draw sets that share most of their spread, as two evaluations on the same images do."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 2.0, n)
    return 20 + common + rng.normal(0, 0.1, n), 21 + common + rng.normal(0, 0.1, n)


def test_paired_error_is_the_std_of_the_draws_differences():
    a, b = _shared_draws()
    d = paired_difference(a, b, 20.0, 21.5)
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    expected = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    assert d.paired and d.n_draws == 50 and d.value == -1.5
    assert d.se == pytest.approx(expected, rel=1e-12)
    assert d.se < 0.1 * math.hypot(np.std(a, ddof=1), np.std(b, ddof=1))  # what pairing buys


@pytest.mark.parametrize("draws_b", [(), (1.0, 2.0, 3.0)])
def test_without_matching_draws_the_independent_errors_combine(draws_b):
    d = paired_difference((1.0, 2.0), draws_b, 10.0, 9.0, std_a=0.3, std_b=0.4)
    assert not d.paired and d.n_draws == 0 and d.value == 1.0 and d.se == pytest.approx(0.5)


def test_a_point_without_any_error_is_exact():
    assert paired_difference((), (), 3.0, 1.0, math.nan, math.nan) == Difference(2.0, 0.0, 0)


@pytest.mark.parametrize("value,se,margin,expected", [
    (0.0, 1.0, Z_95 * 1.0 + 1e-9, EQUIVALENT),  # the 90 % interval just inside (−m, m)
    (0.0, 1.0, Z_95 * 1.0 - 1e-9, INCONCLUSIVE),  # just outside: not shown equivalent, nor different
    (0.5, 0.1, 0.5 + Z_95 * 0.1 + 1e-9, EQUIVALENT),  # resolved as worse, but shown smaller than the margin
    (0.5, 0.1, 0.5 + Z_95 * 0.1 - 1e-9, WORSE),
    (-Z_95 * 0.2 - 1e-9, 0.2, 0.0, BETTER),  # upper bound just below 0
    (-Z_95 * 0.2 + 1e-9, 0.2, 0.0, INCONCLUSIVE),
    (Z_95 * 0.2 + 1e-9, 0.2, 0.0, WORSE),
])
def test_tost_and_one_sided_bounds_at_their_boundaries(value, se, margin, expected):
    assert standing(Difference(value, se, 50), margin) == expected


def test_the_margin_comes_from_the_config_and_is_checked():
    from ebtune.cli.config import compose
    from ebtune.errors import ConfigError

    assert equivalence_margin(compose([], config_name="search")["metric"]) == 1.5
    assert equivalence_margin({"margin": 0}) == 0.0
    for bad in ({"margin": -1}, {"margin": "big"}, {}, {"margin": math.nan}):
        with pytest.raises(ConfigError, match="metric.margin"):
            equivalence_margin(bad)


def _point(fid: float, macs: float, draws: np.ndarray | None = None, std: float = 1.0) -> Scored:
    return Scored({"fid": fid, "fid_std": std, "macs": macs}, {} if draws is None else {"fid": tuple(draws)})


BASE_DRAWS = np.random.default_rng(1).normal(20, 1.5, 50)
BASE = _point(20.0, 10.0, BASE_DRAWS)
# Each relation word from a hand-made point against BASE (draws shifted by the fid difference plus a
# little independent noise, so the paired error is ≈ 0.1 and the independent one ≈ 2.1).
TINY = np.random.default_rng(2).normal(0, 0.1, 50)
CASES = {
    "dominates": _point(18.0, 10.0, BASE_DRAWS - 2 + TINY),
    "equivalent at lower cost": _point(20.3, 5.0, BASE_DRAWS + 0.3 + TINY),
    "equivalent": _point(19.8, 10.0, BASE_DRAWS - 0.2 + TINY),
    "trade-off": _point(23.0, 5.0, BASE_DRAWS + 3 + TINY),
    "inconclusive": _point(21.0, 5.0),  # no draws: the independent errors cannot resolve 1.0
    "equivalent at higher cost": _point(20.1, 12.0, BASE_DRAWS + 0.1 + TINY),
    "worse": _point(22.0, 10.0, BASE_DRAWS + 2 + TINY),
}


@pytest.mark.parametrize("word", RELATIONS)
def test_every_relation_word_is_reached(word):
    assert relation(CASES[word], BASE, QUALITY, margin=1.0) == word


def test_relations_mirror():
    for a, b in itertools.permutations(list(CASES.values()) + [BASE], 2):
        assert relation(b, a, QUALITY, 1.0) == MIRROR[relation(a, b, QUALITY, 1.0)]


def test_pairing_resolves_what_independent_errors_cannot():
    unpaired = _point(21.0, 5.0)
    paired = _point(21.0, 5.0, BASE_DRAWS + 1 + TINY)
    assert relation(unpaired, BASE, QUALITY, 0.5) == "inconclusive"
    assert relation(paired, BASE, QUALITY, 0.5) == "trade-off"  # worse beyond noise, and cheaper
    assert relation(paired, BASE, QUALITY, 1.5) == "equivalent at lower cost"


def test_a_maximised_cost_and_no_measured_objective():
    fast, slow = {"fid": 20.0, "speedup": 2.0}, {"fid": 20.0, "speedup": 1.0}
    assert relation(Scored(fast), Scored(slow), ["fid", "speedup"], 1.0) == "dominates"  # no error: classic words
    assert relation(slow, fast, ["fid", "speedup"], 1.0) == "worse"


def test_a_chain_of_equivalences_keeps_every_point_a_kept_one_differs_from():
    # Each point is equivalent to its cheaper neighbour, 0 and 2 and 4 differ by 1.6 (beyond the margin).
    noise = np.random.default_rng(3).normal(0, 0.05, (5, 50))
    points = [_point(10.0 + 0.8 * i, 10.0 - i, BASE_DRAWS + 0.8 * i + noise[i]) for i in range(5)]
    assert distinct_front(points, QUALITY, margin=1.0) == [0, 2, 4]
    assert distinct_front(points, QUALITY, margin=0.0) == [0, 1, 2, 3, 4]  # no margin: all trade-offs


def test_a_dominated_point_leaves_the_front_and_a_non_finite_one_never_enters():
    points = [BASE, CASES["worse"], _point(math.nan, 1.0)]
    assert distinct_front(points, QUALITY, margin=0.0) == [0]


def test_an_evaluation_keeps_draws_that_pair_with_another():
    from ebtune.cli.config import compose
    from ebtune.core.schedule import Schedule, no_cache
    from ebtune.search.evaluator import Evaluator

    cfg = compose(["model=dit-tiny", "steps=6", "metric.n_samples=20", "metric.batch_size=10", "metric.latency_warmup=0",
                   "metric.n_proxy=0", "metric.bootstrap=12", "device=cpu"], config_name="search")
    evaluator = Evaluator(cfg, "cpu")
    full = evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None)
    every_other = [i % 2 == 0 for i in range(6)]  # FORA(2): compute at even steps, reuse at odd ones
    reuse = Schedule.from_step_masks(every_other, every_other, evaluator.loaded.config.depth)
    cached = evaluator.evaluate(reuse, None)
    assert len(full.quality_draws) == 12 and np.std(full.quality_draws, ddof=1) == pytest.approx(full.metrics["digits-native_std"])
    d = paired_difference(cached.quality_draws, full.quality_draws, cached.metrics["digits-native"], full.metrics["digits-native"])
    assert d.paired and d.se < math.hypot(cached.metrics["digits-native_std"], full.metrics["digits-native_std"])
