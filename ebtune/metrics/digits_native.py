"""dit-tiny's quality objective: a Fréchet distance at the digits' native resolution plus the energy
that no real digit has.

scikit-learn's digits are 8×8; ebtune upsamples them bilinearly to 16×16 for dit-tiny, so every
real 16×16 digit lies (up to uint8 rounding) in the 64-d range U of that upsampling. For uint8
images x (grey, digit units 0..16 = x·16/255):

    score = FD(A x, A x_real) + 64 · E‖(I − P_U) x‖² / 256

with A the 2×2 area average to 8×8 (shape and diversity, compared with the real train split by
the Fréchet distance of Heusel et al. 2017) and P_U the orthogonal projector onto U (speckle, grain
and ringing: off-range content can only add to the score, so noise never improves it). Both terms
are in squared digit units over 64 native pixels.

Why not the classifier's features: `bench/metric_validation.py` shows the digits classifier's FD
*improves* when pixel noise is added (0.81 → 0.48 at σ = 16), which let a search rank a grainy
schedule best; this score is monotone in noise, blur, fewer steps and FORA's interval there.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ebtune.core.uint8 import to_uint8
from ebtune.default import data
from ebtune.metrics.base import bootstrap_draws, check_images
from ebtune.metrics.frechet import FrechetMetric, Statistics, frechet_distance, moments

DIGIT_UNITS = 16.0 / 255.0  # uint8 → scikit-learn digit units (0..16)
NATIVE = 8


def native_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 N×16×16×C to (N, 64) float64: the 2×2 area average (native 8×8) in digit units."""
    x = check_images(images).astype(np.float64).mean(axis=-1)
    n, h, w = x.shape
    if (h, w) != (data.IMAGE_SIZE, data.IMAGE_SIZE):
        raise ValueError(f"digits-native takes {data.IMAGE_SIZE}x{data.IMAGE_SIZE} images, got {h}x{w}")
    return x.reshape(n, NATIVE, h // NATIVE, NATIVE, w // NATIVE).mean(axis=(2, 4)).reshape(n, -1) * DIGIT_UNITS


@lru_cache(maxsize=1)
def _range_projector() -> np.ndarray:
    """(256, 256) orthogonal projector onto the range of the data's 8×8 → 16×16 upsampling."""
    basis = torch.eye(NATIVE * NATIVE, dtype=torch.float64).reshape(-1, 1, NATIVE, NATIVE)
    up = F.interpolate(basis, size=data.IMAGE_SIZE, mode="bilinear", align_corners=False)  # as data.load_digits_split
    q, _ = np.linalg.qr(up.reshape(NATIVE * NATIVE, -1).T.numpy())
    return q @ q.T


def off_range_energy(images: np.ndarray) -> np.ndarray:
    """Per image: 64 × the mean squared off-range value per 16×16 pixel, in digit units² (≈ 0 for real digits)."""
    x = check_images(images).astype(np.float64).mean(axis=-1).reshape(len(images), -1) * DIGIT_UNITS
    residual = x - x @ _range_projector()
    return NATIVE * NATIVE * (residual ** 2).mean(axis=1)


@lru_cache(maxsize=1)
def _train_statistics() -> Statistics:
    x_train = data.load_digits_split()[0]
    return moments(torch.from_numpy(native_pixels(to_uint8(x_train))))


class DigitsNativeFD(FrechetMetric):
    """The score in the module docstring, against the real train split (computed from the data on
    first use; nothing is shipped) unless `reference_npz` names other statistics of `native_pixels`.
    Registered as "digits-native", dit-tiny's default, and reported under that name: it is a
    Fréchet distance plus an energy term, not an FID."""

    name = "digits-native"

    def __init__(self, reference_npz: str | None = None):
        super().__init__(reference_npz)

    def features(self, images: np.ndarray) -> np.ndarray:
        return native_pixels(images)

    def reference_statistics(self) -> Statistics:
        return super().reference_statistics() if self.reference_npz is not None else _train_statistics()

    def score_draws(self, images: np.ndarray, bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
        """Both terms on the same resampled images (see `Metric.score_draws`)."""
        reference = self.reference_statistics()
        feats, energy = torch.from_numpy(self.features(images)), torch.from_numpy(off_range_energy(images))
        if len(feats) < 2:
            raise ValueError(f"{self.name} needs at least 2 images to estimate a covariance, got {len(feats)}")
        return bootstrap_draws(len(feats), bootstrap, seed,
                               lambda idx: frechet_distance(moments(feats[idx]), reference) + float(energy[idx].mean()))
