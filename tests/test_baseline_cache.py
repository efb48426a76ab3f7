"""The content address of a baseline evaluation changes with everything the outcome depends on, and
the store gives back exactly what it was given."""
from __future__ import annotations

import numpy as np
import torch

from ebtune.cli.config import compose
from ebtune.core.schedule import no_cache
from ebtune.search.baseline_cache import BaselineCache, outcome_key, weights_digest
from ebtune.search.evaluator import Evaluator, Outcome, Rung

SMALL = ["model=dit-tiny", "steps=4", "metric.n_samples=8", "metric.batch_size=4", "metric.latency_warmup=0"]


def _evaluator(*overrides: str) -> Evaluator:
    return Evaluator(compose([*SMALL, *overrides], config_name="search"), "cpu")


def test_the_key_follows_weights_images_sampler_and_schedule():
    a, b = _evaluator(), _evaluator()
    schedule = no_cache(4, a.loaded.config.depth)
    key = outcome_key(a, schedule, a.sampler)
    assert outcome_key(b, schedule, b.sampler) == key  # another process's evaluator: the same address
    assert outcome_key(_evaluator("metric.n_samples=12"), schedule, a.sampler) != key
    assert outcome_key(_evaluator("seed=1"), schedule, a.sampler) != key
    assert outcome_key(a, schedule.with_eps_scale([0.99] * 4), a.sampler) != key
    assert outcome_key(a, schedule, a.sampler_at(4, "ddim")) != key
    assert outcome_key(_evaluator("model.fid=digits"), schedule, a.sampler) != key  # another quality metric
    before = weights_digest(b.loaded.model)
    with torch.no_grad():
        next(b.loaded.model.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(b.loaded.model) != before


def test_store_then_load_gives_the_outcome_back(tmp_path):
    rng = np.random.default_rng(0)
    outcome = Outcome({"fid": 1.5, "macs": 2e9}, rng.normal(size=(2, 4, 8, 8)), rng.integers(0, 255, (2, 4, 4, 1), dtype=np.uint8),
                      (Rung(10, 1.5, (1.0, 2.0)),), (1.5, 1.25, 1.75))
    cache = BaselineCache(tmp_path / "store")
    assert cache.load("k") is None
    cache.store("k", outcome)
    got = cache.load("k")
    assert got.metrics == outcome.metrics and got.rungs == outcome.rungs
    assert got.quality_draws == outcome.quality_draws
    np.testing.assert_array_equal(got.latents, outcome.latents)
    np.testing.assert_array_equal(got.grid, outcome.grid)
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["k.npz"]


