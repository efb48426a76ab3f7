"""ebtune: tune and apply feature-caching schedules (EB-Cache) for Diffusion Transformers."""
from __future__ import annotations

from .cache import CachedModel, cached
from .eps_scale import EpsScale, make_eps_scale
from .samplers import Guidance, Sampler, make_sampler
from .schedule import Schedule, no_cache

__version__ = "0.1.0"

__all__ = [
    "CachedModel", "EpsScale", "Guidance", "Sampler", "Schedule",
    "cached", "make_eps_scale", "make_sampler", "no_cache",
]
