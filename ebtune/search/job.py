"""One search's trials as launchers see them: the study to ask, how to score a point, who records it,
and what turns any failure of a trial into a recorded trial failure.

Every failure is a trial failure: an exception, `SystemExit`, a non-finite objective or a trial
running past `search.trial_timeout_s` marks the trial FAIL with its reason (`fail_reason`) and
the search goes on; `search.max_consecutive_failures` such failures in a row stop it. Only
KeyboardInterrupt and SIGTERM (`Interrupted`) end a search: the running trial is then re-queued.
"""
from __future__ import annotations

import math
import signal
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import optuna
import torch
from optuna.trial import TrialState

from ebtune.search.config import SearchConfig
from ebtune.search.evaluator import Evaluator, Gate, Outcome, Reference, TrialError
from ebtune.search.gap_gate import GAP_KEY, GapGate, gap_enabled
from ebtune.search.halving import ProxyRule
from ebtune.search.recorder import Recorder
from ebtune.search.records import RUNGS
from ebtune.search.space import SearchSpace


class TrialTimeout(Exception):
    """A trial ran past `search.trial_timeout_s`."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM: stop the search as Ctrl-C does (finish the bookkeeping, re-queue the running trial)."""


class SearchStopped(Exception):
    """`search.max_consecutive_failures` trials failed in a row."""


@dataclass
class Job:
    """One search's trials: the study to ask, how to score a point, and who records results."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage  # the study's (heartbeats; Ray's searcher opens the study through it)
    space: SearchSpace  # the config's, with the calibrated seed's masks attached where needed
    config: SearchConfig
    reference: Reference
    recorder: Recorder
    evaluator: Evaluator  # the driver's (local trials use it directly)

    @property
    def objectives(self) -> list[str]:
        return list(self.config.objectives)

    @property
    def total(self) -> int:
        """Trials the study holds in all when the search is done (`trials=`)."""
        return self.config.trials

    @property
    def timeout_s(self) -> float | None:
        value = self.config.search.trial_timeout_s
        return float(value) if value else None

    @property
    def poll_s(self) -> float:
        """How often a session waiting on other sessions' trials looks again."""
        return self.config.search.heartbeat_interval

    @property
    def grace_s(self) -> float:
        """How long a running trial may go without a heartbeat (or, untagged, at all) before it is re-queued."""
        return self.config.search.grace_period

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objective values to tell.

        Raises:
            TrialError: an objective is missing or not finite.
        """
        bad = [m for m in self.objectives if not isinstance(metrics.get(m), (int, float)) or not math.isfinite(metrics[m])]
        if bad:
            raise TrialError(f"objective(s) {', '.join(bad)} are not finite numbers: "
                             f"{ {m: metrics.get(m) for m in bad} }")
        return [float(metrics[m]) for m in self.objectives]

    def gate(self) -> Gate:
        """The gate of the next trial, built from what the study knows now: `ProxyRule` over the
        evaluated points, inside a `GapGate` when `metric.gap_prune` is on. Both are plain picklable
        values, so a launcher may build the gate in the driver and run it in a worker."""
        known = [(b["metrics"], b.get(RUNGS, [])) for b in self.recorder.baselines]
        known += [(t.user_attrs["metrics"], t.user_attrs.get(RUNGS, [])) for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
        rule = ProxyRule.over(known, self.evaluator.metric.direction)
        if gap_enabled(self.config.metric):  # metric.gap_prune: the exposure-bias gap rule on top
            return GapGate.of_search(rule, self.study, self.evaluator)
        return rule


def gate_attrs(outcome: Outcome, gate: Gate) -> dict[str, Any]:
    """What a completed trial keeps for the gates of later trials, as user attributes set before its
    tell: its rungs' paired draws and, under the gap rule, its gap record (plain JSON values)."""
    attrs: dict[str, Any] = {RUNGS: [r.to_attr() for r in outcome.rungs]}
    if isinstance(gate, GapGate) and gate.record is not None:
        attrs[GAP_KEY] = gate.record.to_attr()
    return attrs


def timeout_reason(seconds: float) -> str:
    """The one line a trial past `search.trial_timeout_s` fails with, whichever launcher stopped it."""
    return f"trial ran past search.trial_timeout_s={seconds:g}s"


def score(evaluator: Evaluator, space: SearchSpace, params: Mapping[str, Any], reference: Reference,
          gate: Gate | None = None) -> Outcome:
    """Build the point's schedule and sampler (`Evaluator.point`) and evaluate it against `reference`."""
    schedule, sampler = evaluator.point(space, params)
    return evaluator.evaluate(schedule, reference, sampler, gate=gate)


def trial_error(exc: BaseException) -> str:
    """The traceback a failed trial is recorded with (freeing GPU memory after an OOM)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # so the next trial starts with the memory this one held
    return "".join(traceback.format_exception(exc)).strip()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `TrialTimeout` in the main thread after `seconds` (POSIX `setitimer`/SIGALRM).

    A local trial runs in the driver's main thread, in Python code that calls short torch kernels,
    so the alarm's exception lands between two kernels: the trial stops within one kernel's time,
    the model stays loaded and no child process has to reload it. Outside the main thread (or on
    a platform without SIGALRM) the limit cannot be enforced and `seconds` must be None.
    """
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        raise RuntimeError("search.trial_timeout_s needs a local trial in the main thread on POSIX")

    def expire(signum: int, frame: Any) -> None:
        raise TrialTimeout(timeout_reason(seconds))

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises `Interrupted` in the main thread for the duration, so `kill PID` ends a search as
    cleanly as Ctrl-C (bookkeeping finished, Ray stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
