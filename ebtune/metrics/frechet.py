"""Fréchet distances between Gaussians fitted to image features, through torch-fidelity.

FD (Heusel et al., 2017) between Gaussians fitted to features of two image sets:
    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½).
The moments and the distance come from torch-fidelity's `fid_features_to_statistics` /
`fid_statistics_to_metric`; a `FrechetMetric` supplies the features and the reference statistics
(an `.npz` with `mu`, `sigma`, like the ADM reference batches). With Inception-v3 features this is
the Fréchet Inception Distance, FID (`ebtune.metrics.fid.InceptionFID`); other feature spaces give
Fréchet distances of their own name.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from ebtune.metrics.base import Metric, bootstrap_draws, check_images

Statistics = dict[str, np.ndarray]


class FrechetMetric(Metric):
    """The Fréchet distance of uint8 images' features to fixed reference statistics (lower is closer).

    Subclasses give `name` and `features`; the statistics (μ, unbiased Σ) and the distance are
    torch-fidelity's. The reference `.npz` (keys `mu`, `sigma`) is read once, on first use.
    """

    needs_reference = True

    def __init__(self, reference_npz: str | Path | None):
        self.reference_npz = None if reference_npz is None else Path(reference_npz)
        self._reference: Statistics | None = None

    @abstractmethod
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×C images to (N, D) float features; deterministic."""

    def statistics(self, images: np.ndarray) -> Statistics:
        """mu (D,) and sigma (D, D), float64, of the features of N ≥ 2 images."""
        if len(check_images(images)) < 2:
            raise ValueError(f"{self.name} needs at least 2 images to estimate a covariance, got {len(images)}")
        return moments(torch.from_numpy(self.features(images)).double())

    def reference_statistics(self) -> Statistics:
        """mu and sigma (float64) loaded from `reference_npz`.

        Raises:
            ValueError: no reference file was given, or it lacks `mu`/`sigma` of matching sizes.
            FileNotFoundError: the file does not exist.
        """
        if self._reference is None:
            if self.reference_npz is None:
                raise ValueError(f"{self.name} has no reference statistics; pass reference_npz=<.npz with mu, sigma> "
                                 f"(model.fid_reference=) or use frechet_between")
            self._reference = load_statistics(self.reference_npz)
        return self._reference

    def distance(self, images: np.ndarray) -> float:
        """The metric of `images` against the reference statistics, without bootstrap."""
        return self.score_draws(images, 0, 0)[0]

    def score_draws(self, images: np.ndarray, bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
        """(FD, the FDs of `bootstrap` resamples), features extracted once (see `Metric.score_draws`)."""
        reference = self.reference_statistics()  # first: a missing file fails before feature extraction
        feats = torch.from_numpy(self.features(check_images(images))).double()
        if len(feats) < 2:
            raise ValueError(f"{self.name} needs at least 2 images to estimate a covariance, got {len(feats)}")
        return bootstrap_draws(len(feats), bootstrap, seed, lambda idx: frechet_distance(moments(feats[idx]), reference))


def load_statistics(path: Path) -> Statistics:
    """mu (D,) and sigma (D, D), float64, from an `.npz`; one-line errors for a missing or bad file."""
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} not found; pass an existing .npz with mu and sigma")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} lacks 'mu' or 'sigma' (has {sorted(f.files)}); save statistics as "
                             f"np.savez(path, mu=..., sigma=...)")
        ref = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64)}
    d = ref["mu"].shape[0]
    if ref["mu"].shape != (d,) or ref["sigma"].shape != (d, d):
        raise ValueError(f"{path}: mu {ref['mu'].shape} and sigma {ref['sigma'].shape} do not fit; expected (D,) and (D, D)")
    return ref


def moments(features: torch.Tensor) -> Statistics:
    """mu and unbiased sigma (float64) of (N, D) features, by torch-fidelity."""
    stats = fid_features_to_statistics(features)
    return {"mu": stats["mu"].astype(np.float64), "sigma": stats["sigma"].astype(np.float64)}


def frechet_distance(stats_a: Statistics, stats_b: Statistics) -> float:
    """The Fréchet distance between two (mu, sigma) pairs, computed by torch-fidelity."""
    if stats_a["mu"].shape != stats_b["mu"].shape:
        sizes = f"{stats_a['mu'].shape[0]} vs {stats_b['mu'].shape[0]}"
        raise ValueError(f"feature sizes differ ({sizes}); the reference statistics come from another feature network")
    return float(fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID])


def frechet_between(images_a: np.ndarray, images_b: np.ndarray, metric: FrechetMetric) -> float:
    """The Fréchet distance between two uint8 image sets in `metric`'s feature space (a set against itself ≈ 0)."""
    return frechet_distance(metric.statistics(images_a), metric.statistics(images_b))
