"""Paired latency: each timed trial batch is paired with an uncached run of the same batch, back to back,
so a slowdown that hits both cancels in `latency_speedup`.

The clock is faked: `generate` really samples, but reports seconds = cost of the run × the machine's
load at that moment (as when another trial starts), so the expected ratios are exact.
"""
from __future__ import annotations

import dataclasses

import pytest

from ebtune.cli.config import compose
from ebtune.core.schedule import no_cache
from ebtune.errors import ConfigError
from ebtune.schedules import make_schedule
from ebtune.search import evaluator as evaluator_module
from ebtune.search.evaluator import Evaluator, Reference

STEPS = 6
# Warm-up 0: calls 0,1 are pair 1 (reference, trial), calls 2,3 pair 2, call 4 the unpaired third batch.
TINY = ["model=dit-tiny", f"steps={STEPS}", "metric.n_samples=6", "metric.batch_size=2", "metric.latency_warmup=0",
        "metric.n_proxy=0", "metric.bootstrap=0", "device=cpu"]


def _evaluator(pairs: int | None, objectives: str | None = None, constraints: str | None = None,
               n_samples: int = 6) -> Evaluator:
    extra = [f"search.objectives={objectives}"] * bool(objectives) + [f"search.constraints={constraints}"] * bool(constraints)
    cfg = compose([*TINY, *extra, f"metric.n_samples={n_samples}"], config_name="search")
    if pairs is not None:
        cfg["metric"]["latency_pairs"] = pairs
    return Evaluator(cfg, "cpu")


class FakeClock:
    """`generate` with its seconds replaced by cost × load: cost = steps × share of branches computed,
    load = `loads[k]` for the k-th call since `start` (1 once they run out). Records (steps, share)."""

    def __init__(self, real):
        self.real, self.calls, self.loads = real, [], []

    def start(self, *loads: float) -> None:
        self.calls, self.loads = [], list(loads)

    def __call__(self, loaded, sampler, cache, labels, seed, batch_size, reference_steps=None):
        out = self.real(loaded, sampler, cache, labels, seed, batch_size, reference_steps)
        computed = sum(map(sum, cache.schedule.attn)) + sum(map(sum, cache.schedule.mlp))
        share = computed / (2 * cache.schedule.steps * cache.schedule.depth)
        load = self.loads[len(self.calls)] if len(self.calls) < len(self.loads) else 1.0
        self.calls.append((sampler.steps, share))
        return dataclasses.replace(out, seconds=sampler.steps * share * load)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock(evaluator_module.generate)
    monkeypatch.setattr(evaluator_module, "generate", fake)
    return fake


def _fora2(ev: Evaluator):
    return make_schedule("fora", ev.ctx, interval=2)


def _reference(ev: Evaluator) -> Reference:
    """The no-cache reference as a search makes it, measured alone (load 1): latency 6 steps × share 1."""
    outcome = ev.evaluate(ev.no_cache, None)
    assert outcome.metrics["latency_s"] == STEPS
    return Reference(outcome.latents, outcome.metrics["latency_s"])


def test_a_slowdown_shared_by_a_pair_cancels(clock):
    ev = _evaluator(pairs=2)
    reference = _reference(ev)
    clock.start(2, 2, 5, 5, 9)  # the machine gets busier pair by pair
    metrics = ev.evaluate(_fora2(ev), reference).metrics
    # Reference, trial, reference, trial, then the third trial batch alone.
    assert [share for _, share in clock.calls] == [1.0, 0.5, 1.0, 0.5, 0.5]
    assert metrics["latency_speedup"] == pytest.approx(2.0)  # FORA(2) computes half: loads 2 and 5 cancel
    assert metrics["latency_s"] == pytest.approx(STEPS * 0.5 * 5)  # the trial's own: median of loads 2, 5, 9


def test_unpaired_latency_divides_a_quiet_reference_by_a_loaded_trial(clock):
    ev, paired = _evaluator(pairs=0), _evaluator(pairs=2)
    reference = _reference(ev)
    clock.start(3, 3, 3)  # a concurrent trial triples every run
    assert ev.evaluate(_fora2(ev), reference).metrics["latency_speedup"] == pytest.approx(2.0 / 3)
    assert len(clock.calls) == 3  # no reference runs
    clock.start(3, 3, 3, 3, 3)
    assert paired.evaluate(_fora2(paired), reference).metrics["latency_speedup"] == pytest.approx(2.0)


def test_fewer_steps_are_paired_with_the_full_step_reference(clock):
    ev = _evaluator(pairs=1)
    reference = _reference(ev)
    clock.start()
    metrics = ev.evaluate(no_cache(3, ev.loaded.config.depth), reference, ev.sampler_at(3)).metrics
    assert clock.calls[:2] == [(STEPS, 1.0), (3, 1.0)]
    assert metrics["latency_speedup"] == pytest.approx(STEPS / 3)


def test_default_pairs_and_the_reference_itself(clock):
    # auto (conf/search.yaml): MACs-ranked on CPU, latency only reported -> one pair
    assert _evaluator(pairs=None).pairs == evaluator_module.LATENCY_PAIRS_REPORTED == 1
    ev = _evaluator(pairs=None, objectives="[quality,latency_s]")  # ranked by latency: LATENCY_PAIRS, capped at 3 timed batches
    assert evaluator_module.LATENCY_PAIRS > 3 and ev.pairs == 3 and _evaluator(pairs=1).pairs == 1
    assert _evaluator(pairs=None, constraints="['latency_s <= 1.0']").pairs == 3
    assert ev.provenance()["latency"]["paired_batches"] == [3, 3]
    clock.start()
    assert ev.evaluate(ev.no_cache, None).metrics["latency_speedup"] == 1.0
    assert len(clock.calls) == 3  # the reference is not paired with itself


@pytest.mark.parametrize("value", [-1, 1.5, "two", True])
def test_bad_latency_pairs_is_a_config_error(value):
    with pytest.raises(ConfigError, match="metric.latency_pairs"):
        _evaluator(pairs=value)


def test_auto_pairs_more_only_while_the_ratios_disagree(clock):
    ev = _evaluator(pairs=None, objectives="[quality,latency_s]", n_samples=16)  # 8 timed batches
    assert (ev.pairs, ev.max_pairs) == (evaluator_module.LATENCY_PAIRS, 8)
    reference = _reference(ev)
    clock.start()  # a steady machine: every pair says 2.0, so the fewest pairs settle it
    assert ev.evaluate(_fora2(ev), reference).metrics["latency_speedup"] == pytest.approx(2.0)
    assert [share for _, share in clock.calls].count(1.0) == evaluator_module.LATENCY_PAIRS
    # A jittery machine: the pairs' reference runs are slowed so that the pairs say these ratios.
    jitter = [x for r in (2.0, 3.0, 2.2, 2.8, 2.4, 2.6, 2.1, 2.9) for x in (r / 2, 1.0)]
    clock.start(*jitter)
    metrics = ev.evaluate(_fora2(ev), reference).metrics
    assert [share for _, share in clock.calls].count(1.0) == 8  # paired every timed batch
    assert metrics["latency_speedup"] == pytest.approx(2.5)
    fixed = _evaluator(pairs=2, objectives="[quality,latency_s]", n_samples=16)
    clock.start(*jitter)
    fixed.evaluate(_fora2(fixed), reference)
    assert [share for _, share in clock.calls].count(1.0) == 2  # a number is exact


def test_median_rel_error_ignores_one_outlying_pair():
    steady = [2.0, 2.02, 1.98, 2.01, 1.99]
    assert evaluator_module.median_rel_error(steady) < 0.01
    assert evaluator_module.median_rel_error([*steady, 5.0]) < 0.01  # one slow moment does not force more pairs
    assert evaluator_module.median_rel_error([2.0]) == float("inf")
