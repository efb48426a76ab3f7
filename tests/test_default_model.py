"""The embedded dit-tiny: shipped weights load and sample digits; training is reproducible from a seed."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ebtune.cli.config import compose
from ebtune.default.train import TINY_CONFIG, TrainConfig, train_dit
from ebtune.metrics.fid import classifier_accuracy
from ebtune.run.factory import model_spec, sampler_from
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model


def _tiny(overrides=()):
    cfg = compose(["model=dit-tiny", *overrides])
    spec = model_spec(cfg["model"])
    return cfg, spec, load_model(spec)


def test_shipped_weights_sample_recognisable_digits():
    cfg, spec, loaded = _tiny(["steps=20", "sampler=ddim"])
    assert loaded.config == TINY_CONFIG
    labels = class_balanced_labels(40, 10)
    out = generate(loaded, sampler_from(cfg, spec), None, labels, seed=0)
    assert out.images.shape == (40, 16, 16, 1)
    # A broken or untrained model lands near chance (10 %).
    assert classifier_accuracy(out.images, out.labels) >= 0.7


def test_sampling_is_deterministic_per_seed():
    cfg, spec, loaded = _tiny(["steps=8"])
    sampler = sampler_from(cfg, spec)
    labels = class_balanced_labels(6, 10)
    a = generate(loaded, sampler, None, labels, seed=3, batch_size=4).images
    b = generate(loaded, sampler, None, labels, seed=3, batch_size=4).images
    c = generate(loaded, sampler, None, labels, seed=4, batch_size=4).images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_training_is_reproducible_from_a_seed():
    cfg = TrainConfig(steps=3, batch_size=8, warmup=1)
    small = dataclasses.replace(TINY_CONFIG, hidden_size=16, depth=1, num_heads=2)
    first = train_dit(cfg, small, log=lambda _: None).state_dict()
    again = train_dit(cfg, small, log=lambda _: None).state_dict()
    other = train_dit(dataclasses.replace(cfg, seed=1), small, log=lambda _: None).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
