"""One search's trials as launchers see them: the study to ask, how to score a point, who records it."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import optuna
import torch

from ebtune.search.evaluator import Evaluator, Gate, Outcome, Reference
from ebtune.search.pareto import NOISE_Z, compare
from ebtune.search.recorder import Recorder
from ebtune.search.space import SearchSpace


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


    def gate(self) -> Gate:
        """The multi-fidelity rule: stop a trial after its first `metric.n_proxy` images when an
        evaluated point that costs no more (a baseline or a finished trial) is better on fid_proxy
        beyond NOISE_Z standard errors: the trial cannot then reach the front (the full set only
        narrows the error). The proxy is the quality metric itself on fewer images, not the distance
        to the uncached output: ε scaling moves samples away from the uncached ones while improving them."""
        known = [b["metrics"] for b in self.recorder.baselines] + [r["metrics"] for r in self.recorder.trial_records()]
        known = [m for m in known if "fid_proxy" in m]

        def keep(proxy: dict[str, float]) -> bool:
            return not any(m["macs"] <= proxy["macs"] and compare(m, proxy, "fid_proxy", NOISE_Z) < 0 for m in known)

        return keep


def score(evaluator: Evaluator, space: SearchSpace, params: Mapping[str, Any], reference: Reference,
          gate: Gate | None = None) -> Outcome:
    """Build the point's schedule in the evaluator's context and evaluate it against `reference`."""
    return evaluator.evaluate(space.to_schedule(params, evaluator.ctx), reference, gate=gate)


def trial_error(exc: BaseException) -> str:
    """The traceback a failed trial is recorded with (freeing GPU memory after an OOM)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()  # so the next trial starts with the memory this one held
    return "".join(traceback.format_exception(exc)).strip()
