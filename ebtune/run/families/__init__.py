"""Model families a search can load (`model.family=`): one module per family, one line each here."""
from __future__ import annotations

from ebtune.registry import Registry
from ebtune.run.families.base import ModelFamily
from ebtune.run.families.diffusers_dit import DiffusersDiTFamily
from ebtune.run.families.dit import DiTFamily

FAMILIES: Registry[ModelFamily] = Registry("model.family")
FAMILIES.register(DiTFamily.name, DiTFamily)
FAMILIES.register(DiffusersDiTFamily.name, DiffusersDiTFamily)

__all__ = ["FAMILIES", "DiTFamily", "DiffusersDiTFamily", "ModelFamily"]
