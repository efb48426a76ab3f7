"""Gap-based pruning: the rule on constructed gap records, the statistic and its paired draws, the
ε-norm observer against an independent record of the loop, and the gate inside an evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebtune.cli.config import compose
from ebtune.core.schedule import no_cache
from ebtune.diagnostics.recording import EpsNormRecorder, StepRecorder, image_rms
from ebtune.errors import ConfigError
from ebtune.sampling.samplers import Guidance, make_sampler
from ebtune.schedules import ScheduleContext, fora
from ebtune.search.evaluator import Evaluator, TrialPruned
from ebtune.search.gap_gate import GapGate, GapRecord, check_gap_prune, gap_beaten, gap_draws, gap_statistic

STEPS = 6
TINY = ["model=dit-tiny", f"steps={STEPS}", "metric.n_samples=20", "metric.batch_size=5", "metric.latency_warmup=0",
        "metric.n_proxy=10", "metric.bootstrap=10", "device=cpu"]


def _record(gap: float, spread: float, macs: float = 1.0, quality_proxy: float = 10.0, steps: int = 50, seed: int = 0):
    # Draws of one evaluation: a shared component (the images both evaluations resample alike) plus
    # this evaluation's own part of size `spread`.
    shared = np.random.default_rng(0).normal(0, 0.01, 30)
    own = np.random.default_rng(seed + 1).normal(0, spread, 30)
    return GapRecord(gap, tuple(gap + shared + own), macs, quality_proxy, steps)


def test_prunes_a_gap_beyond_noise_of_a_cheaper_no_worse_point():
    known = _record(0.020, 0.001, macs=0.5)
    assert gap_beaten(_record(0.030, 0.001, seed=1), [known])


def test_keeps_a_gap_within_noise():
    known = _record(0.020, 0.002, macs=0.5)
    assert not gap_beaten(_record(0.0205, 0.002, seed=1), [known])


def test_never_prunes_without_a_reference_point():
    assert not gap_beaten(_record(1.0, 0.001), [])


@pytest.mark.parametrize("why, known", [
    ("costs more", _record(0.02, 0.001, macs=2.0)),
    ("worse proxy quality", _record(0.02, 0.001, macs=0.5, quality_proxy=11.0)),
    ("other step count", _record(0.02, 0.001, macs=0.5, steps=25)),
])
def test_a_smaller_gap_alone_does_not_prune(why, known):
    assert not gap_beaten(_record(0.05, 0.001, seed=1), [known]), why


def test_gap_statistic_is_the_mean_absolute_profile():
    norms = np.array([[1.0, 2.0, 0.5], [3.0, 2.0, 0.7]])  # (N=2, K=3)
    reference = np.array([2.5, 1.0, 0.6])
    # mean over images: (2.0, 2.0, 0.6) → |G| = (0.5, 1.0, 0.0)
    assert gap_statistic(norms, reference) == pytest.approx(0.5)


def test_draws_are_paired_across_evaluations():
    rng = np.random.default_rng(3)
    norms = 1 + 0.1 * rng.standard_normal((16, 5))
    reference = np.full(5, 0.5)
    shifted = norms + 0.05  # every image 0.05 further from the reference at every step
    a, b = np.array(gap_draws(norms, reference, 20, seed=7)), np.array(gap_draws(shifted, reference, 20, seed=7))
    assert np.allclose(b - a, 0.05) and np.std(a) > 0  # same resamples: the difference carries no bootstrap noise


def test_gap_prune_needs_real_data_and_the_first_fidelity():
    check_gap_prune({"gap_prune": True, "n_proxy": 8}, "digits")
    check_gap_prune({"gap_prune": False, "n_proxy": 8}, "vae")  # off (the default): nothing to check
    with pytest.raises(ConfigError, match="metric.gap_prune=false"):
        check_gap_prune({"gap_prune": True, "n_proxy": 8}, "vae")
    with pytest.raises(ConfigError, match="metric.n_proxy"):
        check_gap_prune({"gap_prune": True, "n_proxy": 0}, "digits")


def test_eps_norm_recorder_matches_the_loop_record(small_dit):
    cfg = small_dit.config
    sampler = make_sampler("ddpm", 4, Guidance(scale=1.5, null_label=cfg.num_classes))
    schedule = fora(ScheduleContext(4, cfg.depth, sampler.times), interval=2).with_eps_scale([1.0, 0.9, 1.1, 0.95])
    C = cfg.in_channels
    noise = torch.randn(3, C, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    with EpsNormRecorder(small_dit, sampler, C, schedule.eps_scale) as norms, StepRecorder(small_dit, sampler, C) as steps:
        sampler.sample(small_dit, noise[:2], labels[:2], schedule, torch.Generator().manual_seed(1))
        sampler.sample(small_dit, noise[2:], labels[2:], schedule, torch.Generator().manual_seed(2))
    per_image = norms.per_image()
    expected = np.concatenate([np.stack([image_rms(steps.eps[b * 4 + i]).numpy() * schedule.eps_scale[i]
                                         for i in range(4)], axis=1) for b in range(2)])
    assert per_image.shape == (3, 4) and np.allclose(per_image, expected)


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(compose(TINY, config_name="search"), "cpu")


def _gate(evaluator, known, fid_keep=lambda proxy, draws: True):
    reference = np.ones(STEPS)  # any fixed ‖ε‖_i: the rule compares trials against each other
    return GapGate(fid_keep, known, reference, evaluator.loaded.config.in_channels, evaluator.n_proxy,
                   evaluator.bootstrap, evaluator.seed)


def test_gate_records_the_proxy_gap_and_prunes_against_a_better_cheaper_point(evaluator):
    depth = evaluator.loaded.config.depth
    first = _gate(evaluator, [])
    outcome = evaluator.evaluate(no_cache(STEPS, depth), None, gate=first)
    assert outcome.metrics["images"] == 20 and first.record is not None
    assert outcome.metrics["eps_gap"] == first.record.gap and len(first.record.draws) == evaluator.bootstrap
    better = GapRecord(first.record.gap - 1.0, tuple(d - 1.0 for d in first.record.draws), 0.0,
                       -np.inf, STEPS)  # cheaper, better proxy, a far smaller gap
    with pytest.raises(TrialPruned) as stopped:
        evaluator.evaluate(no_cache(STEPS, depth), None, gate=_gate(evaluator, [better]))
    assert stopped.value.metrics["images"] == 10 and "eps_gap" in stopped.value.metrics
    with pytest.raises(TrialPruned):  # the FID rule alone still stops a trial
        evaluator.evaluate(no_cache(STEPS, depth), None, gate=_gate(evaluator, [], fid_keep=lambda p, d: False))
