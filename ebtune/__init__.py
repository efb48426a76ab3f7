"""ebtune: tune and apply feature-caching schedules (EB-Cache) for Diffusion Transformers."""
from __future__ import annotations

from ebtune.cache.engine import CachedModel, cached
from ebtune.core.eps_scale import EpsScale, make_eps_scale
from ebtune.core.schedule import Schedule, no_cache
from ebtune.io.schedule_file import load_schedule_file, save_schedule_file
from ebtune.run.loading import LoadedModel, ModelSpec
from ebtune.run.loading import load_model as _load_spec
from ebtune.run.pipeline_apply import AppliedSchedule, apply
from ebtune.sampling.samplers import Guidance, Sampler, make_sampler
from ebtune.schedules.retarget import retarget_depth, retarget_steps

__version__ = "0.1.0"


def load_model(model: "str | ModelSpec" = "dit-tiny", device: str = "cpu", random_weights: bool = False,
               **settings: object) -> LoadedModel:
    """A model by its config name (a file of `ebtune/conf/model/`, e.g. "dit-tiny", "dit-xl"), with
    `settings` overriding that file's keys (`ckpt="DiT-XL-2-256x256.pt"`, `vae="sd-vae-ft-ema"`), or
    from a `ModelSpec`. Returns the eval-mode model (`.model`), its config and its decoder (`.decode`).

    Raises:
        ConfigError: unknown model name or setting; CheckpointError: missing or non-fitting weights.
    """
    if not isinstance(model, ModelSpec):
        from ebtune.cli.config import compose
        from ebtune.run.factory import model_spec

        cfg = compose([f"model={model}", *(f"model.{k}={'null' if v is None else v}" for k, v in settings.items())])
        model = model_spec(cfg["model"])
    elif settings:
        raise TypeError("pass settings with a model name, or put them into the ModelSpec")
    return _load_spec(model, device, random_weights)

__all__ = [
    "AppliedSchedule", "CachedModel", "EpsScale", "LoadedModel", "ModelSpec", "apply", "Guidance", "Sampler", "Schedule", "cached", "load_model", "load_schedule_file",
    "make_eps_scale", "make_sampler", "no_cache", "retarget_depth", "retarget_steps", "save_schedule_file",
]
