"""Adapters tell the cache engine where a model's blocks and their residual branches are.

An adapter is one small class: `branch_sites(model)` returns, per block in order, the callable to
wrap for the attention branch and for the MLP branch, as (owner, attribute name). The callable's
output must be the branch's *ungated* output, so a reused tensor is gated by the current step.
To support a new model family, add one module with an `Adapter` subclass and one
`ADAPTERS.register` line here; tests/test_adapters.py then needs one contract case for it.
"""
from __future__ import annotations

from torch import nn

from ebtune.cache.adapters.base import Adapter, BranchSite
from ebtune.cache.adapters.diffusers_dit import DiffusersDiTAdapter
from ebtune.cache.adapters.dit import DiTAdapter
from ebtune.cache.adapters.pixart import PixArtAdapter
from ebtune.errors import ConfigError
from ebtune.registry import Registry

ADAPTERS: Registry[Adapter] = Registry("adapter")
ADAPTERS.register(DiTAdapter.family, DiTAdapter)
ADAPTERS.register(DiffusersDiTAdapter.family, DiffusersDiTAdapter)
ADAPTERS.register(PixArtAdapter.family, PixArtAdapter)


def adapter_for(model: nn.Module) -> Adapter:
    """The first registered adapter that matches `model`."""
    for name in ADAPTERS:
        if ADAPTERS[name].matches(model):
            return ADAPTERS.make(name)
    raise ConfigError(f"no adapter understands {type(model).__name__}; pass adapter= (known: {', '.join(ADAPTERS)})")


__all__ = ["ADAPTERS", "Adapter", "BranchSite", "DiTAdapter", "DiffusersDiTAdapter", "PixArtAdapter", "adapter_for"]
