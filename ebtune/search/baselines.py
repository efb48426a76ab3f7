"""The baselines every search evaluates first and draws on the same plot as its trials.

- `nocache`: every branch computed (also the reference for `distance` and `latency_speedup`);
- `fora2`, `fora3`: FORA, both branches recomputed every 2nd / 3rd step;
- `ebcache-table`: the EB-Cache released table with the paper's b(t) (b_h 0.98, b_l 0.96, t_s 0.4);
- `<sampler>-<k>`: no cache with fewer steps, k = round(K · MACs(cached) / MACs(no cache)) for each
  cached baseline above (e.g. 25/26 and 17/18 for K = 50), so a cache schedule only counts where it
  beats simply taking fewer steps;
- `nocache+<rule>`, `<sampler>-<k>+<rule>`: the same uncached runs with the search space's ε-scale
  rule (`SearchSpace.reference_eps_form`), because ε scaling improves samples without any cache:
  a front point is judged against the strongest schedule that caches nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import Sampler
from ebtune.schedules import ScheduleContext
from ebtune.schedules.spec import ScheduleSpec
from ebtune.search.evaluator import Evaluator, Outcome, Reference

NO_CACHE = "nocache"
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

    def schedule(self, ctx: ScheduleContext) -> Schedule:
        return ScheduleSpec.of(self.family, self.params, self.eps_scale).build(ctx)


def baseline_names(evaluator: Evaluator, eps_form: dict[str, Any] | None = None) -> list[str]:
    """Names of the baselines this search evaluates, in order (constraints may refer to them)."""
    return [b.name for b in plan(evaluator, eps_form)]


def plan(evaluator: Evaluator, eps_form: dict[str, Any] | None = None) -> list[Baseline]:
    """No cache, the cached baselines, then no cache at the step counts matching their MACs; with an
    ε form (not "none"), every uncached baseline once more under that form."""
    steps, sampler = evaluator.sampler.steps, evaluator.sampler
    out = [Baseline(NO_CACHE, "none", steps=steps)]
    fewer: list[int] = []
    for name, family, params, form in CACHED:
        base = Baseline(name, family, dict(params), dict(form), steps)
        out.append(base)
        ratio = evaluator.macs(base.schedule(evaluator.ctx), sampler) / evaluator.ref_macs
        k = max(1, round(steps * ratio))
        if k < steps and k not in fewer:
            fewer.append(k)
    sampler_name = evaluator.cfg["sampler"]["name"]
    out += [Baseline(f"{sampler_name}-{k}", "none", steps=k) for k in sorted(fewer, reverse=True)]
    if eps_form and eps_form["name"] != "none":
        out += [Baseline(f"{b.name}+{eps_form['name']}", "none", eps_scale=dict(eps_form), steps=b.steps)
                for b in out if b.family == "none"]
    return out


def _print_now(line: str) -> None:
    print(line, flush=True)


def _eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def evaluate_baselines(
    evaluator: Evaluator, on_done: Callable[[Baseline, Schedule, Sampler, Outcome], None] | None = None,
    eps_form: dict[str, Any] | None = None, progress: Callable[[str], None] | None = _print_now,
) -> tuple[list[tuple[Baseline, Outcome]], Reference]:
    """Evaluate every baseline (no cache first, as the reference of the others).

    Args:
        on_done: called after each baseline with its schedule, sampler and outcome (for recording).
        progress: gets one line before each baseline, "baselines k/n: NAME ...", with the time left
            estimated from the seconds per sampled MAC so far (None: silent).

    Returns:
        (baseline, outcome) pairs in `plan` order and the no-cache reference for the trials.
    """
    results: list[tuple[Baseline, Outcome]] = []
    reference: Reference | None = None
    work = []
    for base in plan(evaluator, eps_form):
        sampler = evaluator.sampler if base.steps == evaluator.sampler.steps else evaluator.sampler_at(base.steps)
        ctx = ScheduleContext(sampler.steps, evaluator.loaded.config.depth, sampler.times)
        schedule = base.schedule(ctx)
        work.append((base, sampler, schedule, evaluator.macs(schedule, sampler)))
    total_macs, done_macs, started = sum(w[3] for w in work), 0.0, time.monotonic()
    for k, (base, sampler, schedule, macs) in enumerate(work, start=1):
        if progress is not None:
            left = "" if not done_macs else (
                f", about {_eta((time.monotonic() - started) / done_macs * (total_macs - done_macs))} left")
            progress(f"baselines {k}/{len(work)}: {base.name} ({sampler.steps} steps, {evaluator.n_samples} images){left}")
        outcome = evaluator.evaluate(schedule, reference, sampler)
        done_macs += macs
        if reference is None:
            reference = Reference(outcome.latents, outcome.metrics["latency_s"])
        results.append((base, outcome))
        if on_done is not None:
            on_done(base, schedule, sampler, outcome)
    assert reference is not None  # plan() always starts with no cache
    return results, reference
