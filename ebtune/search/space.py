"""Search spaces: a YAML file in `search_spaces/` mapped onto one schedule family and one ε-scale form.

File layout (see `search_spaces/ebcache.yaml`)::

    schedule: intervals          # a family of `ebtune.schedules.SCHEDULES`
    eps_scale: ebcache           # a form of `ebtune.core.eps_scale.EPS_SCALES`
    params:                      # searched, typed parameters
      attn: {type: int, low: 1, high: 3}
      eps_scale.b_h: {type: float, low: 0.94, high: 1.04}
      mlp: {type: int, low: 1, high: 4, repeat: 4}     # a list: mlp_0..mlp_3 in the study
    fixed:                       # passed as given
      eps_scale.t_s: 0.4
    seeds:                       # optional: points every new study evaluates first
      - {attn: 2, eps_scale.b_h: 0.98}

Names starting with `eps_scale.` go to the ε-scale form, the others to the schedule family. Loading
checks every name against the family's and the form's signature, every range for emptiness, and
builds the schedule at the space's low and high corners for the search's step count, so a space
that cannot produce a valid schedule fails before any trial runs.

A space may also ask for the schedule EB-Cache's calibration rule (Algorithm 1) picks on the model::

    calibrated_seed: {a: 0.02, c: 0.01, boundary: 0.4, n: 8, eps_scale.b_h: 0.98, eps_scale.b_l: 0.96}

(the rule's parameters, and a value for every searched ε parameter). The masks depend on the model,
so the search calibrates once at its start (`ebtune.search.seeding`) and attaches them with
`with_calibrated`; where the family cannot express them, the seed trial carries `masks:
ebcache-calibrated` (MASKS_KEY) and `to_schedule` gives it the calibrated masks with its ε form.

Seeds are known-good points (e.g. FORA's masks with the paper's ε correction) that a new study is
given before the sampler proposes anything, so a short search starts from the baselines' region
instead of rediscovering it. A seed may leave parameters out (the sampler fills them in); each
value it gives must lie in its parameter's range.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from ebtune.core.eps_scale import EPS_SCALES, make_eps_scale
from ebtune.core.schedule import Schedule
from ebtune.errors import ConfigError
from ebtune.sampling.samplers import SAMPLER_STEPS, step_times
from ebtune.schedules import SCHEDULES, ScheduleContext
from ebtune.schedules.spec import ScheduleSpec

# A link inside the package to the repository's search_spaces/, so it ships with an installed package.
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
EPS_PREFIX = "eps_scale."
MASKS_KEY = "masks"  # a trial parameter only the calibrated seed has: its masks are the calibrated ones
CALIBRATED = "ebcache-calibrated"  # the calibration family, and the MASKS_KEY value that names its masks
# Parameters of the sampling run itself rather than of the schedule family: a space that searches them
# (`space=joint`) picks the sampler and the step count together with the cache (see `SearchSpace.sampling`).
RUN_KEYS = ("sampler", "steps")
_TYPES = ("int", "float", "categorical")
_KEYS = {"type", "low", "high", "step", "log", "choices", "repeat"}


def space_names() -> list[str]:
    """The spaces shipped in `search_spaces/` (file stems)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Param:
    """One searched parameter. `repeat` > 0 makes it a list of that many values (`name_0`, `name_1`, ...)."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()
    repeat: int = 0

    @property
    def study_names(self) -> list[str]:
        """The names under which Optuna stores this parameter."""
        return [f"{self.name}_{i}" for i in range(self.repeat)] if self.repeat else [self.name]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def corner(self, high: bool) -> Any:
        """The lowest or highest value this parameter can take (first/last choice if categorical)."""
        if self.type == "categorical":
            return self.choices[-1 if high else 0]
        if not high:
            return int(self.low) if self.type == "int" else float(self.low)
        if self.type == "int":  # the largest value on the step grid
            step = int(self.step or 1)
            return int(self.low) + (int(self.high) - int(self.low)) // step * step
        return float(self.high)


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated space: the family and ε-scale form, the searched and the fixed parameters."""

    name: str
    schedule: str
    eps_scale: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[Mapping[str, Any], ...] = ()
    calibrated_seed: Mapping[str, Any] = field(default_factory=dict)  # Algorithm 1's settings, {} = none
    calibrated: Schedule | None = field(default=None, compare=False)  # its masks on the search's model

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial (or anything with its `suggest_*` methods) for one point: study name → value.
        A trial enqueued with the user attribute MASKS_KEY (the calibrated seed) also gets that parameter."""
        point = {name: p.suggest(trial, name) for p in self.params for name in p.study_names}
        masks = trial.user_attrs.get(MASKS_KEY)
        if masks is not None:
            point[MASKS_KEY] = trial.suggest_categorical(MASKS_KEY, [masks])
        return point

    def with_calibrated(self, schedule: Schedule) -> "SearchSpace":
        """This space with the calibrated seed's masks attached (see the module docstring)."""
        return replace(self, calibrated=schedule)

    def split(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(schedule family kwargs, ε-scale kwargs) from a point as `suggest` returns it, plus `fixed`."""
        values: dict[str, Any] = dict(self.fixed)
        for p in self.params:
            missing = [n for n in p.study_names if n not in params]
            if missing:
                raise ValueError(f"point has no value for {', '.join(missing)} of space {self.name!r}; pass every parameter")
            values[p.name] = [params[n] for n in p.study_names] if p.repeat else params[p.name]
        sched = {k: v for k, v in values.items() if not k.startswith(EPS_PREFIX) and k not in RUN_KEYS}
        eps = {k[len(EPS_PREFIX):]: v for k, v in values.items() if k.startswith(EPS_PREFIX)}
        return sched, eps

    def sampling(self, params: Mapping[str, Any]) -> tuple[str | None, int | None]:
        """(sampler name, step count) a point samples with; None where the space leaves it to the search."""
        values = {**self.fixed, **params}
        steps = values.get("steps")
        return values.get("sampler"), None if steps is None else int(steps)

    def eps_form(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parametric ε-scale form of a point, as a schedule file stores it: {"name": ..., **kwargs}."""
        return {"name": self.eps_scale, **self.split(params)[1]}

    def spec(self, params: Mapping[str, Any]) -> ScheduleSpec:
        """The schedule spec (family, its parameters, ε form) of one point."""
        sched, eps = self.split(params)
        return ScheduleSpec.of(self.schedule, sched, {"name": self.eps_scale, **eps})

    def to_schedule(self, params: Mapping[str, Any], ctx: ScheduleContext) -> Schedule:
        """The schedule of one point: the family's masks with ε factors of the form at `ctx.times`.

        Raises:
            ValueError: the point does not give a valid schedule (e.g. warm-up + cool-down > steps), or
                names the calibrated masks while none for `ctx` are attached.
        """
        if params.get(MASKS_KEY) != CALIBRATED:
            return self.spec(params).build(ctx)
        masks = self.calibrated
        if masks is None or (masks.steps, masks.depth) != (ctx.steps, ctx.depth):
            raise ValueError(f"point names the {CALIBRATED} masks but none for {ctx.steps} steps x {ctx.depth} blocks "
                             "are attached; run it through `ebtune search`, which calibrates at its start")
        form = self.eps_form(params)
        return masks.with_eps_scale(make_eps_scale(form.pop("name"), **form).factors(ctx.times))

    def reference_eps_form(self) -> dict[str, Any]:
        """The ε form the uncached baselines get: the space's form with its fixed values and the
        first seed point's (the known-good setting, e.g. the paper's b(t)), else the form's defaults."""
        given = {k: v for k, v in {**self.fixed, **(self.seeds[0] if self.seeds else {})}.items() if k.startswith(EPS_PREFIX)}
        return {"name": self.eps_scale, **{k[len(EPS_PREFIX):]: v for k, v in given.items()}}

    def corners(self) -> list[dict[str, Any]]:
        """The all-low and the all-high points."""
        return [{n: p.corner(high) for p in self.params for n in p.study_names} for high in (False, True)]

    def check(self, ctx: ScheduleContext) -> None:
        """Raise `ConfigError` unless both corners give a valid schedule for `ctx.steps` steps (or the
        corner's own step count, in a space that searches `steps`).

        The families' constraints grow with their parameters (warm-up + cool-down ≤ steps, groups ≤
        depth), so both corners being valid means the whole box is.
        """
        for corner, point in zip(("low", "high"), self.corners()):
            steps = self.sampling(point)[1] or ctx.steps
            at = ctx if steps == ctx.steps else ScheduleContext(steps, ctx.depth, step_times(steps))
            try:
                self.to_schedule(point, at)
            except ValueError as e:
                raise ConfigError(
                    f"space {self.name!r} cannot produce a valid schedule for steps={ctx.steps} at its {corner} corner "
                    f"({e}); narrow its ranges or use more steps"
                ) from None

    def describe(self) -> dict[str, Any]:
        """A plain dict of the space (for --dry-run and the MLflow parent run)."""
        params = {}
        for p in self.params:
            spec = {"type": p.type}
            if p.type == "categorical":
                spec["choices"] = list(p.choices)
            else:
                spec.update(low=p.low, high=p.high)
                spec.update({k: v for k, v in (("step", p.step), ("log", p.log), ("repeat", p.repeat)) if v})
            params[p.name] = spec
        return {"name": self.name, "schedule": self.schedule, "eps_scale": self.eps_scale, "params": params,
                "fixed": dict(self.fixed), "seeds": [dict(s) for s in self.seeds],
                **({"calibrated_seed": dict(self.calibrated_seed)} if self.calibrated_seed else {})}


def _accepted(fn: Any, skip_first: bool) -> set[str]:
    names = list(inspect.signature(fn).parameters)
    return set(names[1:] if skip_first else names)


def _param(name: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: parameter {name!r} must be a mapping like {{type: int, low: 1, high: 4}}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: parameter {name!r} has unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(_KEYS))}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise ConfigError(f"{where}: parameter {name!r} has type {kind!r}; use one of: {', '.join(_TYPES)}")
    repeat = spec.get("repeat", 0)
    if not isinstance(repeat, int) or repeat < 0:
        raise ConfigError(f"{where}: parameter {name!r} has repeat {repeat!r}; use a positive integer (list length)")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical parameter {name!r} needs a non-empty list of choices")
        return Param(name, kind, choices=tuple(choices), repeat=repeat)
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    numbers = [v for v in (low, high, step) if v is not None]
    if low is None or high is None or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise ConfigError(f"{where}: parameter {name!r} needs numeric low and high (and step, if given)")
    if kind == "int" and not all(float(v).is_integer() for v in numbers):
        raise ConfigError(f"{where}: int parameter {name!r} needs integer low, high and step")
    if low > high:
        raise ConfigError(f"{where}: parameter {name!r} has an empty range [{low}, {high}]; give low <= high")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: parameter {name!r} has step {step}; give a positive step")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: log-scaled parameter {name!r} needs low > 0 and no step")
    return Param(name, kind, low, high, step, log, repeat=repeat)


def parse_space(doc: Any, name: str) -> SearchSpace:
    """Validate a space document (the parsed YAML) without step-count checks (see `SearchSpace.check`).

    Raises:
        ConfigError: unknown family or form, unknown or duplicate parameter, bad type or empty range.
    """
    where = f"space {name!r}"
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict) or not doc["params"]:
        raise ConfigError(f"{where}: needs `schedule:`, `eps_scale:` and a non-empty `params:` mapping")
    unknown_top = set(doc) - {"schedule", "eps_scale", "params", "fixed", "seeds", "calibrated_seed"}
    if unknown_top:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown_top))}; use schedule, eps_scale, params, "
                          f"fixed, seeds, calibrated_seed")
    family, form = doc.get("schedule"), doc.get("eps_scale", "none")
    if family not in SCHEDULES:
        raise ConfigError(f"{where}: unknown schedule family {family!r}; choose one of: {', '.join(SCHEDULES)}")
    if form not in EPS_SCALES:
        raise ConfigError(f"{where}: unknown eps_scale {form!r}; choose one of: {', '.join(EPS_SCALES)}")
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: `fixed:` must be a mapping of parameter: value")
    params = tuple(_param(str(k), v, where) for k, v in doc["params"].items())
    accepted = {"schedule": _accepted(SCHEDULES[family], skip_first=True), "eps_scale": _accepted(EPS_SCALES[form], False)}
    _check_run_keys(params, fixed, where)
    for key in [p.name for p in params if p.name not in RUN_KEYS] + [k for k in fixed if k not in RUN_KEYS]:
        side, bare = ("eps_scale", key[len(EPS_PREFIX):]) if key.startswith(EPS_PREFIX) else ("schedule", key)
        if bare not in accepted[side]:
            owner = f"eps_scale {form!r}" if side == "eps_scale" else f"schedule {family!r}"
            raise ConfigError(f"{where}: unknown parameter {key!r} for {owner}; use one of: "
                              f"{', '.join(sorted(accepted[side])) or '(none)'}")
    overlap = {p.name for p in params} & set(fixed)
    if overlap:
        raise ConfigError(f"{where}: {', '.join(sorted(overlap))} is both searched and fixed; keep one")
    seeds = _seeds(doc.get("seeds") or [], params, where)
    calibrated = _calibrated_seed(doc.get("calibrated_seed") or {}, params, where)
    return SearchSpace(name, family, form, params, dict(fixed), seeds, calibrated)


def _check_run_keys(params: tuple[Param, ...], fixed: Mapping[str, Any], where: str) -> None:
    """`sampler` chooses among registered samplers; `steps` is a whole number of at least 1."""
    by_name = {p.name: p for p in params}
    samplers = list(by_name["sampler"].choices) if "sampler" in by_name else [fixed.get("sampler", SAMPLER_STEPS.choices()[0])]
    unknown = [s for s in samplers if s not in SAMPLER_STEPS]
    if unknown:
        raise ConfigError(f"{where}: sampler {', '.join(map(str, unknown))} is not a sampler; use: {', '.join(SAMPLER_STEPS.choices())}")
    steps = by_name.get("steps")
    if steps is not None and (steps.type != "int" or steps.low < 1 or steps.repeat):
        raise ConfigError(f"{where}: steps must be {{type: int, low: 1 or more, high: ...}}")
    if "steps" in fixed and (not isinstance(fixed["steps"], int) or fixed["steps"] < 1):
        raise ConfigError(f"{where}: fixed steps must be a whole number of at least 1")


def _calibrated_seed(doc: Any, params: tuple[Param, ...], where: str) -> dict[str, Any]:
    """Check `calibrated_seed:`: Algorithm 1's parameters plus a value in range for every searched ε parameter."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: `calibrated_seed:` must be a mapping like {{a: 0.02, c: 0.01, n: 8, eps_scale.b_h: 0.98}}")
    if not doc:
        return {}
    rule = {k for k in doc if not k.startswith(EPS_PREFIX)}
    accepted = _accepted(SCHEDULES[CALIBRATED], skip_first=True) - {"probe", "eps_scale"} | {"n"}
    if rule - accepted:
        raise ConfigError(f"{where}: calibrated_seed sets {', '.join(sorted(rule - accepted))}; use one of: "
                          f"{', '.join(sorted(accepted))} and eps_scale.* values")
    eps_params = [p for p in params if p.name.startswith(EPS_PREFIX)]
    missing = [n for p in eps_params for n in p.study_names if n not in doc]
    if missing:
        raise ConfigError(f"{where}: calibrated_seed gives no {', '.join(missing)}; give every searched ε parameter")
    _seeds([{k: v for k, v in doc.items() if k.startswith(EPS_PREFIX)}], params, f"{where} calibrated_seed")
    return dict(doc)


def _seeds(seeds: Any, params: tuple[Param, ...], where: str) -> tuple[dict[str, Any], ...]:
    """Check each seed point: a mapping of study names to values inside their parameter's range."""
    by_name = {n: p for p in params for n in p.study_names}
    if not isinstance(seeds, list) or not all(isinstance(s, dict) for s in seeds):
        raise ConfigError(f"{where}: `seeds:` must be a list of mappings of parameter: value")
    for i, seed in enumerate(seeds):
        for key, value in seed.items():
            p = by_name.get(key)
            if p is None:
                raise ConfigError(f"{where}: seed {i} sets {key!r}, which is not searched; use one of: {', '.join(by_name)}")
            inside = value in p.choices if p.type == "categorical" else p.low <= value <= p.high
            if not inside:
                raise ConfigError(f"{where}: seed {i} sets {key}={value!r} outside its range; change the seed or the range")
    return tuple(dict(s) for s in seeds)


def load_space(name_or_path: str) -> SearchSpace:
    """Load `search_spaces/<name>.yaml`, or a YAML file path.

    Raises:
        ConfigError: unknown space name (the message lists the shipped ones) or an invalid file.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        if name_or_path not in space_names():
            raise ConfigError(f"unknown space {name_or_path!r}; choose one of: {', '.join(space_names())} "
                              f"(or a path to a .yaml file)")
        path = SPACES_DIR / f"{name_or_path}.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"space file {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    return parse_space(doc, path.stem)
