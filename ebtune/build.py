"""From a plain (already composed) config dict to core objects. No Hydra here: values in, values out."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .eps_scale import EpsScale, make_eps_scale
from .models import LoadedModel, ModelSpec
from .samplers import Guidance, Sampler, make_sampler
from .schedule import Schedule
from .schedules import CalibrationProbe, ScheduleContext, make_schedule


def model_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec(**{k: v for k, v in cfg.items()})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but no CUDA device is visible; use device=cpu")
    return torch.device(name)


def sampler_from(cfg: Mapping[str, Any], spec: ModelSpec, steps: int | None = None) -> Sampler:
    """The configured sampler at `steps` (default cfg["steps"]) with the model's guidance."""
    params = {k: v for k, v in cfg["sampler"].items() if k != "name"}
    scale = spec.cfg_scale if cfg.get("cfg_scale") is None else float(cfg["cfg_scale"])
    guidance = Guidance(scale=scale, null_label=spec.config.num_classes, channels=spec.guidance_channels)
    return make_sampler(cfg["sampler"]["name"], int(steps or cfg["steps"]), guidance, **params)


def eps_scale_from(cfg: Mapping[str, Any]) -> EpsScale:
    params = {k: v for k, v in cfg["eps_scale"].items() if k != "name"}
    return make_eps_scale(cfg["eps_scale"]["name"], **params)


def schedule_from(
    schedule_cfg: Mapping[str, Any], eps: EpsScale, sampler: Sampler, loaded: LoadedModel, seed: int = 0
) -> Schedule:
    """Build the configured schedule family for this sampler and model, with ε factors from `eps`."""
    ctx = ScheduleContext(sampler.steps, loaded.config.depth, sampler.times)
    params = {k: v for k, v in schedule_cfg.items() if k != "name"}
    factors = eps.factors(sampler.times)
    if schedule_cfg["name"] == "ebcache-calibrated":
        from .generate import class_balanced_labels, initial_noise

        n = int(params.pop("n", 8))
        device = next(loaded.model.parameters()).device
        labels = class_balanced_labels(n, loaded.config.num_classes).to(device)
        probe = CalibrationProbe(loaded.model, sampler, initial_noise(n, loaded.config, seed + 10_000, device), labels, seed)
        return make_schedule("ebcache-calibrated", ctx, probe=probe, eps_scale=factors, **params)
    return make_schedule(schedule_cfg["name"], ctx, **params).with_eps_scale(factors)
