"""One search's trials as launchers see them: the study to ask, how to score a point, who records it."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from ebtune.search.evaluator import Evaluator, Gate, Outcome, Reference
from ebtune.search.gap_gate import GapGate, gap_enabled
from ebtune.search.pareto import NOISE_Z
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
        beyond NOISE_Z paired standard errors: the trial cannot then reach the front. Every
        evaluation draws the same images' seeds and the same bootstrap resamples, so the error of a
        difference is the spread of the paired draws' differences, which cancels the small-sample
        bias and most of the noise both share. The proxy is the quality metric itself on fewer
        images, not the distance to the uncached output: ε scaling moves samples away from the
        uncached ones while improving them."""
        known = [(b["metrics"], b.get("proxy_draws", [])) for b in self.recorder.baselines]
        known += [(t.user_attrs["metrics"], t.user_attrs.get("proxy_draws", [])) for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
        known = [(m, np.asarray(d)) for m, d in known if "fid_proxy" in m and len(d) > 1]

        def keep(proxy: dict[str, float], draws: list[float]) -> bool:
            mine = np.asarray(draws)
            for metrics, theirs in known:
                if metrics["macs"] <= proxy["macs"] and len(theirs) == len(mine):
                    diff = theirs - mine  # < 0: the known point is better
                    if metrics["fid_proxy"] - proxy["fid_proxy"] < -NOISE_Z * float(np.std(diff, ddof=1)):
                        return False
            return True

        if gap_enabled(self.cfg["metric"]):  # metric.gap_prune: the exposure-bias gap rule on top
            return GapGate.of_search(keep, self.study, self.evaluator)
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
