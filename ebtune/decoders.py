"""From final samples to uint8 images: the SD VAE for latent DiTs, folding for the digits, or none.

uint8 conversion follows DiT's sample_ddp.py: clamp(127.5·x + 128, 0, 255), truncated.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np
import torch

VAE_SCALE = 0.18215


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to a uint8 tensor of the same shape: ⌊clamp(127.5·v + 128, 0, 255)⌋."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] to uint8 N×H×W×C (numpy), the layout every metric takes."""
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()


class Decoder(ABC):
    @abstractmethod
    def decode(self, samples: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) final samples to uint8 N×H×W×C images."""


class PixelDecoder(Decoder):
    """Pixel-space models: samples already are images in [-1, 1]."""

    def decode(self, samples):
        return to_uint8(samples)


class DigitsDecoder(Decoder):
    """The embedded default: 4×8×8 space-to-depth latents to 1×16×16 digits."""

    def decode(self, samples):
        from .default.data import decode

        return to_uint8(decode(samples))


class VAEDecoder(Decoder):
    """diffusers' AutoencoderKL from a local folder (e.g. stabilityai/sd-vae-ft-ema), latents / 0.18215."""

    def __init__(self, path: str | None, device: str | torch.device = "cpu"):
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(
                f"VAE folder not found: {path}; save diffusers' AutoencoderKL (e.g. sd-vae-ft-ema) there or set model.vae=DIR"
            )
        try:
            from diffusers.models import AutoencoderKL
        except ImportError:
            raise ModuleNotFoundError("decoding latents with the SD VAE needs diffusers; pip install 'ebtune[diffusers]'") from None

        self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def decode(self, samples):
        return to_uint8(self.vae.decode(samples / VAE_SCALE).sample)


DECODERS: dict[str, Callable[..., Decoder]] = {
    "pixels": lambda **_: PixelDecoder(),
    "digits": lambda **_: DigitsDecoder(),
    "vae": lambda vae=None, device="cpu", **_: VAEDecoder(vae, device),
}


def make_decoder(name: str, **kwargs) -> Decoder:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of: {', '.join(DECODERS)}")
    return DECODERS[name](**kwargs)
