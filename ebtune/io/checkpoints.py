"""Loading DiT weights: the released state dicts, training checkpoints, safetensors files, and
diffusers `DiTTransformer2DModel` weights (converted to the official layout on load).

Pickled files are read with `torch.load(weights_only=True)`; the one non-tensor type DiT's
training checkpoints pickle, `argparse.Namespace` under "args", is allowed explicitly.
"""
from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from ebtune.core.dit import DIT_CONFIGS, PRESET_SIZES, DiTConfig
from ebtune.errors import ConfigError
from ebtune.io.diffusers_weights import dit_state_from_diffusers, is_diffusers_dit


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; a training checkpoint yields its EMA weights (else "model")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; put the file there or set model.ckpt=PATH")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = _load_weights_only(path)
    except Exception as e:  # unpickling refusals and corrupt files alike
        raise CheckpointError(f"cannot read {path} as a weights-only checkpoint ({_why(e)}); re-save its tensors "
                              f"as safetensors or as a plain state dict (torch.save(model.state_dict(), path))") from None
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        obj = obj.get("ema") or obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return obj


def _load_weights_only(path: Path) -> object:
    """`torch.load(weights_only=True)`, memory-mapped for zip-format files; files in torch's legacy
    (pre-1.6, non-zip) format cannot be memory-mapped and are read whole."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        if zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)


def _why(error: Exception) -> str:
    """What is wrong with a refused file, without torch's advice to load it unsafely (ebtune never does)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles {found.group(1)}, which is not a tensor"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(error).__name__


def infer_config(state: dict[str, torch.Tensor]) -> DiTConfig:
    """The DiT architecture a state dict was saved from (learn_sigma and classes included)."""
    try:
        hidden = state["pos_embed"].shape[-1]
        num_patches = state["pos_embed"].shape[1]
        proj = state["x_embedder.proj.weight"]  # (D, C, p, p)
        patch, in_channels = proj.shape[-1], proj.shape[1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
        table = state["y_embedder.embedding_table.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"not a DiT state dict (missing {e}); expected the facebookresearch/DiT key layout") from None
    side = int(round(num_patches**0.5)) * patch
    heads = next((h for _, d, h in PRESET_SIZES.values() if d == hidden), 1)
    return DiTConfig(
        input_size=side, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
        num_heads=heads, mlp_ratio=mlp_hidden / hidden, num_classes=table - 1, learn_sigma=out == 2 * in_channels,
    )


def describe_config(config: DiTConfig) -> str:
    """The preset name matching `config` (e.g. "DiT-XL/2 at 256 px"), or its fields."""
    for name, factory in DIT_CONFIGS.items():
        preset = factory(input_size=config.input_size)
        if (preset.depth, preset.hidden_size, preset.patch_size) == (config.depth, config.hidden_size, config.patch_size):
            return f"{name} at {config.input_size * 8} px"
    return (f"depth={config.depth} hidden_size={config.hidden_size} patch_size={config.patch_size} "
            f"input_size={config.input_size} in_channels={config.in_channels} num_classes={config.num_classes}")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly copy `state` into `model`; any missing, unexpected or mis-shaped key is an error
    that names the configuration the checkpoint would fit."""
    if is_diffusers_dit(state):
        state = dit_state_from_diffusers(state, grid_size=int(round(model.config.num_patches**0.5)))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        problem = (
            f"{len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {(missing or unexpected)[0]})"
            if missing or unexpected
            else f"{len(mis_shaped)} mis-shaped keys (e.g. {mis_shaped[0]}: {tuple(state[mis_shaped[0]].shape)} vs {tuple(own[mis_shaped[0]].shape)})"
        )
        try:
            fits = describe_config(infer_config(state))
        except CheckpointError:
            fits = "no DiT configuration"
        raise CheckpointError(f"{source} does not fit this model: {problem}; the file fits {fits}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    load_into(model, read_state_dict(path), source=str(path))
    return model
