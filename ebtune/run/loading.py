"""A `ModelSpec` → a loaded, ready-to-sample model, through its model family (`ebtune.run.families`).

The user-facing settings of each model (family, checkpoint path, VAE, guidance, FID evaluator) are
plain values in `ModelSpec`; the Hydra group `conf/model/` only fills them in. The family (default
`dit`, ebtune's own DiT) decides how the spec becomes a network, its MACs and what schedule files
record about it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ebtune.core.dit import DiTConfig
from ebtune.core.schedule import Schedule
from ebtune.io.decoders import Decoder, make_decoder
from ebtune.run.families import FAMILIES, ModelFamily


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and turn its samples into images.

    Args:
        name: registry name (e.g. "dit-xl"); arch: architecture of the `dit` family (`ARCHITECTURES`).
        family: a `FAMILIES` name: "dit" (ebtune's DiT) or "diffusers-dit" (a diffusers
            DiTTransformer2DModel folder in `ckpt`).
        ckpt: weights (a file, or the family's folder); None means the embedded weights of `name`.
        decoder: "vae" (diffusers AutoencoderKL folder `vae`), "digits" or "pixels".
        cfg_scale, guidance_channels: classifier-free guidance defaults (None = all ε channels).
        fid: FID evaluator name; fid_reference: reference statistics (.npz with mu, sigma).

    Raises:
        ConfigError: unknown family, or a spec the family cannot load (unknown arch, wrong folder).
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
    family: str = "dit"

    def __post_init__(self) -> None:
        self.model_family.check(self)

    @property
    def model_family(self) -> ModelFamily:
        return FAMILIES.make(self.family)

    @property
    def config(self) -> DiTConfig:
        return self.model_family.config(self)


@dataclass
class LoadedModel:
    """The ε-model (`model(x, t, y)`, what the sampler calls and the cache attaches to), its
    architecture (`config`) and its decoder, with the family's MACs and schedule-file metadata."""

    spec: ModelSpec
    model: nn.Module
    decoder: Decoder
    config: DiTConfig

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Final samples (N, C, H, W) to uint8 images N×H×W×C."""
        return self.decoder.decode(latents)

    def macs(self, schedule: Schedule, batch: int = 1, cfg: bool = False) -> int:
        """Exact MACs of sampling `batch` images under `schedule` with this model's implementation."""
        return self.spec.model_family.macs(self.config, schedule, batch, cfg)

    def schedule_model(self) -> dict[str, Any]:
        """The `model` section of a schedule file tuned on this model."""
        return self.spec.model_family.schedule_model(self.spec, self.config)


def load_model(spec: ModelSpec, device: str | torch.device = "cpu", random_weights: bool = False) -> LoadedModel:
    """Build the model of `spec` through its family, load its weights (unless `random_weights`) and its decoder.

    Raises:
        CheckpointError: missing or non-fitting checkpoint (the message says where to put the file).
        ConfigError: the spec does not describe a model of its family.
    """
    config = spec.config
    model = spec.model_family.load(spec, config, random_weights)
    decoder = make_decoder(spec.decoder, vae=spec.vae, device=device)
    return LoadedModel(spec, model.to(device).eval().requires_grad_(False), decoder, config)
