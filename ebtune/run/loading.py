"""Model registry: architecture name → DiT config, and a `ModelSpec` → loaded, ready-to-sample model.

The user-facing settings of each model (checkpoint path, VAE, guidance, FID evaluator) are plain
values in `ModelSpec`; the Hydra group `conf/model/` only fills them in. Architectures come from
one registry: the official presets (`DiT-XL/2`, ...) plus the embedded `tiny`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ebtune.core.dit import DIT_CONFIGS, DiT, DiTConfig, dit_config
from ebtune.io.checkpoints import load_into, read_state_dict
from ebtune.io.decoders import Decoder, make_decoder

EMBEDDED_WEIGHTS = Path(__file__).resolve().parents[1] / "default" / "weights"


def _tiny_config(image_size: int) -> DiTConfig:
    from ebtune.default.data import IMAGE_SIZE
    from ebtune.default.train import TINY_CONFIG

    if image_size != IMAGE_SIZE:
        raise ValueError(f"dit-tiny generates {IMAGE_SIZE} px digits, not {image_size}; leave model.image_size at {IMAGE_SIZE}")
    return TINY_CONFIG


ARCHITECTURES: dict[str, Callable[[int], DiTConfig]] = {
    **{name: (lambda image_size, name=name: dit_config(name, image_size)) for name in DIT_CONFIGS},
    "tiny": _tiny_config,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and turn its samples into images.

    Args:
        name: registry name (e.g. "dit-xl"); arch: key of `ARCHITECTURES`.
        ckpt: weights file; None means the embedded weights of `name`.
        decoder: "vae" (diffusers AutoencoderKL folder `vae`), "digits" or "pixels".
        cfg_scale, guidance_channels: classifier-free guidance defaults (None = all ε channels).
        fid: FID evaluator name; fid_reference: reference statistics (.npz with mu, sigma).
    """

    name: str
    arch: str
    image_size: int = 256
    ckpt: str | None = None
    decoder: str = "vae"
    vae: str | None = None
    cfg_scale: float = 1.5
    guidance_channels: int | None = 3
    fid: str = "inception"
    fid_reference: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r} for model {self.name!r}; choose one of: {', '.join(ARCHITECTURES)}")

    @property
    def config(self) -> DiTConfig:
        return ARCHITECTURES[self.arch](self.image_size)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: DiT
    decoder: Decoder

    @property
    def config(self) -> DiTConfig:
        return self.model.config

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Final samples (N, C, H, W) to uint8 images N×H×W×C."""
        return self.decoder.decode(latents)


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", random_weights: bool = False) -> LoadedModel:
    """Build the DiT of `spec`, load its weights (unless `random_weights`) and its decoder.

    Raises:
        CheckpointError: missing or non-fitting checkpoint (the message says where to put the file).
    """
    # Read the weights before building the model: a missing file should fail in milliseconds, not
    # after allocating a 675M-parameter network.
    state = None if random_weights else read_state_dict(spec.ckpt or EMBEDDED_WEIGHTS / f"{spec.name}.safetensors")
    model = DiT(spec.config)
    if state is not None:
        load_into(model, state, source=spec.ckpt or f"embedded weights of {spec.name}")
    decoder = make_decoder(spec.decoder, vae=spec.vae, device=device)
    return LoadedModel(spec, model.to(device).eval().requires_grad_(False), decoder)
