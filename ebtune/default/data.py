"""scikit-learn's 1,797 handwritten digits laid out like a DiT latent.

Each 8×8 digit (0..16) is scaled to [-1, 1], bilinearly upsampled to 16×16 and folded by
space-to-depth into 4×8×8, so `dit-tiny` sees the same 4-channel, patch-2 input as DiT-XL/2.
`decode` undoes the folding; there is no VAE.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-balanced train/test split of 16×16 images in [-1, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    images = F.interpolate(images, size=IMAGE_SIZE, mode="bilinear", align_corners=False).clamp(-1, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(digits.target == c)
        test[rng.choice(idx, size=round(len(idx) * test_fraction), replace=False)] = True
    test_t = torch.from_numpy(test)
    return images[~test_t], labels[~test_t], images[test_t], labels[test_t]


def encode(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) images to (N, 4, 8, 8) latents."""
    return F.pixel_unshuffle(images, 2)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """(N, 4, 8, 8) latents to (N, 1, 16, 16) images in [-1, 1]."""
    return F.pixel_shuffle(latents, 2).clamp(-1, 1)
