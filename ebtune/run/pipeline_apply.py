"""Apply a tuned schedule to a diffusers pipeline in one call: masks, ε scaling and step count.

    with ebtune.apply(pipe, "tuned.json"):
        images = pipe(class_labels=[207], num_inference_steps=25).images

The step count of a pipeline run is only known when the pipeline calls `scheduler.set_timesteps`,
so that method is shadowed on the scheduler instance: each call fits the schedule to the
scheduler's timesteps (retargeted through normalised time, ε factors re-evaluated from the file's
parametric form) and starts a fresh run (step 0, no cached tensors or forecast histories), so two
identical calls give identical images. The cache follows the transformer's calls (one per step: diffusers' DiT and PixArt
pipelines run the conditional and unconditional halves as one doubled batch), and a forward hook
multiplies the first `in_channels` output channels (ε; the rest is the learned variance) by the
step's factor. Guidance is linear, so b·ε_u + s·(b·ε_c − b·ε_u) = b·(ε_u + s·(ε_c − ε_u)): scaling
both halves before the pipeline's guidance is ebtune's own rule (b · guided ε, `Sampler.sample`).
Closing removes every hook and shadow, so the pipeline is restored exactly.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ebtune.cache.adapters import adapter_for
from ebtune.cache.engine import CachedModel
from ebtune.cache.step_counter import StepCounter
from ebtune.core.eps_scale import EpsScale
from ebtune.core.schedule import Schedule
from ebtune.errors import ConfigError
from ebtune.io.schedule_file import ScheduleFile, load_schedule_file
from ebtune.sampling.samplers import step_times
from ebtune.schedules.retarget import retarget_steps

# Adapter family → the architecture a schedule file's `model.family` must name (ebtune's DiT and
# diffusers' DiTTransformer2DModel are the same network, converted by ebtune.io.diffusers_weights).
_ARCHITECTURE = {"dit": "dit", "diffusers-dit": "dit", "pixart": "pixart"}
# Schedule file model keys → the diffusers config attribute holding the same quantity.
_SHAPE_KEYS = {"input_size": "sample_size", "patch_size": "patch_size"}


def pipeline_times(scheduler: Any) -> tuple[float, ...]:
    """Normalised time of each of the scheduler's timesteps (timestep / (T − 1): 1 = pure noise),
    the same convention as `ebtune.sampling.samplers.step_times`."""
    last = int(scheduler.config.num_train_timesteps) - 1
    return tuple(float(t) / last for t in torch.as_tensor(scheduler.timesteps).double().tolist())


class AppliedSchedule:
    """Handle of a schedule applied to a pipeline (a context manager; `close()` restores exactly).

    Attributes:
        schedule: the schedule as given (file schedule or `Schedule`), before any retarget.
        current: the schedule fitted to the latest pipeline call (None before the first call).
        notes: what fitting the latest call changed (retargeted steps, re-evaluated ε factors).

    Raises:
        ConfigError: the pipeline has no transformer or scheduler, no adapter understands its
            transformer, or the schedule was tuned for another architecture, depth or input size.
        RuntimeError: a schedule is already applied to this pipeline.
    """

    def __init__(self, pipe: Any, schedule: str | Path | ScheduleFile | Schedule):
        transformer, scheduler = getattr(pipe, "transformer", None), getattr(pipe, "scheduler", None)
        if not isinstance(transformer, nn.Module) or scheduler is None:
            raise ConfigError(f"{type(pipe).__name__} has no transformer and scheduler; ebtune.apply takes a diffusers "
                              "DiT or PixArt pipeline (for your own loop use ebtune.cached)")
        if "set_timesteps" in vars(scheduler):
            raise RuntimeError("a schedule is already applied to this pipeline; close it before applying another")
        self.adapter = adapter_for(transformer)
        file = load_schedule_file(schedule) if isinstance(schedule, (str, Path)) else schedule
        self.file = file if isinstance(file, ScheduleFile) else None
        self.schedule: Schedule = file.schedule if isinstance(file, ScheduleFile) else file
        if not isinstance(self.schedule, Schedule):
            raise ConfigError(f"ebtune.apply takes a schedule file path, a loaded schedule file or a Schedule, "
                              f"not {type(schedule).__name__}")
        self._check_model(transformer)
        self.pipe, self.transformer, self.scheduler = pipe, transformer, scheduler
        self.current: Schedule | None = None
        self.notes: list[str] = []
        self._cache: CachedModel | None = None
        self._counter: StepCounter | None = None
        self._fitted: dict[tuple[float, ...], tuple[Schedule, list[str]]] = {}
        self._eps_channels = int(transformer.config.in_channels)
        self._calls = 0  # transformer calls in the current pipeline run
        original = scheduler.set_timesteps

        @functools.wraps(original)  # keeps the signature: pipelines inspect it for `timesteps=` / `sigmas=`
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self._start_run(pipeline_times(scheduler))
            return out

        scheduler.set_timesteps = set_timesteps
        self._hook = transformer.register_forward_hook(self._scale_eps)

    def _check_model(self, transformer: nn.Module) -> None:
        depth = len(self.adapter.branch_sites(transformer))
        where = f"{type(transformer).__name__}"
        if self.file is not None:
            tuned = self.file.model
            if _ARCHITECTURE.get(tuned["family"], tuned["family"]) != _ARCHITECTURE.get(self.adapter.family):
                raise ConfigError(f"schedule was tuned for model family {tuned['family']!r} but the pipeline's "
                                  f"transformer is {where} ({self.adapter.family}); tune one for this model")
            for key, attr in _SHAPE_KEYS.items():
                have = getattr(transformer.config, attr, None)
                if key in tuned and have is not None and int(tuned[key]) != int(have):
                    raise ConfigError(f"schedule was tuned for {key} {tuned[key]} but the transformer's {attr} is "
                                      f"{have}; tune one for this model")
        if self.schedule.depth != depth:
            raise ConfigError(f"schedule has {self.schedule.depth} blocks but {where} has {depth}; tune one for this "
                              f"model, or pass ebtune.retarget_depth(schedule, {depth})[0] if an approximation will do")

    def _fit(self, times: tuple[float, ...]) -> tuple[Schedule, list[str]]:
        """The schedule for a run at `times`: as given at its own step count, else retargeted."""
        K, S = len(times), self.schedule.steps
        if K == S:
            return self.schedule, []
        rule: EpsScale | None = self.file.eps_scale_rule() if self.file is not None else None
        try:
            return retarget_steps(self.schedule, K, step_times(S), times, rule)
        except ValueError as e:
            raise ConfigError(f"cannot map the {S}-step schedule onto {type(self.scheduler).__name__}'s {K} timesteps "
                              f"({e}); use a first-order scheduler such as DDIMScheduler or DDPMScheduler") from None

    def _start_run(self, times: tuple[float, ...]) -> None:
        if times not in self._fitted:
            self._fitted[times] = self._fit(times)
            schedule, notes = self._fitted[times]
            if notes:
                warnings.warn(f"ebtune.apply: {self.schedule.steps}-step schedule fitted to {len(times)} steps: "
                              + "; ".join(notes), stacklevel=5)  # the user's pipe(...) line
        schedule, self.notes = self._fitted[times]
        if self._cache is None or self._cache.schedule is not schedule:
            self._detach()
            self._cache = CachedModel(self.transformer, schedule, self.adapter)
            self._counter = StepCounter(self._cache)
        self._counter.reset()
        self._calls = 0
        self.current = schedule

    def _scale_eps(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._cache is None:
            raise RuntimeError("the transformer ran before the pipeline set its timesteps; ebtune.apply needs a "
                               "pipeline that calls scheduler.set_timesteps (for your own loop use ebtune.cached)")
        self._calls += 1
        if self._calls > self._cache.schedule.steps:
            raise ConfigError(f"{type(self.pipe).__name__} called the transformer more often than its "
                              f"{self._cache.schedule.steps} timesteps; ebtune.apply needs one transformer call per "
                              "step (guidance as one doubled batch, a first-order scheduler)")
        factor = self._cache.schedule.eps_scale[self._cache.step]
        if factor == 1.0:
            return None
        sample = output[0] if isinstance(output, tuple) else output.sample
        C = self._eps_channels
        scaled = torch.cat([sample[:, :C] * factor, sample[:, C:]], dim=1)
        if isinstance(output, tuple):
            return (scaled, *output[1:])
        output.sample = scaled
        return output

    def _detach(self) -> None:
        if self._counter is not None:
            self._counter.close()
        if self._cache is not None:
            self._cache.close()
        self._cache = self._counter = None

    def close(self) -> None:
        """Remove the hook, the cache and the scheduler shadow: the pipeline is as before."""
        self._hook.remove()
        self._detach()
        if "set_timesteps" in vars(self.scheduler):
            del self.scheduler.set_timesteps

    def __enter__(self) -> "AppliedSchedule":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def apply(pipe: Any, schedule: str | Path | ScheduleFile | Schedule) -> AppliedSchedule:
    """`with ebtune.apply(pipe, "tuned.json"):` — see the module docstring and `AppliedSchedule`."""
    return AppliedSchedule(pipe, schedule)
