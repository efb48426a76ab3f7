"""Adapter for diffusers' `PixArtTransformer2DModel` (PixArt-α / PixArt-Σ).

PixArt's blocks are diffusers `BasicTransformerBlock`s with `norm_type="ada_norm_single"`
(diffusers `models/attention.py`, `BasicTransformerBlock.forward`)::

    a = self.attn1(modulate(norm1(x)));  x = x + gate_msa · a      # cached as "attn"
    x = x + self.attn2(x, text)                                     # cross-attention, always computed
    m = self.ff(modulate(norm2(x)));     x = x + gate_mlp · m      # cached as "mlp"

`attn1` and `ff` return ungated outputs, as for DiT, so the same sites apply. The text
cross-attention `attn2` has no gate and depends on the prompt, so it is always computed: a
schedule's "attn" means self-attention here. See `ebtune.adapters.diffusers_dit` for the how-to.
"""
from __future__ import annotations

from ebtune.cache.adapters.diffusers_dit import BasicBlockAdapter


class PixArtAdapter(BasicBlockAdapter):
    """diffusers `PixArtTransformer2DModel`: self-attention `attn1` and `ff` of each block."""

    family = "pixart"
    diffusers_name = "PixArtTransformer2DModel"
