"""Predictors: what a cached slot returns at a step it does not compute (reuse, or a forecast).

A new predictor is one module with a `Predictor` subclass plus one `PREDICTORS.register` line here.
They live in the core (stage 1), not in `cache/`, because the exact MAC count (`core.macs`) and the
`Schedule`'s validation need them; the cache engine owns their histories.
"""
from __future__ import annotations

from ebtune.core.predictors.base import History, Predictor
from ebtune.core.predictors.lagrange import Lagrange
from ebtune.core.predictors.reuse import Reuse
from ebtune.core.predictors.taylor import Taylor
from ebtune.registry import Registry

PREDICTORS: Registry[Predictor] = Registry("predictor")
PREDICTORS.register("reuse", Reuse)
PREDICTORS.register("taylor", Taylor)
PREDICTORS.register("lagrange", Lagrange)

__all__ = ["PREDICTORS", "History", "Lagrange", "Predictor", "Reuse", "Taylor"]
