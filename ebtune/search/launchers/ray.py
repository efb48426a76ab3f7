"""The Ray Tune side of `launcher=ray`, imported only then: the trial function that runs in Ray
workers, the Optuna searcher that keeps every metric on the study, and the driver callback that
records each finished trial (MLflow logging happens in the driver, after each result).

The searcher counts the budget in the study before each suggestion (so sessions share it), the
driver keeps a heartbeat for each trial it asked, a worker enforces `search.trial_timeout_s` by
scoring in a thread it stops waiting for (the trial errors, and Tune discards that actor), and the
reason of every failure is stored on the Optuna trial before it is told. A killed driver's Ray
session folders (`/tmp/ebtune-ray-*` links) are removed by the next start.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ebtune.errors import ConfigError
from ebtune.run.factory import resolve_threads
from ebtune.search.evaluator import Evaluator, Reference
from ebtune.search.job import Job, TrialTimeout, score, trial_error
from ebtune.search.launchers.base import Launcher, check_streak
from ebtune.search.pareto import DIRECTIONS, direction, std_key
from ebtune.search.space import SearchSpace
from ebtune.search.study import FAIL_REASON, SESSION_ATTR, Heartbeat, budget, quiet, session_dead, session_tag, stored_trial_id

NUMBER_KEY = "trial_number"  # the Optuna trial number, carried in a Ray trial's config and result


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
    return {k: v for k, v in config.items() if k != NUMBER_KEY}


def ray_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Function trainable: score one point and report its metrics; any failure raises (trial ERROR).

    Tune runs a function trainable outside the worker's main thread, so no signal can bound it: the
    scoring runs in a daemon thread, and past `timeout_s` the trial raises `TrialTimeout`."""
    torch.set_num_threads(setup.threads)
    done: dict[str, Any] = {}

    def work() -> None:
        try:
            done["outcome"] = score(_worker_evaluator(setup.cfg_json, setup.device), setup.space, _params(config),
                                    setup.reference)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trainable's thread below
            done["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(setup.timeout_s)
    if worker.is_alive():
        raise TrialTimeout(f"trial ran past search.trial_timeout_s={setup.timeout_s:g}s")
    if "error" in done:
        raise RuntimeError(trial_error(done["error"]))
    outcome = done["outcome"]
    grid = outcome.grid
    tune.report({**outcome.metrics, NUMBER_KEY: config[NUMBER_KEY], "worker_pid": os.getpid(),
                 "grid_shape": list(grid.shape), "grid_b64": base64.b64encode(grid.tobytes()).decode()})


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
        """Define-by-run space; the returned constant puts the Optuna trial number into the config."""
        trial.set_user_attr(SESSION_ATTR, session_tag())
        store = self._job.storage
        beat = self._beats[trial.number] = Heartbeat(store, stored_trial_id(store, self._job.study, trial.number),
                                                     self._job.poll_s)
        beat.__enter__()
        self._job.space.suggest(trial)
        self._asked[trial.number] = trial
        return {NUMBER_KEY: trial.number}

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
        ot_trial = self._by_tune.pop(trial_id, None)
        if ot_trial is not None:
            if result and not error and NUMBER_KEY in result:
                metrics = _metrics(result)
                try:
                    values = self._job.values(metrics)
                    grid = np.frombuffer(base64.b64decode(result["grid_b64"]), dtype=np.uint8).reshape(result["grid_shape"])
                    self._job.recorder.prepare(ot_trial, _params(self._tune_trials[trial_id].config), metrics, grid)
                    result = {**result, **dict(zip(self._job.objectives, values))}
                except Exception as exc:  # noqa: BLE001 - a NaN objective is a failed trial, not a dropped tell
                    ot_trial.set_user_attr(FAIL_REASON, trial_error(exc))
                    result, error = None, True
            elif error:
                ot_trial.set_user_attr(FAIL_REASON, _error_text(self._tune_trials.get(trial_id)))
            beat = self._beats.pop(ot_trial.number, None)
            if beat is not None:
                beat.__exit__(None, None, None)
        super().on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Tune checkpoints its searcher to resume an experiment; ebtune never resumes one (the same command
        reopens the study, the search's one state), so the checkpoint records only that."""
        Path(checkpoint_path).write_text("ebtune: the Optuna study holds this searcher's state\n")

    def stop_heartbeats(self) -> None:
        for beat in self._beats.values():
            beat.__exit__(None, None, None)
        self._beats.clear()


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    keys = [*DIRECTIONS, *(std_key(k) for k in DIRECTIONS)]
    return {k: float(result[k]) for k in keys if k in result}


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
        check_streak(self._job)


class RayLauncher(Launcher):
    """Trials as Ray Tune trials with Optuna (`OptunaSearch`) as the search algorithm.

    Args:
        cfg: the resolved search config. Its `ray:` part: address (null = start a local Ray; "auto" =
            join the running cluster), num_cpus (local Ray size; null = all cores), cpus_per_trial,
            gpus_per_trial ("auto" = 1 when the cluster has GPUs and device is not cpu, else 0;
            fractions share a GPU), max_concurrent (null = as many as the cluster's resources allow);
            `threads`: torch threads per CPU trial; `device`: the device setting.
        folder: the search folder; Ray's session files and Tune's results go inside it.
    """

    def __init__(self, cfg: Mapping[str, Any], folder: Path):
        self.cfg, self.folder = dict(cfg["ray"]), folder
        self.threads = resolve_threads(cfg["threads"], per_process=int(math.ceil(float(self.cfg["cpus_per_trial"]))))
        self.device = str(cfg["device"])

    def _init(self) -> Path | None:
        import ray

        _clean_leftovers()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # No Tune tables or trial tracebacks on the console: the recorder prints one line per trial and
        # MLflow keeps each failed trial's traceback.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.cfg["address"]:
            ray.init(address=self.cfg["address"], **kw)
            return None
        # Ray's socket paths must stay under 107 bytes, which a search folder deep in a tree exceeds;
        # a short link in the temp dir keeps the session files inside the folder all the same.
        target = self.folder / "ray"
        target.mkdir(parents=True, exist_ok=True)
        link = Path(tempfile.mkdtemp(prefix="ebtune-ray-")) / "r"
        (link.parent / "driver").write_text(session_tag())  # whose session this is, for `_clean_leftovers`
        link.symlink_to(target.absolute(), target_is_directory=True)
        ray.init(num_cpus=self.cfg["num_cpus"] or os.cpu_count(), _temp_dir=str(link), **kw)
        return link

    def resources(self, cluster: Mapping[str, float]) -> tuple[dict[str, float], int]:
        """Per-trial resources and the number of concurrent trials for a cluster's resources.

        Raises:
            ConfigError: a trial asks for more CPUs or GPUs than the cluster has.
        """
        cpus, have_cpus, have_gpus = float(self.cfg["cpus_per_trial"]), cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        gpus = self.cfg["gpus_per_trial"]
        if gpus == "auto":
            gpus = 1.0 if have_gpus >= 1 and self.device != "cpu" else 0.0
        gpus = float(gpus)
        if cpus > have_cpus:
            raise ConfigError(f"ray.cpus_per_trial={cpus:g} but the Ray cluster has {have_cpus:g} CPUs; lower it or add nodes")
        if gpus > have_gpus:
            raise ConfigError(f"ray.gpus_per_trial={gpus:g} but the Ray cluster has {have_gpus:g} GPUs; set "
                              f"ray.gpus_per_trial=0 for CPU trials or start Ray on GPU nodes")
        fits = [have_cpus // cpus if cpus else math.inf, have_gpus // gpus if gpus else math.inf]
        limit = self.cfg["max_concurrent"] or int(min(fits))
        return {"cpu": cpus, "gpu": gpus}, max(1, int(limit))

    def run(self, job: Job) -> None:
        import ray
        from ray import tune

        link = self._init()
        try:
            per_trial, concurrent = self.resources(ray.cluster_resources())
            cluster = ray.cluster_resources()
            job.recorder.log(f"ray: {concurrent} concurrent trial(s) of {per_trial['cpu']:g} CPU + {per_trial['gpu']:g} GPU "
                             f"on a cluster of {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs")
            setup = TrialSetup(json.dumps(job.cfg), job.space, job.reference, self.threads,
                               "cuda" if per_trial["gpu"] else "cpu", job.timeout_s)
            trainable = tune.with_resources(tune.with_parameters(ray_trial, setup=setup), per_trial)
            tune_trials: dict[str, Any] = {}
            searcher = RecordingOptunaSearch(job, tune_trials, self.folder)
            tuner = tune.Tuner(
                trainable,
                # -1: as many trials as the searcher suggests; it stops when the study's budget is met
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                            max_concurrent_trials=concurrent, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=job.study.study_name, storage_path=str((self.folder / "ray_results").absolute()),
                    callbacks=[RecordingCallback(job, tune_trials)], verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
            try:
                tuner.fit()
            finally:
                searcher.stop_heartbeats()
        finally:
            ray.shutdown()
            if link is not None:
                shutil.rmtree(link.parent, ignore_errors=True)


def _clean_leftovers() -> None:
    """Remove what a killed driver left: the `/tmp/ebtune-ray-*` folders whose driver (recorded in
    `driver`) is gone, after stopping that session's stray processes (`ray::DashboardAgent`,
    `ray::RuntimeEnvAgent`, raylet...), which name the session's folder on their command line."""
    import glob
    import signal

    for tmp in glob.glob(os.path.join(tempfile.gettempdir(), "ebtune-ray-*")):
        link = Path(tmp) / "r"
        target = str(link.resolve()) if link.is_symlink() else None
        driver = Path(tmp) / "driver"
        if not driver.is_file() or not session_dead(driver.read_text().strip()):
            continue  # a running search's session (or one still starting)
        for pid in _processes_using([tmp] + ([target] if target else [])):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _processes_using(paths: list[str]) -> list[int]:
    """Pids of this user's processes whose command line names one of `paths` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p in cmd for p in paths) and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids
