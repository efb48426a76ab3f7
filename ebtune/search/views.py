"""The views of a search derived from its Optuna study: MLflow runs, `pareto.json`, the front.

The study is the source of truth (see `ebtune.search.study`); everything here is rebuilt from it.
`Views.sync` reconciles them idempotently: it opens the MLflow parent run (found by the study's
`search_id`), logs the baselines and every trial the store does not yet show in its final state
(`mlflow_synced.<n>` in the study says which state was written), re-tags the front and rewrites
`pareto.json`. Every start of a search runs it, as does `ebtune sync RUN`, so a kill between Optuna's
`tell` and the MLflow write, or a search run while MLflow was down, leaves nothing missing.

Sessions sharing the folder (and `ebtune sync` run beside them) write the views one at a time, under
`.views.lock`: MLflow's stores look up a run or tag, then insert it, so two writers at once would
make two parent runs or hit a unique-key error.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import filelock
import optuna
from optuna.trial import FrozenTrial, TrialState

from ebtune.io.atomic import write_json
from ebtune.io.locks import held
from ebtune.search.pareto import Constraint, direction, relation
from ebtune.search.plots import Quality, write_pareto_plots
from ebtune.search.records import (
    FAIL_REASON,
    MLFLOW_START,
    PARETO_META,
    PRUNED,
    SCHEDULE_ATTR,
    SEARCH_ID,
    TRACKING,
    SearchRecord,
    mark_synced,
    quality_key,
    run_ids,
    scored,
    set_confirmation,
    set_run_id,
    shown,
    synced,
    trial_name,
)
from ebtune.search.tracking import GuardedTracker, SearchTracker
from ebtune.search.verdict import Verdict, speed_levels, verdict

VIEWS_LOCK = ".views.lock"
# How long a views write waits for another session's before it fails with one line (`ebtune.io.locks`).
VIEWS_LOCK_TIMEOUT_S = 300
INTERRUPTED = "interrupted: the session running it ended (re-queued with the same parameters)"


F = TypeVar("F", bound=Callable[..., Any])


def _one_writer(method: F) -> F:
    """Run a `Views` method under the folder's views lock (re-entrant: the methods call each other),
    under the lock policy of `ebtune.io.locks`: never a write without the lock."""
    @functools.wraps(method)
    def locked(self: Views, *args: Any, **kwargs: Any) -> Any:
        with held(self._lock):
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


class Views:
    """MLflow runs and `pareto.json` of one search, written from its study.

    Args:
        folder: the search folder; study: its study; tracker: a `SearchTracker` (not yet started).
        objectives, constraints: what the front is computed over.
        start: `SearchTracker.start`'s (config, space, info) for the parent run.
        meta: what `pareto.json` records about the search (model, steps, sampler, space, quality metric
            and its evaluator, n_samples); stored in the study (`pareto_meta`) so `ebtune sync` needs no
            model. Without `quality` (a study written before metrics had names), the quality is "fid".
    """

    def __init__(self, folder: Path, study: optuna.Study, tracker: SearchTracker, objectives: Sequence[str],
                 constraints: Sequence[Constraint], start: tuple[dict, dict, dict], meta: dict[str, Any],
                 log: Callable[[str], None] = print):
        self.folder, self.study, self.objectives, self.constraints = folder, study, list(objectives), list(constraints)
        self.guard = GuardedTracker(tracker, log)
        self.meta, self._start, self.log = meta, start, log
        self.quality = quality_key(meta)  # the quality metric's key in every record
        self._started = False
        self._front_numbers: set[int] | None = None
        self._tagged: dict[int, dict[str, str]] = {}
        self._lock = self._new_lock()

    def _new_lock(self) -> filelock.FileLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(self.folder / VIEWS_LOCK), timeout=VIEWS_LOCK_TIMEOUT_S)

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its searcher, which holds these views; a lock is per process, so a copy gets its own.
        return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = self._new_lock()

    @property
    def tracker(self) -> SearchTracker:
        return self.guard.tracker

    @property
    def parent_run_id(self) -> str | None:
        """The MLflow parent run, or None while the store has not been reached."""
        return self.tracker.parent_run_id if self._started else None

    @property
    def record(self) -> SearchRecord:
        return SearchRecord(self.study)

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return self.record.baselines

    # -- MLflow --------------------------------------------------------------------------------------
    def _connected(self) -> bool:
        """Start the parent run if it is not yet (the store may have been down); True when it is."""
        if not self._started and self.guard.ready():
            parent = self.guard.call("start", self.study.study_name, *self._start,
                                     search_id=self.study.user_attrs[SEARCH_ID])
            self._started = parent is not None
            if self._started:
                self.tracker.write_pointer(str(self.folder))
                if (self.folder / ".hydra").is_dir():  # the composed config and the typed overrides
                    self.guard.call("log_dir", str(self.folder / ".hydra"), ".hydra")
                self._reconcile()  # whatever the store missed before it was reached
        return self._started and self.guard.ready()

    @_one_writer
    def trial_running(self, number: int, params: dict[str, Any]) -> None:
        """Open trial `number`'s run (RUNNING), so it shows while it runs."""
        if self._connected():
            run_id = self.guard.call("log_trial", number, params, None, "RUNNING")
            if run_id is not None:
                set_run_id(self.study, number, run_id)

    @_one_writer
    def baseline(self, record: dict[str, Any]) -> None:
        if self._connected():
            self.guard.call("log_baseline", record["name"], record["params"], record["metrics"])

    @_one_writer
    def trial_told(self, trial: FrozenTrial) -> None:
        """Write a told trial's final state to its run (idempotent; skipped while the store is down)."""
        if not self._connected():
            return
        number, params, attrs = trial.number, dict(trial.params), trial.user_attrs
        name = trial_name(number)
        if trial.state == TrialState.COMPLETE:
            schedule = self.folder / attrs.get(SCHEDULE_ATTR, f"schedules/{name}.json")
            grid = self.folder / "grids" / f"{name}.png"
            run_id = self.guard.call("log_trial", number, params, attrs["metrics"], "COMPLETE",
                                     schedule_file=str(schedule) if schedule.is_file() else None,
                                     grid_png=str(grid) if grid.is_file() else None)
            if run_id is not None:
                _set_provenance_run(schedule, run_id)
        elif trial.state == TrialState.PRUNED:
            run_id = self.guard.call("log_trial", number, params, attrs.get("metrics"), "PRUNED")
        else:
            run_id = self.guard.call("log_trial", number, params, attrs.get("metrics"), "FAIL",
                                     error=attrs.get(FAIL_REASON) or INTERRUPTED)
        if run_id is not None:
            if run_ids(self.study).get(number) != run_id:
                set_run_id(self.study, number, run_id)
            mark_synced(self.study, number, trial.state.name)

    @_one_writer
    def sync(self) -> None:
        """Bring MLflow and `pareto.json` in line with the study (idempotent)."""
        if self._started and self.guard.ready():
            self._reconcile()
        else:
            self._connected()  # reconciles when it reaches the store
        self.update_front()

    def _reconcile(self) -> None:
        """Log what the store lacks: baselines, trials not in their final state there, running trials."""
        logged = set(self.tracker.baseline_names)
        for record in self.baselines:
            if record["name"] not in logged:
                self.guard.call("log_baseline", record["name"], record["params"], record["metrics"])
        written = synced(self.study)
        known = run_ids(self.study)
        for t in self.study.get_trials(deepcopy=False):
            if t.state.is_finished() and written.get(t.number) != t.state.name:
                self.trial_told(t)
            elif t.state == TrialState.RUNNING and t.number not in known:
                self.trial_running(t.number, dict(t.params))
        self._front_numbers = None  # re-tag the front from what the store shows

    # -- the front ---------------------------------------------------------------------------------
    def trial_records(self) -> list[dict[str, Any]]:
        return self.record.trials()

    @property
    def confirmation(self) -> dict[str, Any] | None:
        return self.record.confirmation

    def current_baselines(self) -> list[dict[str, Any]]:
        return self.record.current_baselines()

    def front(self) -> list[dict[str, Any]]:
        return self.record.front(self.objectives, self.constraints)

    @_one_writer
    def update_front(self) -> list[dict[str, Any]]:
        """Recompute the front, retag MLflow runs when it changed, rewrite pareto.json (with the
        verdict); returns the front as files show it."""
        front = self.front()
        numbers = {r["number"] for r in front}
        connected = self._started and self.guard.ready()
        if connected and numbers != self._front_numbers and self._have_runs(numbers):
            self.guard.call("mark_pareto", numbers)
            if self.guard.up:
                self._front_numbers = numbers
        baselines = self.current_baselines()
        judged, margin = [(b["name"], scored(b, self.quality)) for b in baselines], self.record.margin  # read once
        for point in front:
            mine = scored(point, self.quality)
            relations = {name: relation(mine, base, self.objectives, margin) for name, base in judged}
            if connected and relations != self._tagged.get(point["number"]):
                self.guard.call("tag_relations", point["number"], relations)
                if self.guard.up:
                    self._tagged[point["number"]] = relations
            point["relations"] = relations
        confirmed = self.confirmation
        doc = {**self.meta, "quality": self.quality, "objectives": self.objectives,
               "directions": {m: direction(m) for m in self.objectives}, "constraints": [str(c) for c in self.constraints],
               "margin": margin, "n_samples": confirmed["n_samples"] if confirmed else self.meta["n_samples"],
               "confirmed": None if not confirmed else {"n_samples": confirmed["n_samples"], "seed": confirmed["seed"]},
               "verdict": self.verdict(front, baselines).to_dict(),
               "baselines": [shown(b) for b in baselines], "points": [shown(p) for p in front]}
        write_json(self.folder / "pareto.json", doc)
        return doc["points"]

    def verdict(self, front: list[dict[str, Any]] | None = None, baselines: list[dict[str, Any]] | None = None) -> Verdict:
        """The search's verdict (`ebtune.search.verdict`) on its current front and baselines."""
        front = self.front() if front is None else front
        baselines = self.current_baselines() if baselines is None else baselines
        searched = [scored(b, self.quality) for b in self.record.baselines if not b.get(PRUNED)]  # confirmed or not
        return verdict([scored(p, self.quality) for p in front], [scored(b, self.quality) for b in baselines],
                       self.objectives, self.record.margin, self.constraints, speed_levels(searched))

    def _have_runs(self, numbers: set[int]) -> bool:
        """Whether every trial in `numbers` has a run (re-reading the store when this session lacks some)."""
        if numbers <= set(self.tracker.trial_runs):
            return True
        return numbers <= set(self.guard.call("refresh_trial_runs") or {})

    @_one_writer
    def record_confirmation(self, result: dict[str, Any]) -> None:
        """Store a confirmation (`ebtune.search.confirm.confirm`'s result) in the study, whichever command
        ran it; from now on the front, pareto.json and the MLflow tags use its numbers."""
        set_confirmation(self.study, result)
        if self._connected():
            for r in result["rows"]:
                if r["trial"] is not None:
                    self.guard.call("log_confirmed", r["trial"], r["metrics"])
        self.update_front()

    @_one_writer
    def finish(self, status: str = "FINISHED") -> list[dict[str, Any]]:
        """Final front; its plots in the search folder (pareto.png/html) and, when the store is up, with
        the table on the parent run; returns the front."""
        front = self.update_front()
        trials = [{"number": r["number"], "name": r["name"], "params": r["params"], "metrics": r["metrics"]}
                  for r in self.trial_records()]
        confirmed = self.confirmation
        n_samples = confirmed["n_samples"] if confirmed else self.meta["n_samples"]
        quality = Quality(self.quality, self.meta["quality_evaluator"], n_samples, direction(self.quality))
        baselines = [shown(b) for b in self.current_baselines()]
        write_pareto_plots(self.folder, trials, front, baselines, self.objectives, quality)
        if self._connected() and self._have_runs({p["number"] for p in front}):
            self.guard.call("finish", front, baselines, trials, self.objectives, status=status, quality=quality)
        return front


def _set_provenance_run(path: Path, run_id: str) -> None:
    """Record the MLflow run in a trial's schedule file once the run exists (the store may have been down
    when the file was written)."""
    if not path.is_file():
        return
    doc = json.loads(path.read_text())
    if doc.get("provenance", {}).get("mlflow_run_id") != run_id:
        doc.setdefault("provenance", {})["mlflow_run_id"] = run_id
        write_json(path, doc)


def folder_views(folder: Path, uri: str | None = None, log: Callable[[str], None] = print) -> Views:
    """The views of the search in `folder`, rebuilt from its study alone (no model is loaded).

    Args:
        uri: the MLflow store (default: the one the search recorded).

    Raises:
        FileNotFoundError: not a search folder.
    """
    from ebtune.search.study import load_folder_study

    study = load_folder_study(folder)
    attrs = study.user_attrs
    if PARETO_META not in attrs or MLFLOW_START not in attrs:
        raise FileNotFoundError(f"the study in {folder} predates `ebtune sync`; run the same `ebtune search` "
                                f"command once to resume it, which syncs it")
    tracking, record = attrs[TRACKING], SearchRecord(study)
    tracker = SearchTracker(uri or tracking["uri"], tracking["experiment"])
    start = attrs[MLFLOW_START]
    return Views(folder, study, tracker, record.objectives, record.constraints,
                 (start["config"], start["space"], start["info"]), record.meta, log)
