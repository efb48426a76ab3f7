"""diffusers `DiTTransformer2DModel` weights in ebtune's (the official DiT) layout.

diffusers splits the fused qkv projection into `to_q`/`to_k`/`to_v`, keeps a copy of the timestep
and class embedders in every block (`transformer_blocks.i.norm1.emb`; the model uses block 0's), and
does not store the fixed sin-cos position table. The reverse mapping is exact; two numerical
differences remain between the two implementations, not the weights: diffusers' timestep features
use frequencies exp(−ln(10⁴)·k/(half−1)) where DiT divides by half, and its second LayerNorm uses
ε = 1e-5 where DiT uses 1e-6. ebtune follows DiT, which is what these weights were first trained with.
"""
from __future__ import annotations

import torch

from ebtune.core.dit import get_2d_sincos_pos_embed

_BLOCK = {
    "norm1.linear": "adaLN_modulation.1",
    "attn1.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "transformer_blocks.0.norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table",
    "proj_out_1": "final_layer.adaLN_modulation.1",
    "proj_out_2": "final_layer.linear",
}


def is_diffusers_dit(state: dict[str, torch.Tensor]) -> bool:
    return "pos_embed.proj.weight" in state and any(k.startswith("transformer_blocks.") for k in state)


def dit_state_from_diffusers(state: dict[str, torch.Tensor], grid_size: int) -> dict[str, torch.Tensor]:
    """The same weights under the official DiT key names, with the sin-cos `pos_embed` of a
    `grid_size`×`grid_size` token grid added (diffusers does not store it; its config's
    sample_size / patch_size is the grid size).

    Raises:
        KeyError: `state` lacks a tensor every DiTTransformer2DModel has.
        ValueError: the per-block embedder copies differ, so one embedder cannot hold them.
    """
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
    for key in [k for k in state if k.startswith("transformer_blocks.0.norm1.emb.")]:
        rest = key[len("transformer_blocks.0."):]
        differs = next((i for i in range(1, depth) if not torch.equal(state[f"transformer_blocks.{i}.{rest}"], state[key])), None)
        if differs is not None:
            raise ValueError(f"block {differs}'s copy of {rest} differs from block 0's; DiT has one timestep/class "
                             "embedder, so these weights cannot be converted without loss")
    out: dict[str, torch.Tensor] = {}
    for src, dst in _TOP.items():
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in state:
                out[f"{dst}.{kind}"] = state[f"{src}.{kind}"]
    for i in range(depth):
        pre = f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{pre}attn1.to_{x}.{kind}"] for x in "qkv"])
            for src, dst in _BLOCK.items():
                out[f"blocks.{i}.{dst}.{kind}"] = state[f"{pre}{src}.{kind}"]
    hidden = out["x_embedder.proj.weight"].shape[0]
    out["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(hidden, grid_size)).float()[None]
    return out
