"""From a plain (already composed) config dict to core objects. No Hydra here: values in, values out."""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from ebtune.core.schedule import Schedule
from ebtune.errors import ConfigError
from ebtune.run.loading import LoadedModel, ModelSpec, load_model
from ebtune.sampling.samplers import Guidance, Sampler, make_sampler
from ebtune.schedules import CalibrationProbe, ScheduleContext
from ebtune.schedules.spec import ScheduleSpec


@contextmanager
def config_key(key: str) -> Iterator[None]:
    """Within the block, a `ValueError` from building objects out of config values is bad input:
    re-raised as a one-line `ConfigError` naming `key`."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def model_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    with config_key("model"):
        return ModelSpec(**{k: v for k, v in cfg.items()})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu")
    with config_key("device"):
        return torch.device(name)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(value: Any, per_process: int | None = None) -> int:
    """The torch thread count for `threads=`: a positive number as given; "auto" (or null) = every
    usable core, or `per_process` cores when several processes share the machine (Ray workers).

    Results do not depend on it: dit-tiny's samples are bit-identical at 1 and 2 threads
    (tests/test_threads.py), so auto only buys speed.
    """
    if value in (None, "auto"):
        return max(1, per_process or usable_cores())
    with config_key("threads"):
        threads = int(value)
        if threads < 1:
            raise ValueError(f"threads must be a positive number or auto, got {value}")
    return threads


def sampler_from(cfg: Mapping[str, Any], spec: ModelSpec, steps: int | None = None) -> Sampler:
    """The configured sampler at `steps` (default cfg["steps"]) with the model's guidance."""
    params = {k: v for k, v in cfg["sampler"].items() if k != "name"}
    with config_key("cfg_scale"):
        scale = spec.cfg_scale if cfg.get("cfg_scale") is None else float(cfg["cfg_scale"])
    with config_key("steps"):
        steps = int(steps or cfg["steps"])
    guidance = Guidance(scale=scale, null_label=spec.model_family.null_label(spec.config), channels=spec.guidance_channels)
    with config_key("sampler"):
        return make_sampler(cfg["sampler"]["name"], steps, guidance, **params)


def schedule_spec(cfg: Mapping[str, Any]) -> ScheduleSpec:
    """The `schedule=` and `eps_scale=` groups of a config as one spec."""
    params = {k: v for k, v in cfg["schedule"].items() if k != "name"}
    return ScheduleSpec.of(cfg["schedule"]["name"], params, cfg["eps_scale"])


def schedule_from(cfg: Mapping[str, Any], sampler: Sampler, loaded: LoadedModel, seed: int = 0) -> Schedule:
    """Build the configured schedule for this sampler and model (`schedule=`, `eps_scale=`).

    A calibrated family runs on `n` samples of the model (its `n` parameter, default 8) from seed
    `seed + 10000`, so calibration noise never coincides with the run's own.
    """
    spec = schedule_spec(cfg)
    ctx = ScheduleContext(sampler.steps, loaded.config.depth, sampler.times)
    probe = None
    if spec.calibrates:
        from ebtune.run.generate import class_balanced_labels, initial_noise

        params = dict(spec.params)
        n = int(params.pop("n"))
        spec = ScheduleSpec.of(spec.family, params, spec.eps_form)
        device = next(loaded.model.parameters()).device
        labels = class_balanced_labels(n, loaded.config.num_classes).to(device)
        probe = CalibrationProbe(loaded.model, sampler, initial_noise(n, loaded.config, seed + 10_000, device), labels, seed)
    with config_key("schedule"):
        return spec.build(ctx, probe)


@dataclass(frozen=True)
class SamplingRun:
    """The objects a sampling command runs: the loaded model, sampler, schedule and labels.

    `notes` says what fitting an exported schedule file to this run changed (empty otherwise).
    """

    loaded: LoadedModel
    sampler: Sampler
    schedule: Schedule
    labels: torch.Tensor
    device: torch.device
    notes: tuple[str, ...] = ()


def sampling_run(cfg: Mapping[str, Any], overrides: Sequence[str]) -> SamplingRun:
    """A composed config (model=, steps=, sampler=, cfg_scale=, n=, seed=, device=, threads=, and
    schedule=/eps_scale= or schedule_file=) as the objects to sample with; `overrides` are the
    user's own `key=value` items, used to tell an explicit schedule=/eps_scale= from the defaults.

    Raises:
        ConfigError: schedule_file= together with schedule=/eps_scale=, n < 1, or a bad value.
    """
    if cfg["schedule_file"] and any(o.partition("=")[0].split(".")[0] in ("schedule", "eps_scale") for o in overrides):
        raise ConfigError("schedule_file= and schedule=/eps_scale= both given; the file carries its own masks and "
                          "ε scaling, so give one or the other")
    torch.set_num_threads(resolve_threads(cfg.get("threads")))
    if int(cfg["n"]) < 1:
        raise ConfigError(f"n must be at least 1, got {cfg['n']}")
    spec = model_spec(cfg["model"])
    device = resolve_device(cfg["device"])
    loaded = load_model(spec, device)
    sampler = sampler_from(cfg, spec)
    notes: list[str] = []
    if cfg["schedule_file"]:
        from ebtune.run.apply_file import schedule_for_run

        schedule, notes = schedule_for_run(cfg["schedule_file"], loaded, sampler)
    else:
        schedule = schedule_from(cfg, sampler, loaded, int(cfg["seed"]))
    from ebtune.run.generate import class_balanced_labels

    labels = class_balanced_labels(int(cfg["n"]), loaded.config.num_classes)
    return SamplingRun(loaded, sampler, schedule, labels, device, tuple(notes))
