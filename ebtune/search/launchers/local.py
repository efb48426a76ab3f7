"""`launcher=local`: trials one after another in this process, an Optuna ask/tell loop."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from optuna.trial import TrialState

from ebtune.search.evaluator import TrialPruned
from ebtune.search.gap_gate import GapGate
from ebtune.search.job import Job, score, trial_error
from ebtune.search.launchers.base import Launcher


class LocalLauncher(Launcher):
    """Trials one after another in this process (simple, easy to debug, no Ray start-up)."""

    def __init__(self, cfg: Mapping[str, Any], folder: Path):
        del cfg, folder  # the driver's evaluator already holds everything a local trial needs

    def run(self, job: Job, n_trials: int) -> None:
        for _ in range(n_trials):
            trial = job.study.ask()
            params = job.space.suggest(trial)
            job.recorder.trial_started(trial.number, params)
            gate = job.gate()
            try:
                outcome = score(job.evaluator, job.space, params, job.reference, gate)
            except TrialPruned as pruned:
                trial.set_user_attr("metrics", pruned.metrics)
                job.study.tell(trial, state=TrialState.PRUNED)
                job.recorder.trial_pruned(trial.number, params, pruned.metrics)
                continue
            except KeyboardInterrupt:
                job.study.tell(trial, state=TrialState.FAIL)
                job.recorder.trial_finished(trial.number, params, None, "interrupted")
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of one trial is recorded, the search goes on
                job.study.tell(trial, state=TrialState.FAIL)
                job.recorder.trial_finished(trial.number, params, None, trial_error(exc))
                continue
            trial.set_user_attr("proxy_draws", list(outcome.proxy_draws))
            if isinstance(gate, GapGate):
                gate.store(trial)  # its gap record, for the gates of later trials
            job.study.tell(trial, job.values(trial, outcome.metrics))
            job.recorder.trial_finished(trial.number, params, outcome.metrics, grid=outcome.grid)
