"""The one float → uint8 image conversion, shared by every decoder and the digits classifier.

It follows DiT's sample_ddp.py: ⌊clamp(127.5·x + 128, 0, 255)⌋ (codebases differ here, e.g.
(x + 1)/2·255, so it is fixed in one place and recorded with results).
"""
from __future__ import annotations

import numpy as np
import torch


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to a uint8 tensor of the same shape: ⌊clamp(127.5·v + 128, 0, 255)⌋."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] to uint8 N×H×W×C (numpy), the layout every metric takes."""
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()
