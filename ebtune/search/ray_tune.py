"""The Ray Tune side of `launcher=ray`, imported only then: the trial function that runs in Ray
workers, the Optuna searcher that keeps every metric on the study, and the driver callback that
records each finished trial (MLflow logging happens in the driver, after each result)."""
from __future__ import annotations

import base64
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from .launchers import Job, score
from .objective import Evaluator, Reference
from .pareto import DIRECTIONS, direction
from .space import SearchSpace

NUMBER_KEY = "trial_number"  # the Optuna trial number, carried in a Ray trial's config and result


@dataclass(frozen=True)
class TrialSetup:
    """What a Ray worker needs: plain values only, so trials do not depend on the driver's paths."""

    cfg_json: str
    space: SearchSpace
    reference: Reference
    threads: int
    device: str


@functools.lru_cache(maxsize=1)
def _worker_evaluator(cfg_json: str, device: str) -> Evaluator:
    # One model per worker process: a reused Ray actor runs many trials with it.
    return Evaluator(json.loads(cfg_json), device)


def _params(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != NUMBER_KEY}


def ray_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Function trainable: score one point and report its metrics; any failure raises (trial ERROR)."""
    torch.set_num_threads(setup.threads)
    outcome = score(_worker_evaluator(setup.cfg_json, setup.device), setup.space, _params(config), setup.reference)
    grid = outcome.grid
    tune.report({**outcome.metrics, NUMBER_KEY: config[NUMBER_KEY], "worker_pid": os.getpid(),
                 "grid_shape": list(grid.shape), "grid_b64": base64.b64encode(grid.tobytes()).decode()})


class RecordingOptunaSearch(OptunaSearch):
    """`OptunaSearch` on the job's study that stores metrics and constraint violations on each Optuna
    trial before telling it (plain OptunaSearch keeps only the objective values)."""

    def __init__(self, job: Job):
        self._job, self._asked = job, {}
        study = job.study
        super().__init__(space=self._define, metric=list(job.objectives),
                         mode=["min" if direction(m) == "minimize" else "max" for m in job.objectives],
                         sampler=study.sampler, storage=job.storage, study_name=study.study_name)

    def _define(self, trial: Any) -> dict[str, Any]:
        """Define-by-run space; the returned constant puts the Optuna trial number into the config."""
        self._job.space.suggest(trial)
        self._asked[trial.number] = trial
        return {NUMBER_KEY: trial.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and NUMBER_KEY in result:
            self._job.values(self._asked.pop(result[NUMBER_KEY]), _metrics(result))
        super().on_trial_complete(trial_id, result, error)


def _metrics(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in DIRECTIONS if k in result}


class RecordingCallback(tune.Callback):
    """Runs in the driver: opens each trial's MLflow run when it starts, records it when it ends."""

    def __init__(self, job: Job):
        self._job = job

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._job.recorder.trial_started(trial.config[NUMBER_KEY], _params(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result
        grid = np.frombuffer(base64.b64decode(result["grid_b64"]), dtype=np.uint8).reshape(result["grid_shape"])
        self._job.recorder.trial_finished(trial.config[NUMBER_KEY], _params(trial.config), _metrics(result), grid=grid)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The local error file is written before this hook; `trial.get_error()` reads the synced copy,
        # which may not exist yet.
        path = Path(trial.error_file) if trial.error_file else None
        error = path.read_text().strip() if path and path.is_file() else "the Ray trial failed without an error file"
        self._job.recorder.trial_finished(trial.config[NUMBER_KEY], _params(trial.config), None, error)
