"""ebtune's own DiT: its blocks expose the ungated branches as methods."""
from __future__ import annotations

from torch import nn

from ebtune.cache.adapters.base import Adapter, BranchSite
from ebtune.core.dit import DiT


class DiTAdapter(Adapter):
    """ebtune's own `DiT`: the block methods `attn_branch` and `mlp_branch` are the seam."""

    family = "dit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return isinstance(model, DiT)

    def branch_sites(self, model: nn.Module) -> list[dict[str, BranchSite]]:
        return [{"attn": (block, "attn_branch"), "mlp": (block, "mlp_branch")} for block in model.blocks]
