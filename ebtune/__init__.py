"""ebtune: tune and apply feature-caching schedules (EB-Cache) for Diffusion Transformers."""
from __future__ import annotations

from ebtune.cache.engine import CachedModel, cached
from ebtune.core.eps_scale import EpsScale, make_eps_scale
from ebtune.core.schedule import Schedule, no_cache
from ebtune.io.schedule_file import load_schedule_file, save_schedule_file
from ebtune.run.loading import load_model
from ebtune.sampling.samplers import Guidance, Sampler, make_sampler
from ebtune.schedules.retarget import retarget_depth, retarget_steps

__version__ = "0.1.0"

__all__ = [
    "CachedModel", "EpsScale", "Guidance", "Sampler", "Schedule", "cached", "load_model", "load_schedule_file",
    "make_eps_scale", "make_sampler", "no_cache", "retarget_depth", "retarget_steps", "save_schedule_file",
]
