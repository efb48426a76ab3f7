"""The first trials of a new study: the space's `seeds:` points and, where the space has a
`calibrated_seed:`, the schedule EB-Cache's calibration rule (Algorithm 1) picks on the search's model.

Calibration depends on the model, so it runs once, when a new search starts: on `n` samples from
seed + 10000 (as `ebtune sample schedule=ebcache-calibrated` does), at the search's steps, against
the ε factors of the seed's ε form. Its masks are stored in the study (attribute `calibrated_seed`),
so a resumed search attaches the same masks without calibrating again. The seed is one enqueued
trial: it counts towards `trials=` like the other seeds, is gated and recorded like any trial, and
can enter the front.

The trial's parameters are the space point whose masks agree best with the calibrated ones (a
coordinate search over the space's grid) plus the seed's ε values. If that point reproduces the
masks exactly it is a plain seed; otherwise the trial also carries `masks: ebcache-calibrated` and
runs the calibrated masks themselves (`SearchSpace.to_schedule`), while its other parameters place
it, for the sampler's model, at the nearest point the space can express.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import optuna

from ebtune.core.schedule import Schedule
from ebtune.schedules import SCHEDULES, ScheduleContext
from ebtune.search.space import CALIBRATED, EPS_PREFIX, MASKS_KEY, Param, SearchSpace

STUDY_ATTR = "calibrated_seed"
_SWEEPS = 6  # coordinate sweeps per start point; the ebcache space settles in two or three


def _grid(p: Param) -> list[Any] | None:
    """Every value of a parameter on its grid; None for a continuous float (kept as it starts)."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    if p.step is None:
        return None
    count = int(np.floor((p.high - p.low) / p.step + 1e-9)) + 1
    return [round(p.low + k * p.step, 10) for k in range(count)]


def agreement(schedule: Schedule, target: Schedule) -> float:
    """Share of (branch, step, block) entries where the two schedules compute alike."""
    mine = np.array([schedule.attn, schedule.mlp])
    return float((mine == np.array([target.attn, target.mlp])).mean())


def nearest_point(space: SearchSpace, target: Schedule, ctx: ScheduleContext,
                  eps_values: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The space point (its ε parameters = `eps_values`) whose masks agree best with `target`'s, and
    that agreement (1.0: the space expresses `target` exactly). Starts from each seed and the low
    corner and changes one mask parameter at a time while that helps."""
    mask_params = [(n, _grid(p)) for p in space.params if not p.name.startswith(EPS_PREFIX) for n in p.study_names]

    def score(point: dict[str, Any]) -> float:
        try:
            return agreement(SCHEDULES.make(space.schedule, ctx, **space.split(point)[0]), target)
        except ValueError:  # e.g. warm-up + cool-down beyond the steps
            return -1.0

    def starts() -> Iterator[dict[str, Any]]:
        low = space.corners()[0]
        for seed in (*space.seeds, {}):
            yield {**low, **seed, **eps_values}

    best, best_score = None, -2.0
    for point in starts():
        current = score(point)
        for _ in range(_SWEEPS):
            improved = False
            for name, values in mask_params:
                for value in values or ():
                    trial = {**point, name: value}
                    s = score(trial)
                    if s > current:
                        point, current, improved = trial, s, True
            if not improved:
                break
        if current > best_score:
            best, best_score = point, current
    assert best is not None  # starts() yields at least the low corner
    return best, best_score


def calibrate(space: SearchSpace, evaluator: Any) -> Schedule:
    """Algorithm 1 on the evaluator's model and sampler with the space's `calibrated_seed` settings."""
    from ebtune.run.factory import schedule_from

    given = {**space.fixed, **space.calibrated_seed}
    rule = {k: v for k, v in space.calibrated_seed.items() if not k.startswith(EPS_PREFIX)}
    form = {"name": space.eps_scale, **{k[len(EPS_PREFIX):]: v for k, v in given.items() if k.startswith(EPS_PREFIX)}}
    cfg = {"schedule": {"name": CALIBRATED, **rule}, "eps_scale": form}
    return schedule_from(cfg, evaluator.sampler, evaluator.loaded, evaluator.seed)


def _masks(attr: dict[str, Any], depth: int) -> Schedule:
    return Schedule.from_step_masks(attr["attn"], attr["mlp"], depth, name=CALIBRATED,
                                    params=tuple(attr["rule"].items()))


def seed_study(study: optuna.Study, space: SearchSpace, evaluator: Any, n_trials: int,
               log: Callable[[str], None] = print) -> SearchSpace:
    """Enqueue a new study's seeds (at most `n_trials`, the calibrated one last) and return the space
    with the calibrated masks attached where the seed needs them (from the study when resuming)."""
    attr = study.user_attrs.get(STUDY_ATTR)
    fits = len(space.seeds) < n_trials  # seeds past `trials=` are never evaluated: then do not calibrate either
    if space.calibrated_seed and fits and attr is None and not study.trials:
        schedule = calibrate(space, evaluator)
        eps_values = {k: v for k, v in space.calibrated_seed.items() if k.startswith(EPS_PREFIX)}
        point, agree = nearest_point(space, schedule, evaluator.ctx, eps_values)
        attr = {"attn": [row[0] for row in schedule.attn], "mlp": [row[0] for row in schedule.mlp],
                "rule": {k: v for k, v in space.calibrated_seed.items() if not k.startswith(EPS_PREFIX)},
                "point": point, "agreement": agree, "speedup": evaluator.ref_macs / evaluator.macs(schedule, evaluator.sampler)}
        study.set_user_attr(STUDY_ATTR, attr)
        how = "the space expresses it exactly" if agree == 1.0 else (
            f"the nearest space point agrees on {agree:.0%} of the mask entries, so the trial runs the calibrated masks "
            f"({MASKS_KEY}={CALIBRATED})")
        log(f"calibrated seed: EB-Cache Algorithm 1 on the model, {schedule.full_steps}/{schedule.steps} full steps, "
            f"speedup {attr['speedup']:.2f}x; {how}")
    if not study.trials:
        seeds = [dict(s) for s in space.seeds]
        extra = {} if attr is None or attr["agreement"] == 1.0 else {MASKS_KEY: CALIBRATED}
        if attr is not None:
            seeds.append({**attr["point"], **extra})
        for seed in seeds[:n_trials]:
            study.enqueue_trial(seed, user_attrs={k: v for k, v in seed.items() if k == MASKS_KEY}, skip_if_exists=True)
    if attr is None or attr["agreement"] == 1.0:
        return space
    return space.with_calibrated(_masks(attr, evaluator.loaded.config.depth))
