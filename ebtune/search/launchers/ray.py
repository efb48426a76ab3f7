"""The Ray Tune side of `launcher=ray`, imported only then: the trial function that runs in Ray
workers, the Optuna searcher that keeps every metric on the study, Tune's stopper for the search's
limits, and the driver callback that records each finished trial (MLflow logging happens in the
driver, after each result).

A trial goes through the same gate as a local one: the searcher builds it in the driver when it asks
the trial (`Job.gate`, plain picklable values) and puts it in the trial's config; the worker runs it
and reports a pruned trial, which the searcher tells PRUNED with its stage-1 metrics. The searcher
counts the budget in the study before each suggestion (so sessions share it), the driver keeps a
heartbeat for each trial it asked, and the reason of every failure is stored on the Optuna trial
before it is told. `search.trial_timeout_s` and `search.max_consecutive_failures` are Tune stopper
rules (`SearchStopper`); see `_scored` for how a worker makes a timeout observable.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ebtune.errors import ConfigError
from ebtune.run.factory import resolve_threads
from ebtune.search.config import SearchConfig
from ebtune.search.evaluator import Evaluator, Outcome, Reference, TrialPruned
from ebtune.search.job import Job, TrialTimeout, gate_attrs, score, timeout_reason, trial_error
from ebtune.search.launchers.base import Launcher, check_streak, failure_streak
from ebtune.search.pareto import direction
from ebtune.search.space import SearchSpace
from ebtune.search.study import FAIL_REASON, SESSION_ATTR, Heartbeat, budget, quiet, retry, session_tag, stored_trial_id

NUMBER_KEY = "trial_number"  # the Optuna trial number, carried in a Ray trial's config and result
GATE_KEY = "gate"  # the trial's gate, built in the driver, in its config
STATE_KEY = "ebtune_state"  # what a result is: RUNNING (a heartbeat), COMPLETE or PRUNED
RUNNING, COMPLETE, PRUNED = "running", "complete", "pruned"
METRIC_NAMES_KEY = "metric_names"  # the metrics of a complete or pruned result (each a top-level key), comma-joined
ATTRS_KEY = "gate_attrs_json"  # `gate_attrs` of a complete result, as JSON (Tune would flatten a dict)
DRAWS_KEY = "quality_draws_json"  # the quality metric's bootstrap draws of a complete result, as JSON
# A timed trial's worker reports a heartbeat every timeout / HEARTBEAT_DIVISOR seconds (at most
# HEARTBEAT_MAX_S), so a trial stops at most that much past its limit, plus one driver step.
HEARTBEAT_DIVISOR = 10
HEARTBEAT_MAX_S = 5.0


@dataclass(frozen=True)
class TrialSetup:
    """What a Ray worker needs: plain values only, so trials do not depend on the driver's paths."""

    cfg_json: str
    space: SearchSpace
    reference: Reference
    threads: int
    device: str
    timeout_s: float | None


@functools.lru_cache(maxsize=1)
def _worker_evaluator(cfg_json: str, device: str) -> Evaluator:
    # One model per worker process: a reused Ray actor runs many trials with it.
    return Evaluator(json.loads(cfg_json), device)


def _params(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in (NUMBER_KEY, GATE_KEY)}


def ray_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Function trainable: score one point through its gate and report one final result, COMPLETE
    (metrics, the gate's attributes, the grid) or PRUNED (stage-1 metrics); any failure raises
    (trial ERROR, its traceback in Tune's error file)."""
    torch.set_num_threads(setup.threads)
    evaluator = _worker_evaluator(setup.cfg_json, setup.device)
    gate = config[GATE_KEY]
    tag = {NUMBER_KEY: config[NUMBER_KEY], "worker_pid": os.getpid()}
    try:
        outcome = _scored(lambda: score(evaluator, setup.space, _params(config), setup.reference, gate),
                          setup.timeout_s, tag)
    except TrialPruned as pruned:
        tune.report({**pruned.metrics, **tag, STATE_KEY: PRUNED, METRIC_NAMES_KEY: ",".join(pruned.metrics)})
        return
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: Tune's runner thread would swallow it
        raise RuntimeError(trial_error(exc)) from None
    grid = outcome.grid
    tune.report({**outcome.metrics, **tag, STATE_KEY: COMPLETE, METRIC_NAMES_KEY: ",".join(outcome.metrics),
                 ATTRS_KEY: json.dumps(gate_attrs(outcome, gate)), DRAWS_KEY: json.dumps(list(outcome.quality_draws)),
                 "grid_shape": list(grid.shape),
                 "grid_b64": base64.b64encode(grid.tobytes()).decode()})


def _scored(work: Callable[[], Outcome], timeout_s: float | None, tag: dict[str, Any]) -> Outcome:
    """`work()`. With a time limit it runs in a daemon thread while this thread (the trainable's) reports
    RUNNING heartbeats: Tune checks its stoppers only on results, and a function trainable runs outside
    the worker's main thread, where no signal reaches it. When `SearchStopper` stops the trial, Tune
    terminates its actor, which is never reused while a limit is set (`RayLauncher.run`), so the
    thread ends with the worker process instead of running into the next trial."""
    if timeout_s is None:
        return work()
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["outcome"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trainable's thread below
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    every = min(HEARTBEAT_MAX_S, timeout_s / HEARTBEAT_DIVISOR)
    thread.join(every)
    while thread.is_alive():
        tune.report({**tag, STATE_KEY: RUNNING})
        thread.join(every)
    if "error" in done:
        raise done["error"]
    return done["outcome"]


def timed_out(result: Mapping[str, Any], timeout_s: float | None) -> bool:
    """Whether a heartbeat shows its trial past `timeout_s`, by Tune's own clock of the trial
    (`time_total_s`: since the trainable started, the worker's model load on a fresh actor included)."""
    return timeout_s is not None and result.get(STATE_KEY) == RUNNING and float(result.get("time_total_s", 0)) > timeout_s


class SearchStopper(tune.Stopper):
    """Tune's stopper for the search's limits: a trial past `search.trial_timeout_s` (`timed_out`), and
    the experiment after `search.max_consecutive_failures` failures in a row (`failure_streak`; the
    driver raises `SearchStopped` once `fit` returns)."""

    def __init__(self, job: Job):
        self._job = job

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return timed_out(result, self._job.timeout_s)

    def stop_all(self) -> bool:
        return failure_streak(self._job) is not None


class RecordingOptunaSearch(OptunaSearch):
    """`OptunaSearch` on the job's study that stores metrics and constraint violations on each Optuna
    trial before telling it (plain OptunaSearch keeps only the objective values)."""

    def __init__(self, job: Job, tune_trials: dict[str, Any], folder: Path):
        self._job, self._asked, self._beats, self._tune_trials, self._folder = job, {}, {}, tune_trials, folder
        self._by_tune: dict[str, Any] = {}  # Tune trial id -> the Optuna trial asked for it
        study = job.study
        super().__init__(space=self._define, metric=list(job.objectives),
                         mode=["min" if direction(m) == "minimize" else "max" for m in job.objectives],
                         sampler=study.sampler, storage=job.storage, study_name=study.study_name)

    def _define(self, trial: Any) -> dict[str, Any]:
        """Define-by-run space; the returned constants put the Optuna trial number and the trial's gate
        (built now, from the points evaluated so far, as a local trial's is) into the config."""
        trial.set_user_attr(SESSION_ATTR, session_tag())
        store = self._job.storage
        beat = self._beats[trial.number] = Heartbeat(store, stored_trial_id(store, self._job.study, trial.number),
                                                     self._job.poll_s)
        beat.__enter__()
        self._job.space.suggest(trial)
        self._asked[trial.number] = trial
        return {NUMBER_KEY: trial.number, GATE_KEY: self._job.gate()}

    def suggest(self, trial_id: str) -> dict | None:
        """The next point while the study's budget (shared with other sessions) is not met."""
        study = self._job.study
        job = self._job
        with budget(study, job.storage, job.total, self._folder, job.grace_s) as work:  # counted and asked in one step
            if work is False:
                return self.FINISHED
            if work is None:
                return None  # the rest of the budget is running; ask again when a trial ends
            with quiet():
                config = super().suggest(trial_id)
        if isinstance(config, dict) and NUMBER_KEY in config:
            self._by_tune[trial_id] = self._asked.pop(config[NUMBER_KEY])
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Store what the trial's end means on its Optuna trial, then let OptunaSearch tell it: values
        (COMPLETE), no result and no error (PRUNED), or an error (FAIL)."""
        ot_trial = self._by_tune.pop(trial_id, None)
        if ot_trial is None:
            super().on_trial_complete(trial_id, result, error)
            return
        told, error = self._record(ot_trial, trial_id, result or {}, error)
        beat = self._beats.pop(ot_trial.number, None)
        if beat is not None:
            beat.__exit__(None, None, None)
        super().on_trial_complete(trial_id, told, error)
        if error and FAIL_REASON not in ot_trial.user_attrs:
            # Stopped before any result of its own (the experiment ended early): an interruption, retried.
            retry(self._job.study, self._job.study.get_trials(deepcopy=False)[ot_trial.number])

    def _record(self, ot_trial: Any, trial_id: str, result: Mapping[str, Any], error: bool) -> tuple[dict | None, bool]:
        """(the result OptunaSearch should tell, whether it is an error), after storing the trial's
        metrics (and schedule file) or its failure reason on `ot_trial`."""
        job, state = self._job, result.get(STATE_KEY)
        if error:
            ot_trial.set_user_attr(FAIL_REASON, _error_text(self._tune_trials.get(trial_id)))
        elif state == PRUNED:
            ot_trial.set_user_attr("metrics", _metrics(result))
            return None, False
        elif state == COMPLETE:
            metrics = _metrics(result)
            try:
                values = job.values(metrics)
                grid = np.frombuffer(base64.b64decode(result["grid_b64"]), dtype=np.uint8).reshape(result["grid_shape"])
                for key, value in json.loads(result[ATTRS_KEY]).items():
                    ot_trial.set_user_attr(key, value)
                job.recorder.prepare(ot_trial, _params(self._tune_trials[trial_id].config), metrics,
                                     json.loads(result[DRAWS_KEY]), grid)
                return {**result, **dict(zip(job.objectives, values))}, False
            except Exception as exc:  # noqa: BLE001 - a NaN objective is a failed trial, not a dropped tell
                ot_trial.set_user_attr(FAIL_REASON, trial_error(exc))
        elif timed_out(result, job.timeout_s):
            ot_trial.set_user_attr(FAIL_REASON, trial_error(TrialTimeout(timeout_reason(job.timeout_s))))
        return None, True

    def save(self, checkpoint_path: str) -> None:
        """Tune checkpoints its searcher to resume an experiment; ebtune never resumes one (the same command
        reopens the study, the search's one state), so the checkpoint records only that."""
        Path(checkpoint_path).write_text("ebtune: the Optuna study holds this searcher's state\n")

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: fail and re-queue the trials still running, as a local session does."""
        study = self._job.study
        for ot_trial in self._by_tune.values():
            study.tell(ot_trial.number, state=TrialState.FAIL)
            retry(study, study.get_trials(deepcopy=False)[ot_trial.number])
            self._job.recorder.told(ot_trial.number)
        self._by_tune.clear()

    def stop_heartbeats(self) -> None:
        for beat in self._beats.values():
            beat.__exit__(None, None, None)
        self._beats.clear()


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in result[METRIC_NAMES_KEY].split(",")}


def _error_text(trial: Any) -> str:
    """A failed Tune trial's error. Tune writes the local error file before it tells the searcher;
    `trial.get_error()` reads the synced copy, which may not exist yet."""
    path = Path(trial.error_file) if trial is not None and trial.error_file else None
    return path.read_text().strip() if path and path.is_file() else "the Ray trial failed without an error file"


class RecordingCallback(tune.Callback):
    """Runs in the driver: opens each trial's MLflow run when it starts, records it when it ends (the
    searcher has told the study by then)."""

    def __init__(self, job: Job, tune_trials: dict[str, Any]):
        self._job, self._tune_trials = job, tune_trials

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tune_trials[trial.trial_id] = trial
        self._job.recorder.trial_started(trial.config[NUMBER_KEY], _params(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._told(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._told(trial)

    def _told(self, trial: Any) -> None:
        self._job.recorder.told(trial.config[NUMBER_KEY])


class RayLauncher(Launcher):
    """Trials as Ray Tune trials with Optuna (`OptunaSearch`) as the search algorithm.

    Args:
        config: the search. Its `ray` settings (`RaySettings`): address (null = start a local
            Ray; "auto" = join the running cluster), num_cpus (local Ray size; null = all cores),
            cpus_per_trial, gpus_per_trial ("auto" = 1 when the cluster has GPUs and device is not cpu,
            else 0; fractions share a GPU), max_concurrent (null = as many as the cluster's resources
            allow); `threads`: torch threads per CPU trial; `device`; `folder`, where Ray's session
            files and Tune's results go.
    """

    def __init__(self, config: SearchConfig):
        self.ray, self.folder = config.ray, config.folder
        self.threads = resolve_threads(config.threads, per_process=int(math.ceil(self.ray.cpus_per_trial)))
        self.device = config.device.type

    def _init(self) -> Path | None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # No Tune tables or trial tracebacks on the console: the recorder prints one line per trial and
        # MLflow keeps each failed trial's traceback.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        # Heartbeats and pruned results carry no objective values; the searcher checks a complete
        # result's itself (`Job.values`: a missing or NaN objective fails the trial).
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        # Ctrl-C raises KeyboardInterrupt as in a local search (re-queue, bookkeeping, exit 130), instead of
        # Tune ending the experiment as if its budget were met.
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.ray.address:
            ray.init(address=self.ray.address, **kw)
            return None
        # Ray's socket paths must stay under 107 bytes, which a search folder deep in a tree exceeds;
        # a short link in the temp dir keeps the session files inside the folder all the same.
        target = self.folder / "ray"
        target.mkdir(parents=True, exist_ok=True)
        link = Path(tempfile.mkdtemp(prefix="ebtune-ray-")) / "r"
        link.symlink_to(target.absolute(), target_is_directory=True)
        ray.init(num_cpus=self.ray.num_cpus or os.cpu_count(), _temp_dir=str(link), **kw)
        return link

    def resources(self, cluster: Mapping[str, float]) -> tuple[dict[str, float], int]:
        """Per-trial resources and the number of concurrent trials for a cluster's resources.

        Raises:
            ConfigError: a trial asks for more CPUs or GPUs than the cluster has.
        """
        cpus, have_cpus, have_gpus = self.ray.cpus_per_trial, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        gpus = self.ray.gpus_per_trial
        if gpus == "auto":
            gpus = 1.0 if have_gpus >= 1 and self.device != "cpu" else 0.0
        gpus = float(gpus)
        if cpus > have_cpus:
            raise ConfigError(f"ray.cpus_per_trial={cpus:g} but the Ray cluster has {have_cpus:g} CPUs; lower it or add nodes")
        if gpus > have_gpus:
            raise ConfigError(f"ray.gpus_per_trial={gpus:g} but the Ray cluster has {have_gpus:g} GPUs; set "
                              f"ray.gpus_per_trial=0 for CPU trials or start Ray on GPU nodes")
        fits = [have_cpus // cpus if cpus else math.inf, have_gpus // gpus if gpus else math.inf]
        limit = self.ray.max_concurrent or int(min(fits))
        return {"cpu": cpus, "gpu": gpus}, max(1, int(limit))

    def run(self, job: Job) -> None:
        import ray
        from ray import tune

        term = signal.getsignal(signal.SIGTERM)
        link = self._init()
        if term is not None and threading.current_thread() is threading.main_thread():
            # ray.init installs a SIGTERM handler that aborts the driver; keep the search's
            # (`sigterm_interrupts`: the running trials re-queued, the bookkeeping finished).
            signal.signal(signal.SIGTERM, term)
        try:
            per_trial, concurrent = self.resources(ray.cluster_resources())
            cluster = ray.cluster_resources()
            job.recorder.log(f"ray: {concurrent} concurrent trial(s) of {per_trial['cpu']:g} CPU + {per_trial['gpu']:g} GPU "
                             f"on a cluster of {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs")
            setup = TrialSetup(json.dumps(dict(job.config.cfg)), job.space, job.reference, self.threads,
                               "cuda" if per_trial["gpu"] else "cpu", job.timeout_s)
            trainable = tune.with_resources(tune.with_parameters(ray_trial, setup=setup), per_trial)
            tune_trials: dict[str, Any] = {}
            searcher = RecordingOptunaSearch(job, tune_trials, self.folder)
            tuner = tune.Tuner(
                trainable,
                # -1: as many trials as the searcher suggests; it stops when the study's budget is met. A
                # reused actor keeps its model loaded; with a time limit a stopped trial's scoring thread
                # may still run, so each trial then gets a fresh actor (see `_scored`).
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                            max_concurrent_trials=concurrent, reuse_actors=job.timeout_s is None),
                run_config=tune.RunConfig(
                    name=job.study.study_name, storage_path=str((self.folder / "ray_results").absolute()),
                    callbacks=[RecordingCallback(job, tune_trials)], stop=SearchStopper(job), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
            try:
                tuner.fit()
            except KeyboardInterrupt:
                searcher.interrupt()
                raise
            finally:
                searcher.stop_heartbeats()
            check_streak(job)
        finally:
            ray.shutdown()
            if link is not None:
                shutil.rmtree(link.parent, ignore_errors=True)
