"""Fréchet distances through torch-fidelity with the digits extractor, the metric registry and classifier accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ebtune.default import classifier, data
from ebtune.io.decoders import to_uint8
from ebtune.metrics import (
    DigitsFD,
    FrechetMetric,
    InceptionFID,
    Metric,
    classifier_accuracy,
    frechet_between,
    make_metric,
    register_digits_extractor,
)
from ebtune.metrics.fid import DigitsFeatureExtractor


@pytest.fixture(scope="module")
def real():
    x_train, _, x_test, y_test = data.load_digits_split()
    return to_uint8(x_train), to_uint8(x_test), y_test.numpy()


@pytest.fixture(scope="module")
def evaluator():
    return DigitsFD()


def _noised(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def test_fid_of_a_set_against_itself_is_zero(real, evaluator):
    _, test, _ = real
    assert abs(frechet_between(test, test, evaluator)) < 1e-6
    # The shipped reference is the train split's own statistics.
    assert abs(evaluator.distance(real[0])) < 1e-6


def test_noise_raises_fid_monotonically(real, evaluator):
    _, test, _ = real
    clean, mild, strong = (evaluator.distance(_noised(test, s)) if s else evaluator.distance(test) for s in (0, 25, 60))
    assert 0 < clean < mild < strong
    assert strong > 10 * clean


def test_mode_dropping_raises_fid(real, evaluator):
    _, test, labels = real
    assert evaluator.distance(test[labels < 5]) > 10 * evaluator.distance(test)


def test_fid_matches_the_formula(real, evaluator):
    # Independent of torch-fidelity: numpy moments and scipy's matrix square root.
    _, test, _ = real
    feats = evaluator.features(test).astype(np.float64)
    mu, sigma = feats.mean(axis=0), np.cov(feats, rowvar=False)
    ref = evaluator.reference_statistics()
    covmean = scipy.linalg.sqrtm(sigma @ ref["sigma"]).real
    expected = np.sum((mu - ref["mu"]) ** 2) + np.trace(sigma + ref["sigma"] - 2 * covmean)
    assert evaluator.distance(test) == pytest.approx(expected, rel=1e-4)


def test_features_are_the_classifier_penultimate_layer(real, evaluator):
    _, test, _ = real
    model = classifier.load_classifier()
    with torch.no_grad():
        expected = model.features(classifier.from_uint8(torch.from_numpy(test[:50]).permute(0, 3, 1, 2))).numpy()
    feats = evaluator.features(test[:50])
    assert feats.shape == (50, classifier.FEATURE_DIM)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


def test_grey_and_rgb_give_the_same_features(real, evaluator):
    _, test, _ = real
    np.testing.assert_array_equal(evaluator.features(test[:20]), evaluator.features(np.repeat(test[:20], 3, axis=-1)))


def test_deterministic_across_evaluators(real):
    _, test, _ = real
    assert DigitsFD().distance(test) == DigitsFD().distance(test)


def test_default_reference_is_the_shipped_train_split(real, evaluator):
    shipped = DigitsFD(reference_npz=None).reference_statistics()
    np.testing.assert_array_equal(shipped["mu"], evaluator.reference_statistics()["mu"])
    np.testing.assert_allclose(shipped["mu"], evaluator.statistics(real[0])["mu"], rtol=1e-5, atol=1e-6)


def test_own_reference_npz(real, evaluator, tmp_path):
    _, test, _ = real
    np.savez(tmp_path / "ref.npz", **evaluator.statistics(test))
    assert abs(DigitsFD(reference_npz=tmp_path / "ref.npz").distance(test)) < 1e-6


def test_bad_references_name_the_fix(real, tmp_path):
    _, test, _ = real
    with pytest.raises(ValueError, match="no reference statistics"):
        InceptionFID().distance(test)
    with pytest.raises(FileNotFoundError, match="not found"):
        DigitsFD(reference_npz=tmp_path / "absent.npz").distance(test)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="lacks 'mu' or 'sigma'"):
        DigitsFD(reference_npz=tmp_path / "bad.npz").distance(test)
    np.savez(tmp_path / "small.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="feature sizes differ"):
        DigitsFD(reference_npz=tmp_path / "small.npz").distance(test)


def test_bad_images_are_rejected(real, evaluator):
    _, test, _ = real
    with pytest.raises(ValueError, match="uint8 N×H×W×C"):
        evaluator.distance(test.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 N×H×W×C"):
        evaluator.distance(test[..., 0])
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluator.distance(test[:1])


def test_registration_is_idempotent():
    register_digits_extractor()
    register_digits_extractor()
    assert FEATURE_EXTRACTORS_REGISTRY["ebtune-digits"] is DigitsFeatureExtractor


def test_registry():
    assert isinstance(make_metric("digits"), DigitsFD)
    inception = make_metric("inception", reference="ref.npz")
    assert isinstance(inception, InceptionFID) and isinstance(inception, FrechetMetric) and isinstance(inception, Metric)
    # Values are reported under the metric's own name: "fid" is the Fréchet Inception Distance only.
    assert (make_metric("digits").name, inception.name) == ("digits-fd", "fid")
    with pytest.raises(ValueError, match=r"unknown quality metric \(model.fid\) 'x'; choose one of: digits, inception"):
        make_metric("x")


def test_evaluator_interface_is_abstract():
    class Incomplete(FrechetMetric):
        name = "incomplete"

    with pytest.raises(TypeError):
        Incomplete(None)
    with pytest.raises(TypeError):
        Metric()


def test_classifier_accuracy(real):
    _, test, labels = real
    assert classifier_accuracy(test, labels) >= 0.97
    # One digit drawn for every label (mode collapse) scores about 10 %.
    collapsed = np.repeat(test[labels == 3][:1], len(test), axis=0)
    assert classifier_accuracy(collapsed, labels) == pytest.approx(np.mean(labels == 3))
    with pytest.raises(ValueError, match="labels must have shape"):
        classifier_accuracy(test, labels[:-1])
    with pytest.raises(ValueError, match="16x16"):
        classifier_accuracy(np.zeros((2, 8, 8, 1), np.uint8), labels[:2])


def test_inception_fid_without_weights_names_the_command(real):
    _, test, _ = real
    with pytest.raises(RuntimeError, match=r"^Inception FID weights are not installed; run: ebtune fid-weights$"):
        InceptionFID().features(test[:4])
