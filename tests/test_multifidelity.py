"""Successive halving over images: every rung's images are the first images of the full set, and a gate can stop at each."""
from __future__ import annotations

import pytest

from ebtune.cli.config import compose
from ebtune.core.schedule import no_cache
from ebtune.search.evaluator import Evaluator, TrialPruned

TINY = ["model=dit-tiny", "steps=6", "metric.n_samples=20", "metric.batch_size=5", "metric.latency_warmup=0",
        "metric.n_proxy=10", "metric.bootstrap=10", "device=cpu"]


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(compose(TINY, config_name="search"), "cpu")


def test_proxy_is_the_metric_on_the_first_images(evaluator):
    full = evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None)
    assert full.metrics["images"] == 20 and [(r.images, len(r.draws)) for r in full.rungs] == [(10, 10)]
    first = Evaluator(compose([*TINY, "metric.n_samples=10", "metric.n_proxy=0"], config_name="search"), "cpu")
    alone = first.evaluate(no_cache(6, first.loaded.config.depth), None)
    assert full.metrics["quality_proxy"] == alone.metrics["digits-native"]  # same seeds: the same ten images


def test_a_closed_gate_stops_after_the_proxy_images(evaluator):
    seen = []

    def gate(proxy, draws):
        seen.append((proxy, draws))
        return False

    with pytest.raises(TrialPruned) as stopped:
        evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None, gate=gate)
    assert stopped.value.metrics["images"] == 10 and len(seen) == 1 and len(seen[0][1]) == 10
    assert evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None, gate=lambda p, d: True).metrics["images"] == 20


def test_rungs_double_below_the_full_set_and_each_is_the_metric_on_its_first_images():
    ev = Evaluator(compose([*TINY, "metric.n_samples=40"], config_name="search"), "cpu")
    assert ev.rung_sizes == (10, 20)
    seen = []

    def gate(proxy, draws):
        seen.append(int(proxy["proxy_images"]))
        return proxy["proxy_images"] < 20  # keep at the first rung, stop at the second

    with pytest.raises(TrialPruned) as stopped:
        ev.evaluate(no_cache(6, ev.loaded.config.depth), None, gate=gate)
    assert seen == [10, 20] and stopped.value.metrics["images"] == 20
    full = ev.evaluate(no_cache(6, ev.loaded.config.depth), None)
    alone = Evaluator(compose([*TINY, "metric.n_proxy=0"], config_name="search"), "cpu")  # the first 20 images
    assert full.rungs[1].images == 20 and full.rungs[1].value == alone.evaluate(no_cache(6, alone.loaded.config.depth), None).metrics["digits-native"]
    assert stopped.value.metrics["quality_proxy"] == full.rungs[1].value


def test_the_rule_stops_only_where_a_point_that_costs_no_more_is_better_beyond_paired_noise():
    from ebtune.search.evaluator import Rung
    from ebtune.search.halving import ProxyRule

    base = [10.0 + 0.1 * k for k in range(10)]
    better = {"images": 20, "value": 9.0, "draws": [d - 1.0 for d in base]}  # 1.0 better on every draw
    rule = ProxyRule.over([({"macs": 5.0}, [better])])
    mine = {"macs": 5.0, "quality_proxy": 10.0, "proxy_images": 20.0}
    assert rule(mine, base) is False
    assert rule({**mine, "macs": 4.0}, base) is True  # the better point costs more
    assert rule({**mine, "proxy_images": 10.0}, base) is True  # no draws at this rung
    noisy = {**better, "draws": [d - 1.0 + (3.0 if k % 2 else -3.0) for k, d in enumerate(base)]}
    assert ProxyRule.over([({"macs": 5.0}, [noisy])])(mine, base) is True  # within paired noise
    assert Rung.from_attr(better).to_attr() == better
