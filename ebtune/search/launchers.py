"""Where trials run: `local` (in this process, an ask/tell loop) or `ray` (Ray Tune workers).

Both launchers ask the same Optuna study for points, store each trial's metrics and constraint
violations on the Optuna trial before telling it, and hand every finished trial to the driver's
`Recorder` (MLflow, schedule files, front). A trial that raises, produces NaN or runs out of
memory is told FAIL with its error, and the search goes on.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
import torch
from optuna.trial import TrialState

from ..config import ConfigError
from .objective import Evaluator, Outcome, Reference
from .recorder import Recorder
from .space import SearchSpace


@dataclass
class Job:
    """One search's trials: the study to ask, how to score a point, and who records results."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage  # the study's (Ray's searcher opens the study through it)
    space: SearchSpace
    cfg: dict[str, Any]  # the resolved config (plain values)
    reference: Reference
    objectives: list[str]
    recorder: Recorder
    evaluator: Evaluator  # the driver's (local trials use it directly)

    def values(self, trial: Any, metrics: dict[str, float]) -> list[float]:
        """Store metrics and constraint violations on the Optuna trial (before it is told); return the
        objective values to tell."""
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("constraints", self.recorder.violations(metrics))
        return [metrics[m] for m in self.objectives]


def score(evaluator: Evaluator, space: SearchSpace, params: Mapping[str, Any], reference: Reference) -> Outcome:
    """Build the point's schedule in the evaluator's context and evaluate it against `reference`."""
    return evaluator.evaluate(space.to_schedule(params, evaluator.ctx), reference)


def _error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # so the next trial starts with the memory this one held
    return "".join(traceback.format_exception(exc)).strip()


class Launcher(ABC):
    """Runs trials of a `Job`; `run` returns when `n_trials` new trials have finished."""

    @abstractmethod
    def run(self, job: Job, n_trials: int) -> None:
        """Run `n_trials` new trials, recording each through `job.recorder`."""


class LocalLauncher(Launcher):
    """Trials one after another in this process (simple, easy to debug, no Ray start-up)."""

    def run(self, job: Job, n_trials: int) -> None:
        for _ in range(n_trials):
            trial = job.study.ask()
            params = job.space.suggest(trial)
            job.recorder.trial_started(trial.number, params)
            try:
                outcome = score(job.evaluator, job.space, params, job.reference)
            except KeyboardInterrupt:
                job.study.tell(trial, state=TrialState.FAIL)
                job.recorder.trial_finished(trial.number, params, None, "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, the search goes on
                job.study.tell(trial, state=TrialState.FAIL)
                job.recorder.trial_finished(trial.number, params, None, _error(exc))
                continue
            job.study.tell(trial, job.values(trial, outcome.metrics))
            job.recorder.trial_finished(trial.number, params, outcome.metrics, grid=outcome.grid)


class RayLauncher(Launcher):
    """Trials as Ray Tune trials with Optuna (`OptunaSearch`) as the search algorithm.

    Args:
        ray_cfg: `ray:` config: address (null = start a local Ray; "auto" = join the running
            cluster), num_cpus (local Ray size; null = all cores), cpus_per_trial, gpus_per_trial
            ("auto" = 1 when the cluster has GPUs and device is not cpu, else 0; fractions share a
            GPU), max_concurrent (null = as many as the cluster's resources allow).
        folder: the search folder; Ray's session files and Tune's results go inside it.
        threads: torch threads per CPU trial. device: the `device` setting.
    """

    def __init__(self, ray_cfg: Mapping[str, Any], folder: Path, threads: int, device: str):
        self.cfg, self.folder, self.threads, self.device = dict(ray_cfg), folder, threads, device

    def _init(self) -> Path | None:
        import ray

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

    def run(self, job: Job, n_trials: int) -> None:
        import ray
        from ray import tune

        from .ray_tune import RecordingCallback, RecordingOptunaSearch, TrialSetup, ray_trial

        link = self._init()
        try:
            per_trial, concurrent = self.resources(ray.cluster_resources())
            cluster = ray.cluster_resources()
            job.recorder.log(f"ray: {concurrent} concurrent trial(s) of {per_trial['cpu']:g} CPU + {per_trial['gpu']:g} GPU "
                             f"on a cluster of {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs")
            setup = TrialSetup(json.dumps(job.cfg), job.space, job.reference, self.threads,
                               "cuda" if per_trial["gpu"] else "cpu")
            trainable = tune.with_resources(tune.with_parameters(ray_trial, setup=setup), per_trial)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=RecordingOptunaSearch(job), num_samples=n_trials,
                                            max_concurrent_trials=concurrent, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=job.study.study_name, storage_path=str((self.folder / "ray_results").absolute()),
                    callbacks=[RecordingCallback(job)], verbose=0,
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
            tuner.fit()
        finally:
            ray.shutdown()
            if link is not None:
                link.unlink()
                link.parent.rmdir()
