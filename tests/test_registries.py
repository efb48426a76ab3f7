"""Contract tests parametrised from each registry, so a new entry is tested on arrival."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ebtune import make_sampler
from ebtune.cache.adapters import ADAPTERS, DiTAdapter
from ebtune.core.dit import DiT
from ebtune.core.eps_scale import EPS_SCALES
from ebtune.default import data
from ebtune.io.decoders import to_uint8
from ebtune.metrics import InceptionFID
from ebtune.metrics.registry import METRICS, make_metric, metric_class
from ebtune.sampling.samplers import SAMPLER_STEPS, Guidance
from ebtune.schedules import SCHEDULES, CalibrationProbe, ScheduleContext, make_schedule
from ebtune.search.pareto import DIRECTIONS, QUALITY

from .conftest import SMALL, randomised
from .test_adapters import CASES as ADAPTER_CASES

STEPS = 8


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_family_builds_a_valid_schedule_that_runs(name):
    config = dataclasses.replace(SMALL, depth=4)  # the block-groups default has four groups
    model = randomised(DiT(config))
    sampler = make_sampler("ddim", STEPS, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([0, 1])
    extra = {"probe": CalibrationProbe(model, sampler, noise, labels)} if name == "ebcache-calibrated" else {}
    schedule = make_schedule(name, ScheduleContext(STEPS, config.depth, sampler.times), **extra)
    assert (schedule.steps, schedule.depth) == (STEPS, config.depth)
    assert all(schedule.attn[0]) and all(schedule.mlp[0])
    out = sampler.sample(model, noise, labels, schedule)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(EPS_SCALES))
def test_every_eps_scale_has_positive_factors_with_defaults(name):
    rule = EPS_SCALES[name]()
    factors = rule.factors([1.0, 0.7, 0.4, 0.1, 0.0])
    assert all(math.isfinite(f) and f > 0 for f in factors)
    assert factors[0] == pytest.approx(1.0, abs=0.05)  # defaults barely touch the first step


@pytest.mark.parametrize("name", sorted(SAMPLER_STEPS))
def test_every_sampler_is_exact_under_an_all_compute_cache(small_dit, name):
    from ebtune import no_cache

    sampler = make_sampler(name, STEPS, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([0, 1])
    plain = sampler.sample(small_dit, noise, labels, None, torch.Generator().manual_seed(0))
    cached = sampler.sample(small_dit, noise, labels, no_cache(STEPS, SMALL.depth), torch.Generator().manual_seed(0))
    assert torch.equal(plain, cached) and sampler.step.name == name


def test_every_adapter_has_a_contract_case():
    covered = {case.adapter for case in ADAPTER_CASES} | {DiTAdapter}  # DiTAdapter: tests/test_cache.py
    assert covered == {ADAPTERS[name] for name in ADAPTERS}
    assert all(isinstance(getattr(ADAPTERS[name], "family", None), str) and ADAPTERS[name].family == name for name in ADAPTERS)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_declares_itself_and_pairs_its_draws(name):
    cls = metric_class(name)
    assert cls.direction in ("minimize", "maximize") and isinstance(cls.needs_reference, bool)
    assert cls.name not in DIRECTIONS and cls.name != QUALITY  # its key cannot shadow another metric's
    assert (cls.name == "fid") == issubclass(cls, InceptionFID)  # "fid" is the Fréchet Inception Distance only
    if issubclass(cls, InceptionFID):
        return  # needs the converted Inception weights and ImageNet statistics: tests/test_inception.py
    images = to_uint8(data.load_digits_split()[2][:20])
    other = images.copy()
    other[7] = 255 - other[7]  # one image differs
    value, draws = make_metric(name).score_draws(images, 16, 3)
    again, same = make_metric(name).score_draws(images, 16, 3)
    assert math.isfinite(value) and (value, list(draws)) == (again, list(same)) and len(draws) == 16
    # The resampled indices depend only on the seed and the number of images: a resample without image 7
    # scores both sets the same (draws pair up), one with it differs.
    changed = make_metric(name).score_draws(other, 16, 3)[1]
    equal = np.isclose(draws, changed, rtol=0, atol=1e-9)
    assert 0 < equal.sum() < len(draws)
