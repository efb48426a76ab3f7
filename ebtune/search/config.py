"""`SearchConfig`: a search's settings, checked and typed, before any model loads or file is written.

`SearchConfig.from_mapping(cfg)` takes the composed config (plain values: `conf/search.yaml` with the
user's overrides) and raises `ConfigError` with one line for every bad value. What it decides (name,
folder, space, model, sampler, device, objectives, constraints, budget) travels as typed fields; the
sections the evaluator and the launchers read themselves (`metric`, `search`, `ray`) travel in
`cfg`, the same plain mapping a Ray worker receives.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ebtune.errors import ConfigError
from ebtune.run.factory import model_spec, resolve_device, resolve_threads, sampler_from
from ebtune.run.loading import ModelSpec
from ebtune.sampling.samplers import SAMPLER_STEPS, Sampler
from ebtune.schedules import ScheduleContext
from ebtune.search.evaluator import latency_batch, latency_pairs
from ebtune.search.gap_gate import check_gap_prune
from ebtune.search.inference import equivalence_margin
from ebtune.search.pareto import Constraint, direction, objective_names
from ebtune.search.space import SearchSpace, load_space
from ebtune.search.study import check_sampler

# Settings that count something: a fraction would be truncated silently.
WHOLE_NUMBERS = ("steps", "trials", "seed", "metric.n_samples", "metric.batch_size", "metric.latency_warmup",
                 "metric.bootstrap", "metric.n_proxy", "search.startup_trials", "search.population_size",
                 "search.n_trials")


@dataclass(frozen=True)
class SearchConfig:
    """One search, decided. Build it with `from_mapping`; `run_search(config)` runs it."""

    cfg: Mapping[str, Any]  # the resolved plain config (Ray workers and the evaluator read it)
    name: str  # the Optuna study and the MLflow parent run
    folder: Path  # where study.db, pareto.json, schedules/ and grids/ go
    space: SearchSpace
    model: ModelSpec
    sampler: Sampler
    device: torch.device
    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]

    @property
    def trials(self) -> int:
        """Trials the study holds in all when the search is done (`trials=`)."""
        return int(self.cfg["search"]["n_trials"])

    @property
    def confirm_n(self) -> int:
        """Fresh images per confirmed point: `search.confirm_n`, auto = twice `metric.n_samples`, so a
        smoke search stays a smoke search."""
        value = self.cfg["search"]["confirm_n"]
        return 2 * int(self.cfg["metric"]["n_samples"]) if value == "auto" else int(value)

    @property
    def launcher(self) -> str:
        return str(self.cfg["launcher"]["name"])

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], space_path: str | None = None) -> "SearchConfig":
        """Check `cfg` and decide everything a search needs before its model loads.

        Args:
            cfg: the composed search config (plain values).
            space_path: where the space file is, when the caller resolved `cfg["space"]` itself
                (the CLI looks in the user's config directories); default `cfg["space"]`.

        Raises:
            ConfigError: the first bad setting, in one line naming it and the fix.
        """
        _check_numbers(cfg)
        space = load_space(space_path or str(cfg["space"]))
        spec = model_spec(cfg["model"])
        sampler = sampler_from(cfg, spec)
        space.check(ScheduleContext(sampler.steps, spec.config.depth, sampler.times))
        device = resolve_device(cfg["device"])
        resolve_threads(cfg["threads"])  # a bad value fails here, before any file is written
        check_sampler(cfg["search"])  # a bad search.sampler fails before study.db is created
        _check_metric(cfg["metric"], spec.decoder)
        name = _name(cfg, spec.name, space.name)
        return cls(
            cfg=cfg, name=name, folder=Path(cfg["out"] or Path("outputs") / "search" / name).absolute(),
            space=space, model=spec, sampler=sampler, device=device,
            objectives=tuple(_objectives(cfg["search"]["objectives"], device.type, spec.decoder)),
            constraints=tuple(Constraint.parse(c) for c in cfg["search"]["constraints"]))


def _check_numbers(cfg: Mapping[str, Any]) -> None:
    for key in WHOLE_NUMBERS:
        section, _, leaf = key.rpartition(".")
        value = (cfg[section] if section else cfg).get(leaf)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a whole number")
    search = cfg["search"]
    for key in ("startup_trials", "population_size"):
        if search[key] < 0:
            raise ConfigError(f"search.{key}={search[key]} must be 0 or more")
    confirm_n = search["confirm_n"]
    if confirm_n != "auto" and (not isinstance(confirm_n, int) or isinstance(confirm_n, bool) or confirm_n < 0):
        raise ConfigError(f"search.confirm_n={confirm_n!r} must be auto (twice metric.n_samples) or a whole number "
                          f">= 0 (0 = no confirmation)")
    if search["n_trials"] < 1:
        raise ConfigError(f"trials must be at least 1, got {search['n_trials']}")
    samplers = search.get("baseline_samplers", "auto")
    if samplers != "auto" and (not isinstance(samplers, list) or not all(s in SAMPLER_STEPS for s in samplers)):
        raise ConfigError(f"search.baseline_samplers={samplers!r} must be auto or a list of samplers "
                          f"({', '.join(SAMPLER_STEPS.choices())}), e.g. [ddim,dpmpp-2m]")
    if not isinstance(search["constraints"], list):
        raise ConfigError(f"search.constraints={search['constraints']!r} must be a list, e.g. ['fid <= nocache + 0.5']")


def _check_metric(metric: Mapping[str, Any], decoder: str) -> None:
    try:
        latency_batch(int(metric["n_samples"]), int(metric["batch_size"]), int(metric["latency_warmup"]))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if int(metric["n_samples"]) < 2:
        raise ConfigError("metric.n_samples must be at least 2 (FID needs a covariance)")
    check_gap_prune(metric, decoder)
    latency_pairs(metric)
    equivalence_margin(metric)


def _name(cfg: Mapping[str, Any], model: str, space: str) -> str:
    name = cfg["name"] or (Path(cfg["out"]).name if cfg["out"] else
                           f"{model}-{space}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if not name or any(c in name for c in "/\\'\""):
        raise ConfigError(f"search name {name!r} must be non-empty without slashes or quotes; pass name=NAME")
    return name


def _objectives(value: Any, device_type: str, decoder: str) -> list[str]:
    names = objective_names(value, device_type)
    if value == "auto":
        return names
    for name in names:
        direction(name)
    if "accuracy" in names and decoder != "digits":
        raise ConfigError("objective 'accuracy' needs the digits classifier (model=dit-tiny); drop it for this model")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"search.objectives={names}; give at least two different metrics, e.g. [fid,macs]")
    return names
