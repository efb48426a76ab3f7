"""`run_search(config) -> SearchResult`: one search, as one pipeline.

    SearchConfig ──open──▶ Session(study, views, recorder)
        │ reference   no cache (the trials' reference) and the baselines constraints name
        │ trials      the configured launcher runs the missing trials of the study's budget
        │ baselines   the cached and fewer-step ones that cost no more than the front's costliest point
        │ confirm     what the verdict judges re-scored on fresh images (search.confirm_n)
        └ finish      MLflow, pareto.json and the plots rewritten from the study → SearchResult

The study (`ebtune.search.study`) is the one record: a resumed search reopens it and runs only what
is missing; the views are derived from it. The CLI (`ebtune search`), the tests and the bench
scripts all call `run_search`.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from ebtune import __version__
from ebtune.errors import ConfigError
from ebtune.run.factory import resolve_threads
from ebtune.search.baseline_cache import BaselineCache
from ebtune.search.baselines import NO_CACHE, Known, Planned, evaluate_baselines
from ebtune.search.baselines import plan as baseline_plan
from ebtune.search.config import SearchConfig
from ebtune.search.confirm import confirm, fresh_seed
from ebtune.search.evaluator import Evaluator, Reference
from ebtune.search.job import Job, SearchStopped, sigterm_interrupts
from ebtune.search.launchers import LAUNCHERS
from ebtune.search.recorder import Recorder, git_commit, pareto_meta
from ebtune.search.records import set_views_source, shown, unconfirm
from ebtune.search.seeding import seed_study
from ebtune.search.space import SearchSpace
from ebtune.search.study import done_trials, open_study, reap
from ebtune.search.tracking import SearchTracker, default_uri
from ebtune.search.verdict import Verdict
from ebtune.search.views import Views


@dataclass(frozen=True)
class SearchResult:
    """What a search ended with; `front` and `baselines` are the records `pareto.json` holds."""

    name: str
    folder: Path
    status: str  # the MLflow parent run's status: FINISHED, or FAILED when the search stopped
    front: list[dict[str, Any]]
    baselines: list[dict[str, Any]]
    confirmation: dict[str, Any] | None
    cost_macs: float  # images × MACs per image sampled by this search: baselines, trials, confirmation
    reused_macs: float  # the same over the baselines taken from an earlier search (`search.baseline_cache`)
    verdict: Verdict
    tracking_uri: str
    mlflow_parent: str | None  # the parent run (experiment name, run id); None while the store was unreachable
    stopped: str | None = None  # why the search stopped early (`search.max_consecutive_failures`)

    @property
    def exit_code(self) -> int:
        return 0 if self.stopped is None else 1


@dataclass
class Session:
    """One search's objects, each built once, in data-flow order."""

    config: SearchConfig
    evaluator: Evaluator
    space: SearchSpace  # the config's space, with the calibrated seed's masks attached where needed
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    views: Views
    recorder: Recorder


def run_search(config: SearchConfig, log: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume) the search `config` describes; see the module docstring for its stages.

    Raises:
        ConfigError: a constraint names no baseline, or the folder holds another search.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after the views were brought up to date.
    """
    _quiet_libraries()
    if config.device.type == "cpu":
        torch.set_num_threads(resolve_threads(config.threads))
    evaluator = Evaluator(config.cfg, config.device)
    planned = baseline_plan(evaluator, config.space)
    names = [p.base.name for p in planned]
    unknown = sorted({c.baseline for c in config.constraints if c.baseline} - set(names))
    if unknown:
        raise ConfigError(f"constraint names baseline(s) {', '.join(unknown)}; baselines are: {', '.join(names)}")
    session = open_session(config, evaluator, log)
    status, stopped = "FAILED", None
    try:
        with sigterm_interrupts():
            reference = _reference(session, planned, log)
            _trials(session, reference)
            _baselines(session, planned, reference)
            _confirmation(session, log)
            status = "FINISHED"
    except SearchStopped as stop:
        stopped = str(stop)
        log(f"search stopped: {stop}")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        result = _finish(session, status, stopped)
        report(result, config.objectives, log)
    return result


def _quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the recorder prints one line per trial instead
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store creation and migration notices
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a resumed parent run downloads its baselines


def _settings(config: SearchConfig, evaluator: Evaluator) -> dict[str, Any]:
    """What a resume must not change."""
    cfg = config.cfg
    return {"model": config.model.name, "ckpt": config.model.ckpt, "sampler": cfg["sampler"],
            "steps": evaluator.sampler.steps, "cfg_scale": evaluator.sampler.guidance.scale, "seed": cfg["seed"],
            "space": config.space.describe(), "objectives": list(config.objectives),
            "constraints": [str(c) for c in config.constraints], "metric": cfg["metric"], "device": config.device.type}


def _run_info(config: SearchConfig, evaluator: Evaluator, space: SearchSpace) -> dict[str, Any]:
    """The MLflow parent run's tags."""
    cfg = config.cfg
    return {"search": config.name, "model": config.model.name, "steps": evaluator.sampler.steps,
            "sampler": cfg["sampler"]["name"], "cfg_scale": evaluator.sampler.guidance.scale, "space": space.name,
            "objectives": ",".join(config.objectives), "launcher": config.launcher,
            "device": evaluator.provenance()["latency"]["device"], "n_samples": evaluator.n_samples,
            "ebtune_version": __version__, "git_commit": git_commit() or "unknown", "folder": str(config.folder)}


def open_session(config: SearchConfig, evaluator: Evaluator, log: Callable[[str], None] = print) -> Session:
    """Open (or resume) the study, then its views and recorder; dead sessions' trials are re-queued
    and the views catch up with the study (a kill, or MLflow down last time)."""
    cfg, search = config.cfg, config.cfg["search"]
    # A new study's seeds (the calibrated one included) are enqueued under the folder lock; a loaded
    # study gets back the calibrated masks it stored.
    study, store = open_study(config.folder, search["storage"], config.name, config.objectives,
                              _settings(config, evaluator), search, bool(config.constraints),
                              first_start=lambda new: seed_study(new, config.space, evaluator, config.trials, log))
    space = seed_study(study, config.space, evaluator, config.trials, log)
    tracker = SearchTracker(cfg["tracking"]["uri"] or default_uri(),
                            cfg["tracking"]["experiment"] or f"ebtune/{config.model.name}")
    info = _run_info(config, evaluator, space)
    meta = pareto_meta(evaluator, space)
    set_views_source(study, {"uri": tracker.uri, "experiment": tracker.experiment},
                     {"config": cfg, "space": space.describe(), "info": info}, meta)
    views = Views(config.folder, study, tracker, config.objectives, config.constraints,
                  (cfg, space.describe(), info), meta, log)
    recorder = Recorder(config.folder, study, space, evaluator, views, config.objectives, config.constraints,
                        config.trials, log)
    interrupted = reap(study, store, float(search["grace_period"]))
    views.sync()
    log(f"search {config.name}: space {space.name} ({space.schedule} + eps {space.eps_scale}), {config.trials} trials "
        f"({len(done_trials(study))} done), objectives {', '.join(config.objectives)}, {evaluator.n_samples} images "
        f"per evaluation on {config.device}")
    log(f"search folder: {config.folder} (rerun with name={config.name} out={config.folder} to resume)")
    if interrupted:
        log(f"re-queued {len(interrupted)} trial(s) a dead session left running: {', '.join(map(str, interrupted))}")
    return Session(config, evaluator, space, study, store, views, recorder)


def _reference(session: Session, planned: list[Planned], log: Callable[[str], None]) -> Reference:
    """No cache (the trials' reference) and the baselines the constraints name, of the `planned` ones,
    before the trials; returns the reference."""
    evaluator, recorder, cache = session.evaluator, session.recorder, baseline_cache(session.config)
    protected = _protected(session.config)
    first = [p for p in planned if p.base.name == NO_CACHE or p.base.name in protected]
    recorded = {b["name"] for b in recorder.baselines}
    reference = None
    if NO_CACHE in recorded:
        outcome = cache.find(evaluator, first[0].schedule, first[0].sampler)[1] if cache is not None else None
        log("baselines: no cache recorded in the study; " + ("the distance reference from the baseline store"
                                                              if outcome else "re-running it for the distance reference"))
        if outcome is None:
            outcome = evaluator.evaluate(first[0].schedule, None, first[0].sampler)
        reference = Reference(outcome.latents, recorder.baseline_metrics()[NO_CACHE]["latency_s"])
    todo = [p for p in first if p.base.name not in recorded]
    if not todo:
        assert reference is not None
        return reference
    return evaluate_baselines(evaluator, todo, recorder.baseline, cache=cache, protected=protected,
                              reference=reference)[1]


def _baselines(session: Session, planned: list[Planned], reference: Reference) -> None:
    """After the trials, the baselines the verdict and the front's relations can use: every planned one that
    costs no more MACs than the front's costliest point, cheapest first, under successive halving. One
    that costs more could judge nothing the search claims (`ebtune.search.verdict`), so it is not sampled."""
    evaluator, recorder = session.evaluator, session.recorder
    front = recorder.front()
    if not front:
        return
    limit = max(float(p["metrics"]["macs"]) for p in front) * (1 + 1e-9)
    recorded = {b["name"] for b in recorder.baselines}
    todo = [p for p in planned[1:] if p.base.name not in recorded and p.macs <= limit]
    if todo:
        evaluate_baselines(evaluator, todo, recorder.baseline, cache=baseline_cache(session.config),
                           protected=_protected(session.config), reference=reference,
                           known=[Known.of_record(b) for b in recorder.baselines])


def _protected(config: SearchConfig) -> set[str]:
    """The baselines constraints name: evaluated before the trials, never stopped at a rung."""
    return {c.baseline for c in config.constraints if c.baseline}


def baseline_cache(config: SearchConfig) -> BaselineCache | None:
    """`search.baseline_cache`: where baseline outcomes are shared between searches (null: nowhere)."""
    return BaselineCache.at(config.search.baseline_cache)


def _trials(session: Session, reference: Reference) -> None:
    """The configured launcher runs the trials still missing from the study's budget."""
    config, study = session.config, session.study
    if len(done_trials(study)) >= config.trials:
        return
    unconfirm(study)
    launcher = LAUNCHERS.make(config.launcher, config)
    launcher.run(Job(study, session.storage, session.space, config, reference, session.recorder, session.evaluator))


def _confirmation(session: Session, log: Callable[[str], None]) -> None:
    """Re-score what the verdict judges (its points and the baselines they face) on `search.confirm_n`
    fresh images; from then on those are the search's numbers (the study records them)."""
    config, recorder = session.config, session.recorder
    n = config.confirm_n
    if n <= 0 or recorder.confirmation is not None or not recorder.front():
        return
    cfg = copy.deepcopy(dict(config.cfg))
    cfg["metric"]["n_samples"] = n
    cfg["seed"] = fresh_seed(cfg["seed"])
    cfg["device"] = config.device.type if config.device.type == "cpu" else str(config.device)
    judged = session.views.verdict().depends_on()
    log(f"confirming the verdict's {len(judged)} points and baselines on {n} fresh images (search.confirm_n; "
        f"0 skips this)")
    session.views.record_confirmation(confirm(session.views, cfg, log, only=judged, cache=baseline_cache(config)))


def _finish(session: Session, status: str, stopped: str | None) -> SearchResult:
    recorder, views = session.recorder, session.views
    front, cost = recorder.finish(status), recorder.cost()
    return SearchResult(
        name=session.config.name, folder=session.config.folder, status=status, front=front,
        baselines=[shown(b) for b in recorder.current_baselines()], confirmation=recorder.confirmation,
        cost_macs=cost[0], reused_macs=cost[1], verdict=views.verdict(),
        tracking_uri=views.tracker.uri,
        mlflow_parent=(f"experiment {views.tracker.experiment}, parent run {views.parent_run_id}"
                       if views.parent_run_id is not None and views.guard.up else None),
        stopped=stopped)


def report(result: SearchResult, objectives: tuple[str, ...], log: Callable[[str], None] = print) -> None:
    """The verdict (at most ten lines: the recommendation, then caching against the best schedule
    that caches nothing at each speed the front reaches), the sampling cost and where the rest is:
    every relation of every point is in pareto.json, MLflow and the plot."""
    confirmed = result.confirmation
    where = f"confirmed on {confirmed['n_samples']} fresh images" if confirmed else "on the search's images, not confirmed"
    log(f"verdict ({len(result.front)} distinguishable front point(s) over {', '.join(objectives)}, {where}):")
    for line in result.verdict.lines():
        log(f"  {line}")
    reused = f"; {result.reused_macs / 1e12:.4g} TMACs of baselines reused from earlier searches" if result.reused_macs else ""
    log(f"sampling cost: {result.cost_macs / 1e12:.4g} TMACs (images x MACs per image, baselines, trials and "
        f"confirmation included{reused})")
    log(f"search folder: {result.folder}")
    if result.mlflow_parent is None:
        log(f"MLflow: {result.tracking_uri} was unreachable; the study holds every result: run `ebtune sync "
            f"{result.folder}` when it is back")
    else:
        log(f"MLflow: {result.tracking_uri} ({result.mlflow_parent}); browse with `ebtune ui`")
