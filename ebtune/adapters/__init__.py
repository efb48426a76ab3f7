"""Adapters tell the cache engine where a model's blocks and their residual branches are.

An adapter is one small class: `branch_sites(model)` returns, per block in order, the callable to
wrap for the attention branch and for the MLP branch, as (owner, attribute name). The callable's
output must be the branch's *ungated* output, so a reused tensor is gated by the current step.
To support a new model family, add one module with an `Adapter` subclass and register it here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

BranchSite = tuple[Any, str]  # (object owning the callable, attribute name)


class Adapter(ABC):
    """Where to cache in one model family."""

    family: str  # recorded in schedule files, e.g. "dit"

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True when this adapter understands `model`."""

    @abstractmethod
    def branch_sites(self, model: nn.Module) -> list[dict[str, BranchSite]]:
        """Per block, {"attn": site, "mlp": site}, in execution order."""


class DiTAdapter(Adapter):
    """ebtune's own `DiT`: the block methods `attn_branch` and `mlp_branch` are the seam."""

    family = "dit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from ..dit import DiT

        return isinstance(model, DiT)

    def branch_sites(self, model: nn.Module) -> list[dict[str, BranchSite]]:
        return [{"attn": (block, "attn_branch"), "mlp": (block, "mlp_branch")} for block in model.blocks]


from .diffusers_dit import DiffusersDiTAdapter  # noqa: E402  (subclasses Adapter above)
from .pixart import PixArtAdapter  # noqa: E402

ADAPTERS: list[type[Adapter]] = [DiTAdapter, DiffusersDiTAdapter, PixArtAdapter]


def adapter_for(model: nn.Module) -> Adapter:
    """The first registered adapter that matches `model`."""
    for cls in ADAPTERS:
        if cls.matches(model):
            return cls()
    names = ", ".join(cls.__name__ for cls in ADAPTERS)
    raise ValueError(f"no adapter understands {type(model).__name__}; pass adapter= (known: {names})")
