"""Baselines under successive halving: cheapest first, a baseline stops only where one that costs no
more (and, for an uncached one, caches nothing) is better on the same images beyond paired noise, and
no cache and the protected names always run in full."""
from __future__ import annotations

import numpy as np
import pytest

from ebtune.cli.config import compose
from ebtune.search.baseline_cache import BaselineCache
from ebtune.search.baselines import NO_CACHE, evaluate_baselines, plan
from ebtune.search.evaluator import Evaluator
from ebtune.search.pareto import NOISE_Z

SETTINGS = ["model=dit-tiny", "steps=8", "metric.n_samples=40", "metric.batch_size=10", "metric.latency_warmup=0",
            "metric.n_proxy=10", "metric.bootstrap=20", "metric.latency_pairs=0", "space=intervals",
            "search.baseline_samplers=[ddim]", "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> BaselineCache:
    return BaselineCache(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def evaluated(store):
    evaluator = Evaluator(compose(SETTINGS, config_name="search"), "cpu")
    results, _ = evaluate_baselines(evaluator, plan(evaluator), progress=None, protected={"ddpm-1"}, cache=store)
    return evaluator, results


def _beaten(mine, theirs, size: int) -> bool:
    """Independent check: the paired draws of (theirs - mine) at `size` images lie below -NOISE_Z spreads."""
    a = next(r for r in theirs.rungs if r.images == size)
    b = next(r for r in mine.rungs if r.images == size)
    diff = np.asarray(a.draws) - np.asarray(b.draws)
    return a.value - b.value < -NOISE_Z * float(np.std(diff, ddof=1))


def test_cheapest_first_and_every_stop_is_justified(evaluated):
    evaluator, results = evaluated
    names = [b.name for b, _ in results]
    macs = [o.metrics["macs"] for _, o in results]
    assert names[0] == NO_CACHE and macs[1:] == sorted(macs[1:])
    stopped = [(k, b, o) for k, (b, o) in enumerate(results) if o.pruned]
    assert stopped, "no baseline stopped: the test would prove nothing; pick settings where one does"
    for k, base, outcome in stopped:
        size = int(outcome.metrics["proxy_images"])
        assert outcome.metrics["images"] < evaluator.n_samples and outcome.latents.size == 0
        rivals = [o for b, o in results[:k] if o.metrics["macs"] <= outcome.metrics["macs"]
                  and (base.caches or not b.caches) and any(r.images == size for r in o.rungs)]
        assert any(_beaten(outcome, o, size) for o in rivals), base.name


def test_no_cache_and_protected_baselines_run_in_full(evaluated):
    evaluator, results = evaluated
    full = {b.name: o for b, o in results if not o.pruned}
    assert {NO_CACHE, "ddpm-1"} <= set(full)
    assert full[NO_CACHE].metrics["images"] == full["ddpm-1"].metrics["images"] == evaluator.n_samples
    # The strongest uncached baseline at each cost is never stopped: a stopped uncached one always has
    # a cheaper-or-equal uncached baseline that finished and is at least as good on the full set.
    for base, outcome in results:
        if outcome.pruned and not base.caches:
            cheaper = [o for b, o in results if not b.caches and not o.pruned and o.metrics["macs"] <= outcome.metrics["macs"]]
            assert cheaper, base.name


def test_the_store_gives_a_stopped_baseline_back_only_where_it_stops_again(evaluated, store):
    evaluator, results = evaluated
    reused: dict[str, bool] = {}
    again, _ = evaluate_baselines(evaluator, plan(evaluator), lambda b, _s, _p, _o, r: reused.__setitem__(b.name, r),
                                  progress=None, protected={"ddpm-1"}, cache=store)
    assert all(reused.values()) and [o.pruned for _, o in again] == [o.pruned for _, o in results]
    stopped = next(b.name for b, o in results if o.pruned)
    reused.clear()
    third, _ = evaluate_baselines(evaluator, plan(evaluator), lambda b, _s, _p, _o, r: reused.__setitem__(b.name, r),
                                  progress=None, protected={"ddpm-1", stopped}, cache=store)
    now = dict((b.name, o) for b, o in third)
    assert reused[stopped] is False and not now[stopped].pruned  # protected now: it runs in full
    assert now[stopped].metrics["images"] == evaluator.n_samples
