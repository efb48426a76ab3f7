"""FID at a small sample size N: the 1/N bias fit and exact, fast FID of many feature subsets.

FID estimated from N generated images is biased upwards, E[FID_N] ≈ FID_∞ + c/N (Chong & Forsyth,
"Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020), and the slope c
depends on the model, so absolute FIDs at different N cannot be compared. `fit_inverse_n` fits that
line; `SubsetFID` scores many subsets of one cached feature pool against fixed reference statistics.

Why not `frechet_distance` per subset: its 2048×2048 `sqrtm` takes ~20 s on a shared 2-core CPU.
With S = Σ_ref^½ (once) and Y = F S (once per pool), for a subset with centred rows Y_c,
    Tr (Σ_N Σ_ref)^½ = Tr (S Σ_N S)^½ = Σ_i √λ_i(Y_cᵀ Y_c / (N − 1)),
and the nonzero eigenvalues of Y_cᵀ Y_c equal those of the N×N Gram Y_c Y_cᵀ, so each subset costs
one eigendecomposition of size min(N, D), exactly the same number.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ebtune.metrics.frechet import Statistics


@dataclass(frozen=True)
class BiasFit:
    """FID_N ≈ fid_inf + c / N; `rms` is the root-mean-square residual of the fitted points."""

    fid_inf: float
    c: float
    rms: float

    def bias(self, n: float) -> float:
        """The expected excess of FID_N over FID_∞: c / N."""
        return self.c / n

    def __call__(self, n: float) -> float:
        return self.fid_inf + self.c / n


def fit_inverse_n(ns: np.ndarray, fids: np.ndarray, errors: np.ndarray | None = None) -> BiasFit:
    """Least-squares fit of fids = fid_inf + c / ns.

    Args:
        ns: sample sizes (at least two distinct values); fids: FID (or its mean) at each size.
        errors: standard errors of `fids`; when given, each point is weighted by 1 / error², so
            the noisy small-N means do not dominate the fit.
    """
    ns, fids = np.asarray(ns, dtype=np.float64), np.asarray(fids, dtype=np.float64)
    if ns.shape != fids.shape or ns.ndim != 1 or len(np.unique(ns)) < 2:
        raise ValueError(f"need matching 1-d ns and fids with at least two distinct sizes, got {ns.shape} and {fids.shape}")
    if errors is None:
        w = np.ones_like(ns)
    else:
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != ns.shape or not np.all(np.isfinite(errors)) or np.any(errors <= 0):
            raise ValueError(f"errors must be positive and finite, one per size, got {errors}")
        w = 1.0 / errors
    design = np.stack([np.ones_like(ns), 1.0 / ns], axis=1)
    (fid_inf, c), *_ = np.linalg.lstsq(design * w[:, None], fids * w, rcond=None)
    residual = fids - (fid_inf + c / ns)
    return BiasFit(float(fid_inf), float(c), float(np.sqrt(np.mean(residual ** 2))))


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (tiny negative eigenvalues → 0)."""
    eigvals, eigvecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


class SubsetFID:
    """FID of index subsets of one feature pool against fixed reference statistics, exactly.

    Args:
        features: (M, D) features of the pool.
        reference: mu (D,) and unbiased sigma (D, D) of the reference set.
        per_image: optional (M,) term whose subset mean is added to the FID (digits-native's
            off-range energy), so the subset score is the evaluator's own.
    """

    def __init__(self, features: np.ndarray, reference: Statistics, per_image: np.ndarray | None = None):
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != reference["mu"].shape[0]:
            raise ValueError(f"features {features.shape} do not fit reference mu {reference['mu'].shape}")
        if per_image is not None and np.shape(per_image) != (len(features),):
            raise ValueError(f"per_image must have shape ({len(features)},), got {np.shape(per_image)}")
        self.features = features
        self.reference_mu = reference["mu"]
        self.reference_trace = float(np.trace(reference["sigma"]))
        self.projected = features @ psd_sqrt(reference["sigma"])  # Y = F S: rows of every subset, once
        self.per_image = per_image

    def __call__(self, index: np.ndarray) -> float:
        """FID of the pool rows `index` (at least 2)."""
        index = np.asarray(index)
        n = len(index)
        if n < 2:
            raise ValueError(f"FID needs at least 2 images, got {n}")
        x, y = self.features[index], self.projected[index]
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        gram = yc @ yc.T if n <= yc.shape[1] else yc.T @ yc  # the smaller side: same nonzero eigenvalues
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(gram / (n - 1)), 0.0, None)).sum())
        mean_term = float(((x.mean(axis=0) - self.reference_mu) ** 2).sum())
        fid = mean_term + float((xc ** 2).sum()) / (n - 1) + self.reference_trace - 2.0 * trace_sqrt
        return fid + (0.0 if self.per_image is None else float(self.per_image[index].mean()))
