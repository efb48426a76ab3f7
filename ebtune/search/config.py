"""`SearchConfig`: a search's settings, checked and typed, before any model loads or file is written.

`SearchConfig.from_mapping(cfg)` takes the composed config (plain values: `conf/search.yaml` with the
user's overrides) and raises `ConfigError` with one line for every bad value. Everything travels typed:
what it decides (name, folder, space, model, sampler, device, objectives, constraints) and the four
settings sections, `metric`, `search`, `ray` and `tracking`, as the frozen dataclasses below. The same
dataclasses are the sections' Hydra schema (`ebtune.cli.config` stores them in Hydra's `ConfigStore`),
so a wrong type or an unknown key fails while the config is composed. Their values live only in
`conf/` (`search.yaml`, `search/default.yaml`, `tracking/default.yaml`), next to the comments that
explain them; the classes hold the types. `cfg` keeps the plain mapping for what needs plain values:
a Ray worker's evaluator and the settings a study stores to refuse a changed resume.
"""
from __future__ import annotations

import datetime
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, List, Mapping, Optional, TypeVar

import torch

from ebtune.errors import ConfigError
from ebtune.metrics.registry import quality_name
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

# Top-level settings that count something: a fraction would be truncated silently (the sections'
# whole numbers are `int` fields of their schema).
WHOLE_NUMBERS = ("steps", "trials", "seed")
T = TypeVar("T")

# The schemas use `typing.Optional`/`List` spellings: OmegaConf 2.3 reads annotations at runtime and has
# no unions beyond Optional, so a setting that is "auto" or a value is `Any`, checked in `from_mapping`.


@dataclass(frozen=True)
class MetricSettings:
    """`metric:` how each point is scored (conf/search.yaml documents every key)."""

    n_samples: int
    batch_size: int
    latency_warmup: int
    bootstrap: int
    margin: float
    n_proxy: int
    latency_pairs: Any  # auto | a whole number >= 0
    gap_prune: bool
    couple_noise: bool
    couple_noise: bool


@dataclass(frozen=True)
class SearchSettings:
    """`search:` the Optuna study and its budget (conf/search/default.yaml documents every key)."""

    sampler: Any  # a name in ebtune.search.study.SAMPLERS, or a mapping with _target_
    n_trials: int
    seed: int
    objectives: Any  # auto | a list of metric names
    constraints: List[str]
    startup_trials: int
    population_size: int
    baseline_cache: Optional[str]
    baseline_samplers: Any  # auto | a list of sampler names
    confirm_n: Any  # auto | a whole number >= 0
    storage: Optional[str]
    trial_timeout_s: Optional[float]
    max_consecutive_failures: int
    heartbeat_interval: float
    grace_period: float


@dataclass(frozen=True)
class RaySettings:
    """`ray:` the cluster and the resources of a trial with launcher=ray (conf/search.yaml)."""

    address: Optional[str]
    num_cpus: Optional[int]
    cpus_per_trial: float
    gpus_per_trial: Any  # auto | a number
    max_concurrent: Optional[int]


@dataclass(frozen=True)
class TrackingSettings:
    """`tracking:` the MLflow store and experiment (conf/tracking/default.yaml)."""

    uri: Optional[str]
    experiment: Optional[str]


SECTIONS: dict[str, type] = {"metric": MetricSettings, "search": SearchSettings, "ray": RaySettings,
                             "tracking": TrackingSettings}


def schema(cls: type) -> Any:
    """`cls` as a writable OmegaConf node: the type of a config section, its values merged on top.

    (A frozen dataclass makes a read-only node, which nothing could be merged into.)
    """
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cls)
    OmegaConf.set_readonly(node, False)
    return node


def _kind(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return f"{_kind(args[0])} or null"
    if typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple):
        return "a list, e.g. [a,b]"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(annotation, "valid")


def settings_error(e: Exception) -> str | None:
    """One line for OmegaConf's error about a typed section (a wrong type, an unknown key), naming the
    key as the user writes it; None for any other error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
    owner, key = getattr(cause, "object_type", None), getattr(cause, "key", None)
    if owner is None or not isinstance(key, str) or not hasattr(owner, "__dataclass_fields__"):
        return None
    full_key = str(getattr(cause, "full_key", key))
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        section = full_key.rpartition(".")[0] or owner.__name__
        return f"{full_key} is not a setting; {section} has: {', '.join(f.name for f in fields(owner))}"
    if isinstance(cause, MissingMandatoryValue):
        return f"{full_key} has no value; give it as {full_key}=VALUE"
    if isinstance(cause, ValidationError):
        raw = str(getattr(cause, "child_node", ""))  # the node as written, interpolations unresolved
        if raw.startswith("${") and raw.endswith("}"):
            full_key = raw[2:-1]  # the value came from the key this one interpolates (search.n_trials: ${trials})
        return f"{full_key}={cause.value!r} must be {_kind(typing.get_type_hints(owner).get(key))}"
    return None


def typed(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """The section `values` as a `cls` instance, checked against its schema.

    Raises:
        ConfigError: a wrong type or an unknown or missing key, in one line.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.create({section: schema(cls)}), {section: dict(values)})
        return OmegaConf.to_object(node[section])  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(settings_error(e) or f"{section}: {str(e).strip().splitlines()[0]}") from None


@dataclass(frozen=True)
class SearchConfig:
    """One search, decided. Build it with `from_mapping`; `run_search(config)` runs it."""

    cfg: Mapping[str, Any]  # the resolved plain config: a Ray worker's evaluator and the study's stored settings
    name: str  # the Optuna study and the MLflow parent run
    folder: Path  # where study.db, pareto.json, schedules/ and grids/ go
    space: SearchSpace
    model: ModelSpec
    sampler: Sampler
    device: torch.device
    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    metric: MetricSettings
    search: SearchSettings
    ray: RaySettings
    tracking: TrackingSettings

    @property
    def trials(self) -> int:
        """Trials the study holds in all when the search is done (`trials=`)."""
        return self.search.n_trials

    @property
    def confirm_n(self) -> int:
        """Fresh images per confirmed point: `search.confirm_n`, auto = `metric.n_samples`, the size the
        user asked for (the metric's resolution table backs 256 for the default; a smoke search stays one)."""
        value = self.search.confirm_n
        return self.metric.n_samples if value == "auto" else int(value)

    @property
    def launcher(self) -> str:
        return str(self.cfg["launcher"]["name"])

    @property
    def threads(self) -> Any:
        """`threads`: torch threads per CPU process (auto or a whole number; `resolve_threads` reads it)."""
        return self.cfg["threads"]

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
        sections = {key: typed(schema_cls, cfg[key], key) for key, schema_cls in SECTIONS.items()}
        search, metric = sections["search"], sections["metric"]
        _check_search(search)
        space = load_space(space_path or str(cfg["space"]))
        spec = model_spec(cfg["model"])
        sampler = sampler_from(cfg, spec)
        space.check(ScheduleContext(sampler.steps, spec.config.depth, sampler.times))
        device = resolve_device(cfg["device"])
        resolve_threads(cfg["threads"])  # a bad value fails here, before any file is written
        check_sampler(cfg["search"])  # a bad search.sampler fails before study.db is created
        _check_metric(metric, cfg["metric"], spec.decoder)
        name, quality = _name(cfg, spec.name, space.name), quality_name(spec.fid)
        return cls(
            cfg=cfg, name=name, folder=Path(cfg["out"] or Path("outputs") / "search" / name).absolute(),
            space=space, model=spec, sampler=sampler, device=device,
            objectives=tuple(_objectives(search.objectives, device.type, spec.decoder, quality)),
            constraints=tuple(Constraint.parse(c, quality) for c in search.constraints), **sections)


def _check_numbers(cfg: Mapping[str, Any]) -> None:
    for key in WHOLE_NUMBERS:
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a whole number")


def _check_search(search: SearchSettings) -> None:
    """What the schema's types cannot say: ranges, and the settings that are `auto` or a value."""
    for key in ("startup_trials", "population_size"):
        if getattr(search, key) < 0:
            raise ConfigError(f"search.{key}={getattr(search, key)} must be 0 or more")
    confirm_n = search.confirm_n
    if confirm_n != "auto" and (not isinstance(confirm_n, int) or isinstance(confirm_n, bool) or confirm_n < 0):
        raise ConfigError(f"search.confirm_n={confirm_n!r} must be auto (metric.n_samples) or a whole number "
                          f">= 0 (0 = no confirmation)")
    if search.n_trials < 1:
        raise ConfigError(f"trials must be at least 1, got {search.n_trials}")
    samplers = search.baseline_samplers
    if samplers != "auto" and (not isinstance(samplers, list) or not all(s in SAMPLER_STEPS for s in samplers)):
        raise ConfigError(f"search.baseline_samplers={samplers!r} must be auto or a list of samplers "
                          f"({', '.join(SAMPLER_STEPS.choices())}), e.g. [ddim,dpmpp-2m]")


def _check_metric(metric: MetricSettings, plain: Mapping[str, Any], decoder: str) -> None:
    try:
        latency_batch(metric.n_samples, metric.batch_size, metric.latency_warmup)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if metric.n_samples < 2:
        raise ConfigError("metric.n_samples must be at least 2 (FID needs a covariance)")
    check_gap_prune(plain, decoder)
    latency_pairs(plain)
    equivalence_margin(plain)


def _name(cfg: Mapping[str, Any], model: str, space: str) -> str:
    name = cfg["name"] or (Path(cfg["out"]).name if cfg["out"] else
                           f"{model}-{space}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if not name or any(c in name for c in "/\\'\""):
        raise ConfigError(f"search name {name!r} must be non-empty without slashes or quotes; pass name=NAME")
    return name


def _objectives(value: Any, device_type: str, decoder: str, quality: str) -> list[str]:
    names = objective_names(value, device_type, quality)
    if value == "auto":
        return names
    for name in names:
        direction(name)
    if "accuracy" in names and decoder != "digits":
        raise ConfigError("objective 'accuracy' needs the digits classifier (model=dit-tiny); drop it for this model")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"search.objectives={names}; give at least two different metrics, e.g. [quality,macs]")
    return names
