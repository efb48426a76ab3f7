"""ebtune's own DiT (`ebtune.core.dit`): the official presets plus the embedded `tiny`, from a
checkpoint file (official, training, safetensors or diffusers weights) or the embedded weights."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from torch import nn

from ebtune.core.dit import DIT_CONFIGS, DiT, DiTConfig, dit_config
from ebtune.core.macs import ForwardMacs, forward_macs
from ebtune.errors import ConfigError
from ebtune.io.checkpoints import load_into, read_state_dict
from ebtune.run.families.base import ModelFamily

if TYPE_CHECKING:
    from ebtune.run.loading import ModelSpec

EMBEDDED_WEIGHTS = Path(__file__).resolve().parents[2] / "default" / "weights"


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


class DiTFamily(ModelFamily):
    """`model.arch` names the architecture; `model.ckpt` a weights file (None: the embedded weights of `model.name`)."""

    name = "dit"

    def check(self, spec: ModelSpec) -> None:
        if spec.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {spec.arch!r} for model {spec.name!r}; choose one of: "
                              f"{', '.join(ARCHITECTURES)}")

    def config(self, spec: ModelSpec) -> DiTConfig:
        return ARCHITECTURES[spec.arch](spec.image_size)

    def load(self, spec: ModelSpec, config: DiTConfig, random_weights: bool) -> nn.Module:
        # Read the weights before building the model: a missing file should fail in milliseconds, not
        # after allocating a 675M-parameter network.
        state = None if random_weights else read_state_dict(spec.ckpt or EMBEDDED_WEIGHTS / f"{spec.name}.safetensors")
        model = DiT(config)
        if state is not None:
            load_into(model, state, source=spec.ckpt or f"embedded weights of {spec.name}")
        return model

    def forward_macs(self, config: DiTConfig) -> ForwardMacs:
        return forward_macs(config)
