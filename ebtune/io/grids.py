"""Image grids as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_grid(images: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 N×H×W×C images to one uint8 image with `ncol` columns and `pad` px of black between."""
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | Path, ncol: int = 8, upscale: int | None = None) -> Path:
    """Write a PNG grid; small images are enlarged (nearest) to about 64 px so they can be seen."""
    from PIL import Image

    grid = make_grid(images, ncol)
    factor = upscale or max(1, 64 // images.shape[1])
    grid = grid.repeat(factor, axis=0).repeat(factor, axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return Path(path)
