"""Driver-side bookkeeping of a search, shared by every launcher.

After each baseline and trial the recorder writes its schedule file (`schedules/<name>.json`, with
provenance), its MLflow run (through `SearchTracker`), the live Pareto front (`pareto_optimal`
tags and `pareto.json`) and one progress line. It only reads the Optuna study, except for the
MLflow run ids and baseline records it adds to the study's attributes.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ebtune import __version__
from ebtune.core.schedule import Schedule
from ebtune.io.grids import save_grid
from ebtune.io.schedule_file import save_schedule_file
from ebtune.sampling.samplers import Sampler
from ebtune.search.baselines import Baseline
from ebtune.search.evaluator import Evaluator, Outcome
from ebtune.search.pareto import NOISE_Z, Constraint, feasible_front, relation, std_key
from ebtune.search.space import SearchSpace
from ebtune.search.study import add_run_id, done_trials, run_ids


def git_commit() -> str | None:
    """The commit of the ebtune checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class Recorder:
    """Records baselines and trials of one search.

    Args:
        folder: the search folder; study: its Optuna study; space: its search space.
        evaluator: the driver's evaluator (model facts, step context, measurement provenance).
        tracker: a started `SearchTracker`.
        objectives, constraints: what the front is computed over.
        total: trials the search runs in all (for progress and ETA).
    """

    def __init__(self, folder: Path, study: optuna.Study, space: SearchSpace, evaluator: Evaluator, tracker: Any,
                 objectives: Sequence[str], constraints: Sequence[Constraint], total: int,
                 log: Callable[[str], None] = print):
        self.folder, self.study, self.space, self.evaluator, self.tracker = folder, study, space, evaluator, tracker
        self.objectives, self.constraints, self.total, self.log = list(objectives), list(constraints), total, log
        self.baselines: list[dict[str, Any]] = list(study.user_attrs.get("baselines", []))
        self.front_numbers: set[int] = set()
        self._tagged: dict[int, dict[str, str]] = {}  # relations last written to each front run's tag
        self.commit = git_commit()
        self._started: float | None = None  # set by the first trial, so baselines do not skew the ETA
        self._done_at_start = len(done_trials(study))

    # -- what schedule files record --------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        cfg = self.evaluator.loaded.config
        return {"family": "dit", "name": self.evaluator.spec.name, "depth": cfg.depth, "input_size": cfg.input_size,
                "patch_size": cfg.patch_size}

    def sampler_info(self, sampler: Sampler) -> dict[str, Any]:
        extra = {k: v for k, v in self.evaluator.cfg["sampler"].items() if k != "name"}
        return {"name": sampler.step.name, "steps": sampler.steps, "cfg_scale": sampler.guidance.scale, **extra}

    def _provenance(self, metrics: dict[str, float], run_id: str, trial: str) -> dict[str, Any]:
        how = self.evaluator.provenance()
        quality = {k: metrics[k] for k in ("fid", std_key("fid"), "accuracy", "distance") if k in metrics}
        return {
            "metrics": {**quality, "evaluator": how["fid_evaluator"], "n_samples": how["n_samples"], "seed": how["seed"],
                        "labels": how["labels"]},
            "macs": metrics["macs"], "speedup": metrics["speedup"],
            "latency": {"seconds": metrics["latency_s"], "speedup": metrics["latency_speedup"], **how["latency"]},
            "ebtune_version": __version__, "git_commit": self.commit, "mlflow_run_id": run_id,
            "search": self.study.study_name, "trial": trial,
        }

    def _save(self, name: str, schedule: Schedule, sampler: Sampler, eps_form: dict, params: dict,
              metrics: dict[str, float], run_id: str) -> str:
        rel = f"schedules/{name}.json"
        save_schedule_file(self.folder / rel, schedule, model=self.model_info(), sampler=self.sampler_info(sampler),
                           eps_scale=eps_form, search_params=params, provenance=self._provenance(metrics, run_id, name))
        return rel

    def _grid(self, name: str, grid: np.ndarray | None) -> str | None:
        if grid is None:
            return None
        path = self.folder / "grids" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(save_grid(grid, path, ncol=min(len(grid), 10)))

    # -- events ------------------------------------------------------------------------------------
    def baseline(self, base: Baseline, schedule: Schedule, sampler: Sampler, outcome: Outcome) -> None:
        """Record an evaluated baseline: schedule file, MLflow parent metrics, study attribute."""
        params = {"schedule": base.family, **base.params, "steps": base.steps, "eps_scale": base.eps_scale["name"]}
        self.tracker.log_baseline(base.name, params, outcome.metrics)
        rel = self._save(f"baseline-{base.name}", schedule, sampler, base.eps_scale, params, outcome.metrics,
                         self.tracker.parent_run_id)
        self.baselines = [b for b in self.baselines if b["name"] != base.name]
        self.baselines.append({"name": base.name, "params": params, "metrics": outcome.metrics, "schedule_file": rel,
                               "proxy_draws": list(outcome.proxy_draws)})
        self.study.set_user_attr("baselines", self.baselines)
        m = outcome.metrics
        self.log(f"baseline {base.name:>14}: fid {m['fid']:.2f}  speedup {m['speedup']:.2f}x  "
                 f"latency {m['latency_s']:.3f}s")

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        return {b["name"]: b["metrics"] for b in self.baselines}

    def violations(self, metrics: dict[str, float]) -> list[float]:
        """Constraint violations of a trial's metrics (≤ 0 = satisfied), stored with the trial."""
        return [c.violation(metrics, self.baseline_metrics()) for c in self.constraints]

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        """Open the trial's MLflow run (RUNNING) so it is visible while it runs."""
        if self._started is None:
            self._started = time.perf_counter()
        add_run_id(self.study, number, self.tracker.log_trial(number, params, None, "RUNNING"))

    def trial_finished(self, number: int, params: dict[str, Any], metrics: dict[str, float] | None,
                       error: str | None = None, grid: np.ndarray | None = None) -> None:
        """Record a told trial: schedule file and MLflow run (or the error), front tags, pareto.json, progress."""
        name = trial_name(number)
        if number not in run_ids(self.study):
            self.trial_started(number, params)
        if metrics is None:
            self.tracker.log_trial(number, params, None, "FAIL", error=error or "failed")
            front = self.update_front()
            self.log(f"[{self._count(front)}] {name} FAILED: {(error or 'failed').strip().splitlines()[-1]}")
        else:
            run_id = run_ids(self.study)[number]
            schedule = self.space.to_schedule(params, self.evaluator.ctx)
            rel = self._save(name, schedule, self.evaluator.sampler, self.space.eps_form(params), params, metrics, run_id)
            self.tracker.log_trial(number, params, metrics, "COMPLETE", schedule_file=str(self.folder / rel),
                                   grid_png=self._grid(name, grid))
            front = self.update_front()
            shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self.objectives)
            self.log(f"[{self._count(front)}] {name}: {shown}  speedup {metrics['speedup']:.2f}x")

    def trial_pruned(self, number: int, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """Record a trial the first fidelity stopped: its stage-1 metrics on its MLflow run (KILLED)."""
        if number not in run_ids(self.study):
            self.trial_started(number, params)
        self.tracker.log_trial(number, params, metrics, "PRUNED")
        front = self.update_front()
        self.log(f"[{self._count(front)}] {trial_name(number)} pruned after {int(metrics['images'])} images: "
                 f"fid_proxy {metrics['fid_proxy']:.4g}  speedup {self.evaluator.ref_macs / metrics['macs']:.2f}x")

    def cost(self) -> float:
        """Sampling cost so far: images × MACs per image over every evaluation the study records."""
        evaluated = [b["metrics"] for b in self.baselines] + [t.user_attrs["metrics"] for t in self.study.trials
                                                               if "metrics" in t.user_attrs]
        return float(sum(m.get("images", self.evaluator.n_samples) * m["macs"] for m in evaluated))

    # -- the front ---------------------------------------------------------------------------------
    def trial_records(self) -> list[dict[str, Any]]:
        """Every completed trial as {number, name, params, metrics, schedule_file, mlflow_run_id}."""
        runs = run_ids(self.study)
        return [{"number": t.number, "name": trial_name(t.number), "params": dict(t.params),
                 "metrics": t.user_attrs["metrics"], "schedule_file": f"schedules/{trial_name(t.number)}.json",
                 "mlflow_run_id": runs.get(t.number)}
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The front's confirmation (study attribute `confirmed`), or None before one ran."""
        return self.study.user_attrs.get("confirmed")

    def confirmed(self, result: dict[str, Any]) -> None:
        """Store a confirmation (`ebtune.search.confirm.confirm`'s result) in the study; from now on
        the front, pareto.json and the MLflow tags use its numbers."""
        rows = result["rows"]
        self.study.set_user_attr("confirmed", {
            "n_samples": result["n_samples"], "seed": result["seed"], "noise_z": result["noise_z"],
            "trials": {str(r["trial"]): r["metrics"] for r in rows if r["trial"] is not None},
            "baselines": {r["name"]: r["metrics"] for r in rows if r["trial"] is None}})
        for r in rows:
            if r["trial"] is not None:
                self.tracker.log_confirmed(r["trial"], r["metrics"])
        self.update_front()

    def unconfirm(self) -> None:
        """New trials make a confirmation stale: drop it before they run."""
        if self.confirmation is not None:
            self.study.set_user_attr("confirmed", None)

    def current_baselines(self) -> list[dict[str, Any]]:
        """The baseline records, with confirmed metrics (and the search's as `search_metrics`) once confirmed."""
        confirmed = self.confirmation
        shown = [{k: v for k, v in b.items() if k != "proxy_draws"} for b in self.baselines]  # the gate's, not a result
        if not confirmed:
            return shown
        return [{**b, "metrics": confirmed["baselines"][b["name"]], "search_metrics": b["metrics"]}
                for b in shown if b["name"] in confirmed["baselines"]]

    def front(self) -> list[dict[str, Any]]:
        """The feasible front beyond noise (NOISE_Z); once confirmed, among the confirmed points and
        on their confirmed metrics."""
        records = self.trial_records()
        confirmed = self.confirmation
        if confirmed:
            records = [{**r, "metrics": confirmed["trials"][str(r["number"])], "search_metrics": r["metrics"]}
                       for r in records if str(r["number"]) in confirmed["trials"]]
        baselines = {b["name"]: b["metrics"] for b in self.current_baselines()}
        idx = feasible_front([r["metrics"] for r in records], self.objectives, self.constraints, baselines, NOISE_Z)
        return [records[i] for i in idx]

    def update_front(self) -> list[dict[str, Any]]:
        """Recompute the front, retag MLflow runs when it changed, rewrite pareto.json."""
        front = self.front()
        numbers = {r["number"] for r in front}
        if numbers != self.front_numbers:
            self.tracker.mark_pareto(numbers)
            self.front_numbers = numbers
        baselines = self.current_baselines()
        for point in front:
            relations = {b["name"]: relation(point["metrics"], b["metrics"], self.objectives, NOISE_Z) for b in baselines}
            if relations != self._tagged.get(point["number"]):
                self.tracker.tag_relations(point["number"], relations)
                self._tagged[point["number"]] = relations
            point["relations"] = relations
        confirmed = self.confirmation
        doc = {"model": self.evaluator.spec.name, "steps": self.evaluator.sampler.steps,
               "sampler": self.sampler_info(self.evaluator.sampler), "space": self.space.name,
               "objectives": self.objectives, "constraints": [str(c) for c in self.constraints],
               "noise_z": NOISE_Z, "quality_evaluator": self.evaluator.fid.name,
               "n_samples": confirmed["n_samples"] if confirmed else self.evaluator.n_samples,
               "confirmed": None if not confirmed else {"n_samples": confirmed["n_samples"], "seed": confirmed["seed"]},
               "baselines": baselines, "points": front}
        tmp = self.folder / "pareto.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.folder / "pareto.json")
        return front

    def finish(self, status: str = "FINISHED") -> list[dict[str, Any]]:
        """Final front, plots and table on the parent run; returns the front."""
        front = self.update_front()
        trials = [{"number": r["number"], "name": r["name"], "params": r["params"], "metrics": r["metrics"]}
                  for r in self.trial_records()]
        self.tracker.finish(front, self.current_baselines(), trials, self.objectives, status=status)
        return front

    def _count(self, front: list) -> str:
        """"done/total, front size, elapsed and ETA" of the trials run in this session."""
        done = len(done_trials(self.study))
        this_session = max(1, done - self._done_at_start)
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        eta = elapsed / this_session * max(0, self.total - done)
        return f"{done:>3}/{self.total} front {len(front)} elapsed {_duration(elapsed)} ETA {_duration(eta)}"
