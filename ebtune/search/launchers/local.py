"""`launcher=local`: trials one after another in this process, an Optuna ask/tell loop.

Each trial is claimed from the study under the folder lock (`ebtune.search.study.claim`: the budget
re-counted, trials of dead sessions re-queued), so several local sessions on one search share its
budget exactly. While a trial runs, a heartbeat marks it alive; `search.trial_timeout_s` is enforced
with SIGALRM (`ebtune.search.job.time_limit`).
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from ebtune.search.config import SearchConfig
from ebtune.search.evaluator import TrialPruned
from ebtune.search.job import Job, gate_attrs, score, time_limit, trial_error
from ebtune.search.launchers.base import Launcher, check_streak
from ebtune.search.study import FAIL_REASON, Heartbeat, claim, retry, stored_trial_id


class LocalLauncher(Launcher):
    """Trials one after another in this process (simple, easy to debug, no Ray start-up)."""

    def __init__(self, config: SearchConfig):
        self.folder = config.folder  # the driver's evaluator holds everything else a local trial needs

    def run(self, job: Job) -> None:
        while (trial := claim(job.study, job.storage, job.total, self.folder, job.poll_s, job.grace_s)) is not None:
            try:
                self._trial(job, trial)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another machine's session took this trial for dead (its heartbeat came late) and re-queued
                # it; the retry will score it again, so this result is dropped rather than told twice.
                job.recorder.log(f"trial {trial.number} was re-queued by another session while it ran; "
                                 f"its result is dropped")
                continue
            check_streak(job)

    @staticmethod
    def _trial(job: Job, trial: optuna.Trial) -> None:
        study = job.study
        with Heartbeat(job.storage, stored_trial_id(job.storage, study, trial.number), job.poll_s):
            try:
                with time_limit(job.timeout_s):
                    params = job.space.suggest(trial)
                    job.recorder.trial_started(trial.number, params)
                    gate = job.gate()
                    outcome = score(job.evaluator, job.space, params, job.reference, gate)
                    values = job.values(outcome.metrics)
                for key, value in gate_attrs(outcome, gate).items():
                    trial.set_user_attr(key, value)
                job.recorder.prepare(trial, params, outcome.metrics, outcome.quality_draws, outcome.grid)
                study.tell(trial, values)
            except TrialPruned as pruned:
                trial.set_user_attr("metrics", pruned.metrics)
                study.tell(trial, state=TrialState.PRUNED)
            except KeyboardInterrupt:
                study.tell(trial, state=TrialState.FAIL)
                retry(study, study.get_trials(deepcopy=False)[trial.number])
                job.recorder.told(trial.number)
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure of one trial (SystemExit included) is recorded
                trial.set_user_attr(FAIL_REASON, trial_error(exc))
                study.tell(trial, state=TrialState.FAIL)
        job.recorder.told(trial.number)
