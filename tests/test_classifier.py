"""The digits classifier behind the `digits` FID: shipped weights, accuracy, training determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ebtune.core.uint8 import quantize
from ebtune.default import classifier, data


@pytest.fixture(scope="module")
def split():
    return data.load_digits_split()


def test_shipped_files_are_small():
    for name in (classifier.CLASSIFIER_FILE, classifier.TRAIN_STATS_FILE):
        path = classifier.WEIGHTS_DIR / name
        assert path.is_file(), path
        assert path.stat().st_size < 2 * 1024 * 1024


def test_shipped_classifier_held_out_accuracy(split):
    _, _, x_test, y_test = split
    model = classifier.load_classifier()
    # Through uint8, the path generated images take.
    acc = classifier.accuracy(model, classifier.from_uint8(quantize(x_test)), y_test)
    assert acc >= 0.97


def test_features_feed_the_logits(split):
    x = split[2][:16]
    model = classifier.load_classifier()
    with torch.no_grad():
        h = model.features(x)
        logits = model(x)
    assert h.shape == (16, classifier.FEATURE_DIM)
    assert (h >= 0).all()
    torch.testing.assert_close(logits, h @ model.head.weight.T + model.head.bias)


def test_shipped_statistics_match_the_shipped_classifier(split):
    x_train = split[0]
    model = classifier.load_classifier()
    with torch.no_grad():
        feats = model.features(classifier.from_uint8(quantize(x_train))).double().numpy()
    with np.load(classifier.WEIGHTS_DIR / classifier.TRAIN_STATS_FILE) as f:
        mu, sigma = f["mu"], f["sigma"]
    np.testing.assert_allclose(mu, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-6)


def test_uint8_round_trip_matches_dit_quantization():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5])
    q = quantize(x)
    assert q.tolist() == [0, 64, 128, 255, 255, 255]
    back = classifier.from_uint8(q[None, None, None].expand(1, 3, 1, 6))
    assert back.shape == (1, 1, 1, 6)
    assert (back[0, 0, 0, :3] - x[:3]).abs().max() <= 1 / 127.5


def test_random_shift_moves_by_at_most_one_pixel():
    x = torch.rand(32, 1, 16, 16) * 2 - 1
    out = classifier.random_shift(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    shifts = torch.stack([padded[:, :, dy:dy + 16, dx:dx + 16] for dy in range(3) for dx in range(3)])  # (9, N, 1, 16, 16)
    matches = (shifts == out[None]).flatten(2).all(dim=2)  # (9, N)
    assert matches.any(dim=0).all()
    assert not matches[4].all(), "no image was shifted"


def test_training_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = classifier.train_classifier(seed=3, epochs=1)
    b = classifier.train_classifier(seed=3, epochs=1)
    c = classifier.train_classifier(seed=4, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert not a.training


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_shipped_files"):
        classifier.load_classifier(tmp_path / "absent.safetensors")
