"""The baselines every search evaluates first and draws on the same plot as its trials.

- `nocache`: every branch computed (also the reference for `distance` and `latency_speedup`);
- `fora2`, `fora3`: FORA, both branches recomputed every 2nd / 3rd step;
- `ebcache-table`: the EB-Cache released table with the paper's b(t) (b_h 0.98, b_l 0.96, t_s 0.4);
- `taylor-<n>-<o>` (spaces that forecast): TaylorSeer, both branches computed every n-th step after
  its warm-up, an order-o Taylor forecast between, n in 3-6 and o in 1-2;
- `<sampler>-<k>`: no cache with fewer steps, for every sampler of `search.baseline_samplers`
  (default: the search's own, DDIM and DPM-Solver++(2M)) at k = round(K / s) for each speed level s
  of `SPEED_LEVELS`: every model evaluation costs the same, so these are the uncached runs at the
  MACs the cache schedules reach, and a cache schedule only counts where it beats simply taking
  fewer steps with a good solver (the sampler at K steps is a choice `space=joint` searches);
- `nocache+<rule>`, `<sampler>-<k>+<rule>`: the same uncached runs with the search space's ε-scale
  rule (`SearchSpace.reference_eps_form`), because ε scaling improves samples without any cache:
  a front point is judged against the strongest schedule that caches nothing.

After no cache, baselines run cheapest first under successive halving over images
(`ebtune.search.halving`): one stops at a rung where an evaluated baseline that costs no more is
better on the same images beyond paired noise. A baseline that caches nothing faces only baselines
that cache nothing, so the strongest uncached schedule at every cost always runs in full; no cache
and the baselines a constraint names never stop. A stopped baseline is recorded as `pruned` and
judges nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, NamedTuple, Sequence

import numpy as np

from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import Sampler
from ebtune.schedules import ScheduleContext
from ebtune.schedules.spec import ScheduleSpec
from ebtune.search.baseline_cache import BaselineCache
from ebtune.search.evaluator import Evaluator, Outcome, Reference, Rung, TrialPruned
from ebtune.search.halving import ProxyRule, sign_of
from ebtune.search.records import RUNGS
from ebtune.search.space import SearchSpace

NO_CACHE = "nocache"
# Speed-ups over the search's uncached run at which every baseline sampler runs uncached.
SPEED_LEVELS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
# What `search.baseline_samplers: auto` adds to the search's own sampler: the standard fast solver
# and the deterministic sampler DiT users run.
DEFAULT_BASELINE_SAMPLERS = ("ddim", "dpmpp-2m")
# Spaces over these families forecast skipped outputs; their searches also face TaylorSeer (both
# branches computed every n-th step, an order-o Taylor forecast between) for each (n, o) of TAYLOR.
FORECAST_FAMILIES = ("forecast", "taylor")
TAYLOR = tuple((n, o) for n in (3, 4, 5, 6) for o in (1, 2))
# (name, schedule family, family params, ε-scale form) of the cached baselines at the search's steps.
CACHED = (
    ("fora2", "fora", {"interval": 2}, {"name": "none"}),
    ("fora3", "fora", {"interval": 3}, {"name": "none"}),
    ("ebcache-table", "ebcache-table", {}, {"name": "ebcache", "b_h": 0.98, "b_l": 0.96, "t_s": 0.4}),
)


@dataclass(frozen=True)
class Baseline:
    """A named schedule at some step count, with the ε-scale form it was built from."""

    name: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    eps_scale: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    steps: int = 0
    sampler: str | None = None  # a `SAMPLER_STEPS` name; None = the search's sampler (with its settings)

    def schedule(self, ctx: ScheduleContext) -> Schedule:
        return ScheduleSpec.of(self.family, self.params, self.eps_scale).build(ctx)

    @property
    def caches(self) -> bool:
        return self.family != "none"

    def built(self, evaluator: Evaluator) -> tuple[Sampler, Schedule, float]:
        """Its sampler, its schedule in that sampler's steps, and its MACs per image."""
        sampler = evaluator.sampler_at(self.steps, self.sampler)
        schedule = self.schedule(ScheduleContext(sampler.steps, evaluator.loaded.config.depth, sampler.times))
        return sampler, schedule, evaluator.macs(schedule, sampler)


class Planned(NamedTuple):
    """A baseline built for this search: its sampler, its schedule and its MACs per image."""

    base: Baseline
    sampler: Sampler
    schedule: Schedule
    macs: float


def baseline_samplers(evaluator: Evaluator) -> list[str]:
    """`search.baseline_samplers`, the search's own sampler first (`auto`: with DEFAULT_BASELINE_SAMPLERS)."""
    given = evaluator.cfg["search"]["baseline_samplers"]
    own = evaluator.cfg["sampler"]["name"]
    names = [own, *(DEFAULT_BASELINE_SAMPLERS if given == "auto" else given)]
    return list(dict.fromkeys(names))


def fewer_steps(steps: int) -> list[int]:
    """The uncached step counts of a baseline sampler, most first: K / SPEED_LEVELS, below K."""
    return sorted({k for k in (max(1, round(steps / level)) for level in SPEED_LEVELS) if k < steps}, reverse=True)


def plan(evaluator: Evaluator, space: SearchSpace | None = None) -> list[Planned]:
    """No cache first, then, cheapest first: the cached baselines (TaylorSeer's too for a space that
    forecasts) and every baseline sampler uncached at fewer steps; under the space's ε form (when
    not "none"), every uncached and TaylorSeer baseline once more. Each comes built."""
    steps, own = evaluator.sampler.steps, evaluator.cfg["sampler"]["name"]
    eps_form = space.reference_eps_form() if space is not None else None
    out = [Baseline(NO_CACHE, "none", steps=steps)]
    out += [Baseline(name, family, dict(params), dict(form), steps) for name, family, params, form in CACHED]
    if space is not None and space.schedule in FORECAST_FAMILIES:
        out += [Baseline(f"taylor-{n}-{o}", "taylor", {"interval": n, "order": o}, steps=steps) for n, o in TAYLOR]
    for sampler in baseline_samplers(evaluator):
        out += [Baseline(f"{sampler}-{k}", "none", steps=k, sampler=None if sampler == own else sampler)
                for k in fewer_steps(steps)]
    if eps_form and eps_form["name"] != "none":
        out += [replace(b, name=f"{b.name}+{eps_form['name']}", eps_scale=dict(eps_form))
                for b in out if b.family in ("none", "taylor")]
    built = [Planned(b, *b.built(evaluator)) for b in out]
    return built[:1] + sorted(built[1:], key=lambda p: p.macs)  # stable: ties keep this order


def _print_now(line: str) -> None:
    print(line, flush=True)


def _eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@dataclass(frozen=True)
class Known:
    """An evaluated baseline as the halving rule sees it: whether it caches, its MACs and its rungs."""

    caches: bool
    macs: float
    rungs: tuple[Rung, ...]

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> "Known":
        """From a baseline record the study holds (`Recorder.baseline`)."""
        return cls(record["params"]["schedule"] != "none", float(record["metrics"]["macs"]),
                   tuple(Rung.from_attr(r) for r in record.get(RUNGS, [])))


def evaluate_baselines(
    evaluator: Evaluator, todo: Sequence[Planned],
    on_done: Callable[[Baseline, Schedule, Sampler, Outcome, bool], None] | None = None,
    progress: Callable[[str], None] | None = _print_now, cache: BaselineCache | None = None,
    protected: Collection[str] = (), reference: Reference | None = None, known: Sequence[Known] = (),
) -> tuple[list[tuple[Baseline, Outcome]], Reference]:
    """Evaluate `todo` in order (without `reference`, no cache must come first: it is the reference of
    the others), or take an outcome from `cache` when an earlier search stored the same evaluation
    (`baseline_cache.outcome_key`); each may stop at a rung (module docstring) unless `protected`,
    facing the `known` baselines and those evaluated before it. A stored stopped outcome is reused
    only where the rule stops it again.

    Args:
        on_done: called after each baseline with its schedule, sampler, outcome (`pruned` when it
            stopped at a rung) and whether it was reused (for recording).
        progress: gets one line before each evaluated baseline, "baselines k/n: NAME ...", with the
            time left estimated from the seconds per sampled MAC so far (None: silent).
        protected: names that never stop (the baselines constraints refer to).

    Returns:
        (baseline, outcome) pairs in `todo` order and the no-cache reference for the trials.
    """
    results: list[tuple[Baseline, Outcome]] = []
    faced = list(known)
    total_macs, done_macs, started = sum(p.macs for p in todo), 0.0, time.monotonic()
    for k, (base, sampler, schedule, macs) in enumerate(todo, start=1):
        gate = None if reference is None or base.name in protected else _rule(base, faced, evaluator)
        key, outcome = cache.find(evaluator, schedule, sampler) if cache is not None else ("", None)
        if outcome is not None and outcome.pruned and (gate is None or gate(outcome.metrics, list(outcome.rungs[-1].draws))):
            outcome = None  # stopped when stored, but it would not stop here: evaluate it
        reused = outcome is not None
        if outcome is None:
            if progress is not None:
                left = "" if not done_macs else (
                    f", about {_eta((time.monotonic() - started) / done_macs * (total_macs - done_macs))} left")
                progress(f"baselines {k}/{len(todo)}: {base.name} ({sampler.steps} steps, {evaluator.n_samples} "
                         f"images){left}")
            outcome = _evaluate(evaluator, schedule, reference, sampler, gate)
            done_macs += macs
            if cache is not None:
                cache.store(key, outcome)
        if reference is None:
            reference = Reference(outcome.latents, outcome.metrics["latency_s"])
        results.append((base, outcome))
        faced.append(Known(base.caches, outcome.metrics["macs"], outcome.rungs))
        if on_done is not None:
            on_done(base, schedule, sampler, outcome, reused)
    if reference is None:
        raise ValueError("evaluate_baselines needs no cache first or a reference")
    return results, reference


def _rule(base: Baseline, faced: Sequence[Known], evaluator: Evaluator) -> ProxyRule:
    """Whom `base` faces at its rungs: every evaluated baseline, or, when `base` caches nothing, the
    evaluated baselines that cache nothing (so the strongest uncached schedule is never stopped by a cache)."""
    return ProxyRule(tuple((k.macs, k.rungs) for k in faced if base.caches or not k.caches),
                     sign_of(evaluator.metric.direction))


def _evaluate(evaluator: Evaluator, schedule: Schedule, reference: Reference | None, sampler: Sampler,
              gate: ProxyRule | None) -> Outcome:
    try:
        return evaluator.evaluate(schedule, reference, sampler, gate=gate)
    except TrialPruned as stop:
        return Outcome(stop.metrics, np.zeros(0), np.zeros((0, 1, 1, 1), np.uint8), stop.rungs, pruned=True)
