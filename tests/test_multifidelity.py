"""The first fidelity: the proxy images are the first images of the full set, and a gate can stop there."""
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
    assert full.metrics["images"] == 20 and len(full.proxy_draws) == 10
    first = Evaluator(compose([*TINY, "metric.n_samples=10", "metric.n_proxy=0"], config_name="search"), "cpu")
    alone = first.evaluate(no_cache(6, first.loaded.config.depth), None)
    assert full.metrics["fid_proxy"] == alone.metrics["digits-native"]  # same seeds: the same ten images


def test_a_closed_gate_stops_after_the_proxy_images(evaluator):
    seen = []

    def gate(proxy, draws):
        seen.append((proxy, draws))
        return False

    with pytest.raises(TrialPruned) as stopped:
        evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None, gate=gate)
    assert stopped.value.metrics["images"] == 10 and len(seen) == 1 and len(seen[0][1]) == 10
    assert evaluator.evaluate(no_cache(6, evaluator.loaded.config.depth), None, gate=lambda p, d: True).metrics["images"] == 20
