"""The adapter interface: where the cache engine finds a model family's blocks and branches."""
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
