"""Driver-side bookkeeping of a search, shared by every launcher.

For each baseline and trial the recorder first writes what the study must hold (the schedule file
`schedules/<name>.json` with provenance, the sample grid, the metrics as trial user attributes),
so a front point's file exists before its trial is told; after the tell it hands the trial to the
derived `Views` (MLflow run, `pareto_optimal` tags, `pareto.json`) and prints one progress line.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from ebtune import __version__
from ebtune.core.schedule import Schedule
from ebtune.io.grids import save_grid
from ebtune.io.schedule_file import save_schedule_file
from ebtune.sampling.samplers import Sampler
from ebtune.search.baselines import Baseline
from ebtune.search.evaluator import Evaluator, Outcome
from ebtune.search.pareto import Constraint, std_key
from ebtune.search.space import SearchSpace
from ebtune.search.records import (
    FAIL_REASON,
    PRUNED,
    RUNGS,
    QUALITY_DRAWS,
    REUSED,
    run_ids,
    set_baseline,
    store_result,
    trial_name,
)
from ebtune.search.study import done_trials
from ebtune.search.views import Views


def git_commit() -> str | None:
    """The commit of the ebtune checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def sampler_info(evaluator: Evaluator, sampler: Sampler) -> dict[str, Any]:
    """The sampler as schedule files and pareto.json record it (the configured settings of the
    search's own sampler; another sampler runs with its defaults)."""
    configured = evaluator.cfg["sampler"]
    extra = {k: v for k, v in configured.items() if k != "name"} if sampler.step.name == configured["name"] else {}
    return {"name": sampler.step.name, "steps": sampler.steps, "cfg_scale": sampler.guidance.scale, **extra}


def pareto_meta(evaluator: Evaluator, space: SearchSpace) -> dict[str, Any]:
    """What pareto.json says about the search besides its points (also stored in the study for `ebtune sync`)."""
    return {"model": evaluator.spec.name, "steps": evaluator.sampler.steps,
            "sampler": sampler_info(evaluator, evaluator.sampler), "space": space.name,
            "quality": evaluator.metric.name, "quality_evaluator": evaluator.spec.fid, "n_samples": evaluator.n_samples}


class Recorder:
    """Records baselines and trials of one search.

    Args:
        folder: the search folder; study: its Optuna study; space: its search space.
        evaluator: the driver's evaluator (model facts, step context, measurement provenance).
        views: the search's derived `Views` (MLflow, pareto.json).
        objectives, constraints: what the front is computed over.
        total: trials the search runs in all (for progress and ETA).
    """

    def __init__(self, folder: Path, study: optuna.Study, space: SearchSpace, evaluator: Evaluator, views: Views,
                 objectives: Sequence[str], constraints: Sequence[Constraint], total: int,
                 log: Callable[[str], None] = print):
        self.folder, self.study, self.space, self.evaluator, self.views = folder, study, space, evaluator, views
        self.objectives, self.constraints, self.total, self.log = list(objectives), list(constraints), total, log
        self.commit = git_commit()
        self._started: float | None = None  # set by the first trial, so baselines do not skew the ETA
        self._done_at_start = len(done_trials(study))
        self.streak = 0  # real failures in a row in this session (`search.max_consecutive_failures`)

    @property
    def tracker(self) -> Any:
        return self.views.tracker

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return self.views.baselines

    # -- what schedule files record --------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        return self.evaluator.loaded.schedule_model()

    def _provenance(self, metrics: dict[str, float], run_id: str | None, trial: str) -> dict[str, Any]:
        how, name = self.evaluator.provenance(), self.evaluator.metric.name
        quality = {k: metrics[k] for k in (name, std_key(name), "accuracy", "distance") if k in metrics}
        return {
            "metrics": {**quality, "evaluator": how["evaluator"], "n_samples": how["n_samples"], "seed": how["seed"],
                        "labels": how["labels"]},
            "macs": metrics["macs"], "speedup": metrics["speedup"],
            "latency": {"seconds": metrics["latency_s"], "speedup": metrics["latency_speedup"], **how["latency"]},
            "ebtune_version": __version__, "git_commit": self.commit, "mlflow_run_id": run_id,
            "search": self.study.study_name, "trial": trial,
        }

    def _save(self, name: str, schedule: Schedule, sampler: Sampler, eps_form: dict, params: dict,
              metrics: dict[str, float], run_id: str | None) -> str:
        rel = f"schedules/{name}.json"
        save_schedule_file(self.folder / rel, schedule, model=self.model_info(), sampler=sampler_info(self.evaluator, sampler),
                           eps_scale=eps_form, search_params=params, provenance=self._provenance(metrics, run_id, name))
        return rel

    def _grid(self, name: str, grid: np.ndarray | None) -> None:
        if grid is not None:
            path = self.folder / "grids" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_grid(grid, path, ncol=min(len(grid), 10))

    # -- events ------------------------------------------------------------------------------------
    def baseline(self, base: Baseline, schedule: Schedule, sampler: Sampler, outcome: Outcome,
                 reused: bool = False) -> None:
        """Record an evaluated (or, `reused`, an earlier search's) baseline: schedule file and study
        attribute, then its MLflow view; a baseline stopped at a rung gets the attribute only."""
        params = {"schedule": base.family, **base.params, "sampler": sampler.step.name, "steps": base.steps,
                  "eps_scale": base.eps_scale["name"]}
        record = {"name": base.name, "params": params, "metrics": outcome.metrics,
                  RUNGS: [r.to_attr() for r in outcome.rungs], REUSED: reused}
        m, quality = outcome.metrics, self.evaluator.metric.name
        if outcome.pruned:
            record[PRUNED] = True
            line = (f"stopped after {int(m['images'])} images (a baseline that costs no more is better there): "
                    f"quality_proxy {m['quality_proxy']:.2f}")
        else:
            rel = self._save(f"baseline-{base.name}", schedule, sampler, base.eps_scale, params, m,
                             self.views.parent_run_id)
            record.update(schedule_file=rel, **{QUALITY_DRAWS: list(outcome.quality_draws)})
            line = (f"{quality} {m[quality]:.2f}  speedup {m['speedup']:.2f}x  latency {m['latency_s']:.3f}s"
                    + ("  (reused: an earlier search's evaluation)" if reused else ""))
        set_baseline(self.study, record)
        self.views.baseline(record)
        self.log(f"baseline {base.name:>14}: {line}")

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        return {b["name"]: b["metrics"] for b in self.baselines}

    def violations(self, metrics: dict[str, float]) -> list[float]:
        """Constraint violations of a trial's metrics (≤ 0 = satisfied), stored with the trial."""
        return [c.violation(metrics, self.baseline_metrics()) for c in self.constraints]

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        """Open the trial's MLflow run (RUNNING) so it is visible while it runs."""
        if self._started is None:
            self._started = time.perf_counter()
        self.views.trial_running(number, params)

    def prepare(self, trial: Any, params: dict[str, Any], metrics: dict[str, float], quality_draws: Sequence[float],
                grid: np.ndarray | None = None) -> None:
        """Before a completed trial is told: its schedule file and grid, then its metrics, each metric on its
        own, its constraint violations and its schedule file as user attributes of the Optuna trial."""
        name = trial_name(trial.number)
        schedule, sampler = self.evaluator.point(self.space, params)
        rel = self._save(name, schedule, sampler, self.space.eps_form(params), params, metrics,
                         run_ids(self.study).get(trial.number))
        self._grid(name, grid)
        store_result(trial, metrics, self.violations(metrics), rel, quality_draws)

    def told(self, number: int) -> None:
        """After trial `number` was told: its MLflow view, the front, pareto.json, one progress line."""
        trial = self.study.get_trials(deepcopy=False)[number]
        self.views.trial_told(trial)
        self.streak = self.streak + 1 if FAIL_REASON in trial.user_attrs else 0
        front = self.views.update_front()
        name, attrs, state = trial_name(number), trial.user_attrs, trial.state.name
        if state == "COMPLETE":
            metrics = attrs["metrics"]
            shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self.objectives)
            self.log(f"[{self._count(front)}] {name}: {shown}  speedup {metrics['speedup']:.2f}x")
        elif state == "PRUNED":
            m = attrs["metrics"]
            self.log(f"[{self._count(front)}] {name} pruned after {int(m['images'])} images: "
                     f"quality_proxy {m['quality_proxy']:.4g}  speedup {self.evaluator.ref_macs / m['macs']:.2f}x")
        elif FAIL_REASON in attrs:
            self.log(f"[{self._count(front)}] {name} FAILED: {attrs[FAIL_REASON].strip().splitlines()[-1]}")
        else:
            self.log(f"[{self._count(front)}] {name} interrupted; re-queued with the same parameters")

    def cost(self) -> tuple[float, float]:
        """(sampled, reused): images × MACs per image over every evaluation the study records
        (baselines, trials, confirmation), and over the baselines taken from an earlier search."""
        def macs(records: list[dict[str, float]]) -> float:
            return float(sum(m.get("images", self.evaluator.n_samples) * m["macs"] for m in records))

        confirmed = self.confirmation or {}
        again = set(confirmed.get(REUSED, []))  # confirmation baselines an earlier confirmation stored
        sampled = [b["metrics"] for b in self.baselines if not b.get(REUSED)]
        sampled += [t.user_attrs["metrics"] for t in self.study.trials if "metrics" in t.user_attrs]
        sampled += [*confirmed.get("trials", {}).values()]
        sampled += [m for name, m in confirmed.get("baselines", {}).items() if name not in again]
        reused = [b["metrics"] for b in self.baselines if b.get(REUSED)]
        reused += [m for name, m in confirmed.get("baselines", {}).items() if name in again]
        return macs(sampled), macs(reused)

    # -- the front and its confirmation ------------------------------------------------------------
    @property
    def confirmation(self) -> dict[str, Any] | None:
        return self.views.confirmation

    def current_baselines(self) -> list[dict[str, Any]]:
        return self.views.current_baselines()

    def front(self) -> list[dict[str, Any]]:
        return self.views.front()

    def update_front(self) -> list[dict[str, Any]]:
        return self.views.update_front()

    def finish(self, status: str = "FINISHED") -> list[dict[str, Any]]:
        """Final front, plots and table on the parent run; returns the front."""
        return self.views.finish(status)

    def _count(self, front: list) -> str:
        """"done/total, front size, elapsed and ETA" of the trials run in this session."""
        done = len(done_trials(self.study))
        this_session = max(1, done - self._done_at_start)
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        eta = elapsed / this_session * max(0, self.total - done)
        return f"{done:>3}/{self.total} front {len(front)} elapsed {_duration(elapsed)} ETA {_duration(eta)}"
