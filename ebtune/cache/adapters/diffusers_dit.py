"""Adapter for diffusers' `DiTTransformer2DModel`, and the how-to for adapting any other transformer.

diffusers builds DiT from `BasicTransformerBlock`s in `model.transformer_blocks`. With
`norm_type="ada_norm_zero"` a block computes (diffusers `models/attention.py`,
`BasicTransformerBlock.forward`)::

    a = self.attn1(norm1(x));   x = x + gate_msa · a
    m = self.ff(modulate(norm3(x)));  x = x + gate_mlp · m

so `attn1.forward` and `ff.forward` return the *ungated* branch outputs the cache engine needs, and
a reused tensor is multiplied by the current step's gate by the block itself. The adapter therefore
names `(block.attn1, "forward")` and `(block.ff, "forward")` as the branch sites; the engine
shadows those bound methods with instance attributes and deletes them on close, so the model is
restored exactly.

Feed-forward chunking (`block.set_chunk_feed_forward(n)`) calls `ff` once per chunk, which would
cache only the last chunk, so attaching refuses chunked blocks.

Adapting another transformer (the whole interface is two methods):

1. Find, per block in execution order, a callable whose output is the attention branch before its
   gate and residual add, and one for the MLP branch. Read the block's `forward`: the output must be
   multiplied by a per-step gate (or added as is) *after* the call, never inside it.
2. Subclass `ebtune.adapters.Adapter`: `matches(model)` says whether the model is yours (check
   `sys.modules` so the library is not imported just to ask), `branch_sites(model)` returns
   `[{"attn": (owner, "attr"), "mlp": (owner, "attr")}, ...]`.
3. Register the class in `ebtune.cache.adapters.ADAPTERS`; the contract tests (all-compute is
   bit-identical, reuse skips the call, close restores) then run against it.
"""
from __future__ import annotations

import sys
from typing import Iterable

from torch import nn

from ebtune.cache.adapters.base import Adapter, BranchSite


def diffusers_class(name: str) -> type | None:
    """The diffusers class `name` if diffusers is already imported (a diffusers model implies it)."""
    module = sys.modules.get("diffusers")
    return getattr(module, name, None) if module is not None else None


def basic_block_sites(blocks: Iterable[nn.Module]) -> list[dict[str, BranchSite]]:
    """Branch sites of diffusers `BasicTransformerBlock`s: self-attention `attn1` and feed-forward `ff`.

    Raises:
        ValueError: a block chunks its feed-forward (the cache would hold one chunk only).
    """
    sites = []
    for index, block in enumerate(blocks):
        if getattr(block, "_chunk_size", None) is not None:
            raise ValueError(
                f"transformer block {index} chunks its feed-forward; call block.set_chunk_feed_forward(None) "
                "on every block before attaching a cache"
            )
        sites.append({"attn": (block.attn1, "forward"), "mlp": (block.ff, "forward")})
    return sites


class BasicBlockAdapter(Adapter):
    """A diffusers model whose `transformer_blocks` are `BasicTransformerBlock`s; subclasses name the class."""

    diffusers_name: str  # the diffusers model class this adapter matches

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        target = diffusers_class(cls.diffusers_name)
        return target is not None and isinstance(model, target)

    def branch_sites(self, model: nn.Module) -> list[dict[str, BranchSite]]:
        return basic_block_sites(model.transformer_blocks)


class DiffusersDiTAdapter(BasicBlockAdapter):
    """diffusers `DiTTransformer2DModel`: `transformer_blocks[i].attn1` and `.ff` (ada_norm_zero gates)."""

    family = "diffusers-dit"
    diffusers_name = "DiTTransformer2DModel"
