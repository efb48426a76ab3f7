"""From final samples to uint8 images: the SD VAE for latent DiTs, folding for the digits, or none.

Every decoder ends in the one uint8 conversion of `ebtune.core.uint8`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ebtune.core.uint8 import to_uint8
from ebtune.registry import Registry

VAE_SCALE = 0.18215


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
        from ebtune.default.data import decode

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


DECODERS: Registry[Decoder] = Registry("decoder")
DECODERS.register("pixels", lambda **_: PixelDecoder())
DECODERS.register("digits", lambda **_: DigitsDecoder())
DECODERS.register("vae", lambda vae=None, device="cpu", **_: VAEDecoder(vae, device))


def make_decoder(name: str, **kwargs) -> Decoder:
    """The decoder `name`; every decoder takes (and may ignore) `vae=` and `device=`."""
    return DECODERS.make(name, **kwargs)
