"""ebtune: tune and apply feature-caching schedules (EB-Cache) for Diffusion Transformers."""
from __future__ import annotations

from .cache import CachedModel, cached
from .eps_scale import EpsScale, make_eps_scale
from .retarget import retarget_depth, retarget_steps
from .samplers import Guidance, Sampler, make_sampler
from .schedule import Schedule, no_cache
from .schedule_file import load_schedule_file, save_schedule_file

__version__ = "0.1.0"

__all__ = [
    "CachedModel", "EpsScale", "Guidance", "Sampler", "Schedule", "cached", "load_schedule_file",
    "make_eps_scale", "make_sampler", "no_cache", "retarget_depth", "retarget_steps", "save_schedule_file",
]
