"""The FID-vs-N helpers: the 1/N fit recovers a known line, and the subset FID is torch-fidelity's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebtune.metrics.frechet import frechet_distance, moments
from ebtune.metrics.sample_size import BiasFit, SubsetFID, fit_inverse_n, psd_sqrt

NS = np.array([25, 50, 100, 200, 400, 800, 1600], dtype=np.float64)


def test_fit_recovers_fid_inf_and_c_from_noisy_points():
    rng = np.random.default_rng(0)
    fids = 12.0 + 900.0 / NS + rng.normal(0, 0.05, len(NS))
    fit = fit_inverse_n(NS, fids)
    assert fit.fid_inf == pytest.approx(12.0, abs=0.1)
    assert fit.c == pytest.approx(900.0, rel=0.02)
    assert fit.rms < 0.1
    assert fit.bias(100) == pytest.approx(fit.c / 100)
    assert fit(100) == pytest.approx(fit.fid_inf + fit.c / 100)


def test_weights_follow_the_errors():
    # One wild point with a huge stated error must barely move the weighted fit, and must move the plain one.
    fids = 3.0 + 50.0 / NS
    fids[0] += 5.0
    errors = np.full(len(NS), 0.01)
    errors[0] = 100.0
    assert fit_inverse_n(NS, fids, errors).c == pytest.approx(50.0, rel=1e-3)
    assert abs(fit_inverse_n(NS, fids).c - 50.0) > 10


def test_fit_is_exact_on_a_noiseless_line():
    fit = fit_inverse_n(np.array([10.0, 20.0]), np.array([1.0 + 4.0 / 10, 1.0 + 4.0 / 20]))
    assert isinstance(fit, BiasFit)
    assert (fit.fid_inf, fit.c, fit.rms) == pytest.approx((1.0, 4.0, 0.0), abs=1e-12)


@pytest.mark.parametrize("ns, fids, errors", [([100, 100], [1.0, 2.0], None), ([10, 20], [1.0], None), ([10, 20], [1.0, 2.0], [0.0, 1.0])])
def test_fit_rejects_bad_input(ns, fids, errors):
    with pytest.raises(ValueError):
        fit_inverse_n(np.array(ns), np.array(fids), None if errors is None else np.array(errors))


def test_psd_sqrt_squares_back():
    a = np.random.default_rng(1).normal(size=(5, 3))
    sigma = a @ a.T  # rank 3: the square root must cope with zero eigenvalues
    root = psd_sqrt(sigma)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-10)


@pytest.mark.parametrize("n", [5, 40])  # N < D (Gram side) and N > D (covariance side)
def test_subset_fid_matches_torch_fidelity(n):
    rng = np.random.default_rng(2)
    d = 12
    reference = moments(torch.from_numpy(rng.normal(size=(30, d)) @ rng.normal(size=(d, d))).double())
    pool = rng.normal(0.3, 1.0, size=(60, d)) @ rng.normal(size=(d, d))
    energy = rng.uniform(size=60)
    idx = rng.choice(60, n, replace=False)
    expected = frechet_distance(moments(torch.from_numpy(pool[idx]).double()), reference)
    assert SubsetFID(pool, reference)(idx) == pytest.approx(expected, rel=1e-6)
    assert SubsetFID(pool, reference, energy)(idx) == pytest.approx(expected + energy[idx].mean(), rel=1e-6)


def test_subset_fid_rejects_mismatched_shapes():
    reference = {"mu": np.zeros(3), "sigma": np.eye(3)}
    with pytest.raises(ValueError):
        SubsetFID(np.zeros((10, 4)), reference)
    with pytest.raises(ValueError):
        SubsetFID(np.zeros((10, 3)), reference, np.zeros(9))
    with pytest.raises(ValueError):
        SubsetFID(np.zeros((10, 3)), reference)(np.array([0]))
