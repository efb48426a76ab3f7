"""diffusers' `DiTTransformer2DModel`, run natively: searched as the model users run, not converted.

`model.ckpt` is the folder `DiTTransformer2DModel.save_pretrained` wrote (config.json and weights).
The network is diffusers' own module; only the call is ebtune's ε-model call (see `eps_model_class`),
so the cache attaches through the diffusers adapter (`ebtune.cache.adapters.diffusers_dit`) exactly as
`ebtune.apply` attaches it inside a pipeline, and a schedule file tuned here applies to that pipeline.

MACs differ from ebtune's DiT in one term: every `BasicTransformerBlock`'s `AdaLayerNormZero` runs its
own `CombinedTimestepLabelEmbeddings` (the timestep MLP, 256·D + D·D) before its adaLN linear, and the
final layer runs block 0's once more (diffusers `DiTTransformer2DModel.forward`, "3. Output"), where
DiT computes the embedding once per forward.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ebtune.core.dit import DiTConfig
from ebtune.core.macs import ForwardMacs, forward_macs
from ebtune.errors import ConfigError
from ebtune.io.checkpoints import CheckpointError
from ebtune.run.families.base import ModelFamily

if TYPE_CHECKING:
    from ebtune.run.loading import ModelSpec

CLASS_NAME = "DiTTransformer2DModel"
TIMESTEP_FEATURES = 256  # diffusers' `Timesteps(num_channels=256)` in CombinedTimestepLabelEmbeddings


@functools.cache
def eps_model_class() -> type[nn.Module]:
    """`DiTTransformer2DModel` called as ebtune's ε-model: `model(x, t, y)` → the output tensor.

    A subclass, so diffusers' own forward runs and the diffusers adapter matches it; built on first
    use, so that importing ebtune does not import diffusers (an optional dependency).
    """
    from diffusers import DiTTransformer2DModel

    class DiffusersDiT(DiTTransformer2DModel):
        def forward(self, x, t, y):  # (N, C, H, W), (N,), (N,) → (N, C_out, H, W)
            return super().forward(x, timestep=t, class_labels=y, return_dict=False)[0]

    return DiffusersDiT


class DiffusersDiTFamily(ModelFamily):
    """`model.ckpt`: a `DiTTransformer2DModel.save_pretrained` folder; `model.arch` is not read."""

    name = "diffusers-dit"

    def check(self, spec: ModelSpec) -> None:
        self.config(spec)

    def config(self, spec: ModelSpec) -> DiTConfig:
        c = _saved_config(spec.ckpt)
        try:
            heads, in_channels = int(c["num_attention_heads"]), int(c["in_channels"])
            out_channels = int(c.get("out_channels") or in_channels)
            shape = dict(input_size=int(c["sample_size"]), patch_size=int(c["patch_size"]), in_channels=in_channels,
                         hidden_size=heads * int(c["attention_head_dim"]), depth=int(c["num_layers"]), num_heads=heads,
                         num_classes=int(c["num_embeds_ada_norm"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{spec.ckpt}/config.json has no usable {e} for a {CLASS_NAME}; save the model there "
                              "with save_pretrained") from None
        if out_channels not in (in_channels, 2 * in_channels):
            raise ConfigError(f"{spec.ckpt}: out_channels {out_channels} is neither in_channels {in_channels} (ε) nor "
                              f"twice it (ε and learned variance); ebtune samples DiT's two output layouts only")
        return DiTConfig(**shape, learn_sigma=out_channels == 2 * in_channels)

    def load(self, spec: ModelSpec, config: DiTConfig, random_weights: bool) -> nn.Module:
        try:
            cls = eps_model_class()
        except ImportError:
            raise ConfigError("model.family=diffusers-dit needs diffusers; pip install diffusers") from None
        if random_weights:
            return cls.from_config(cls.load_config(spec.ckpt))
        try:
            # low_cpu_mem_usage=False: the plain load, without asking for `accelerate`
            return cls.from_pretrained(spec.ckpt, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load the {CLASS_NAME} weights in {spec.ckpt} ({reason}); save the model "
                                  "there with save_pretrained") from None

    def forward_macs(self, config: DiTConfig) -> ForwardMacs:
        f = forward_macs(config, TIMESTEP_FEATURES)
        D = config.hidden_size
        return dataclasses.replace(f, adaln=f.adaln + TIMESTEP_FEATURES * D + D * D)


def _saved_config(folder: str | None) -> dict[str, Any]:
    """The config.json of a `DiTTransformer2DModel.save_pretrained` folder.

    Raises:
        ConfigError: no folder given, no config.json there, or it describes another model class.
    """
    if not folder:
        raise ConfigError(f"model.family=diffusers-dit needs model.ckpt=FOLDER, a {CLASS_NAME} saved with save_pretrained")
    path = Path(folder) / "config.json"
    if not path.is_file():
        hint = " (a pipeline folder: pass its transformer/ subfolder)" if (Path(folder) / "model_index.json").is_file() else ""
        raise ConfigError(f"model.ckpt={folder} holds no diffusers model config (config.json){hint}; pass the folder "
                          f"{CLASS_NAME}.save_pretrained wrote")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path} ({e}); save the model again with save_pretrained") from None
    if not isinstance(config, dict) or config.get("_class_name") != CLASS_NAME:
        found = config.get("_class_name") if isinstance(config, dict) else None
        raise ConfigError(f"model.ckpt={folder} holds a {found or 'model of unknown class'}, not a {CLASS_NAME}; "
                          f"model.family=diffusers-dit loads {CLASS_NAME} folders only")
    return config
