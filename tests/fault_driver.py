"""`ebtune` with one injected fault, for tests/test_faults.py (test code only; ebtune has no fault hooks).

    python tests/fault_driver.py KIND ARG -- search ...

KIND:
- kill_after_tell N: SIGKILL this process right after trial N is told, before its MLflow write;
- kill_in_trial N: SIGKILL this process while trial N is being scored;
- term_in_trial N: SIGTERM this process while trial N is being scored;
- trials A,B,...: the k-th trial scored in this process does A[k]: ok | exit (SystemExit) | raise
  (RuntimeError) | nan (a NaN objective) | hang (sleeps past search.trial_timeout_s).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import ebtune.cli as cli
from ebtune.search import views
from ebtune.search.launchers import local


def main(argv: list[str]) -> int:
    kind, arg, sep, *rest = argv
    assert sep == "--"
    score = local.score
    if kind == "kill_after_tell":
        told = views.Views.trial_told

        def kill_after(self, trial):
            if trial.number == int(arg):
                os.kill(os.getpid(), signal.SIGKILL)
            return told(self, trial)

        views.Views.trial_told = kill_after
    elif kind in ("kill_in_trial", "term_in_trial"):
        calls = iter(range(10**6))
        sig = signal.SIGKILL if kind == "kill_in_trial" else signal.SIGTERM

        def kill_in(evaluator, space, params, reference, gate=None):
            if next(calls) == int(arg):
                os.kill(os.getpid(), sig)
            return score(evaluator, space, params, reference, gate)

        local.score = kill_in
    elif kind == "trials":
        plan = iter(arg.split(","))

        def faulty(evaluator, space, params, reference, gate=None):
            what = next(plan, "ok")
            if what == "exit":
                sys.exit(3)
            if what == "raise":
                raise RuntimeError("injected failure")
            if what == "hang":
                time.sleep(600)
            outcome = score(evaluator, space, params, reference, gate)
            if what == "nan":
                outcome.metrics[evaluator.metric.name] = math.nan
            return outcome

        local.score = faulty
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
