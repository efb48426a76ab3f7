"""MLflow tracking of a schedule search: one parent run per search, one nested child run per Optuna trial.

Layout in the store (one experiment per model, e.g. ``ebtune/dit-tiny``):

- parent run, named after the search, tag ``ebtune.search_name``: the run info as params, ``config.json`` and
  ``space.json``, baseline metrics ``baseline.<name>.<metric>`` with ``baselines.json``/``baselines.csv``, and at
  the end ``pareto.png``, ``pareto.html`` and ``pareto.csv``;
- child run ``trial-0007`` per trial, tags ``mlflow.parentRunId`` (so the UI nests it), ``ebtune.trial`` and
  ``pareto_optimal`` (``"true"``/``"false"``, every child carries it), params, metrics, ``schedule/`` and
  ``samples/`` artifacts, and tag ``error`` when the trial failed.

The tracker only records: the search state lives in the Optuna study, and a resumed search finds its parent run
(by the search's own id, tag ``ebtune.search_id``, never by name alone) and its child runs (by trial number)
again, so nothing is duplicated. An HTTP store is asked with short timeouts and no retries
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; set them to override), so a search
notices a lost server in seconds; a sqlite store is created under a file lock, so two first starts do not race.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

# MLflow would otherwise write a telemetry file under ~/.config/mlflow; set before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402

from ebtune.io.locks import file_lock  # noqa: E402
from ebtune.search.plots import Quality, pareto_figure_html, pareto_figure_png  # noqa: E402

# The one store all searches share, under the directory ebtune runs in (as MLflow users expect).
DEFAULT_STORE = Path("outputs") / "mlflow.db"
# How long a first start waits for another creating the sqlite store (`ebtune.io.locks`).
STORE_LOCK_TIMEOUT_S = 300
SEARCH_TAG = "ebtune.search_name"
SEARCH_ID_TAG = "ebtune.search_id"
TRIAL_TAG = "ebtune.trial"
PARENT_TAG = "mlflow.parentRunId"
PARETO_TAG = "pareto_optimal"
ERROR_TAG = "error"
# Optuna trial state -> MLflow run status; RUNNING keeps the child run open for a later update.
TRIAL_STATUS = {"RUNNING": "RUNNING", "COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}
RELATIONS_TAG = "ebtune.relations"
# MLflow rejects tag values over 8000 characters; a traceback's tail is the useful part.
_MAX_ERROR_CHARS = 7000


def default_uri(cwd: Path | None = None) -> str:
    """``sqlite:///<cwd>/outputs/mlflow.db`` as an absolute URI (cwd defaults to the current directory)."""
    return f"sqlite:///{((cwd or Path.cwd()) / DEFAULT_STORE).absolute().as_posix()}"


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI as an absolute path (relative paths resolve against the
    current directory, as SQLAlchemy does), or ``None`` for any other kind of store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The metrics MLflow can store: None, NaN and ±inf (a failed or unmeasured objective) are left out."""
    out = {}
    for key, value in (metrics or {}).items():
        if value is None:
            continue
        if not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} is {value!r}; metrics must be numbers (or None to skip)")
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _table_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV of records: ``name``, ``number``, then ``metrics.<k>`` and ``params.<k>`` columns (union over rows)."""
    rows = list(rows)
    metric_keys = list(dict.fromkeys(k for r in rows for k in (r.get("metrics") or {})))
    param_keys = list(dict.fromkeys(k for r in rows for k in (r.get("params") or {})))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "number"] + [f"metrics.{k}" for k in metric_keys] + [f"params.{k}" for k in param_keys])
    for r in rows:
        metrics, params = r.get("metrics") or {}, r.get("params") or {}
        writer.writerow([r.get("name", ""), r.get("number", "")] + [metrics.get(k, "") for k in metric_keys]
                        + [params.get(k, "") for k in param_keys])
    return buf.getvalue()


class SearchTracker:
    """Records one search in MLflow; every method writes through an ``MlflowClient`` bound to ``uri``.

    The process-wide MLflow tracking URI and active run are never touched, so several trackers (and tests)
    can coexist. Call :meth:`start` first; the other methods raise ``RuntimeError`` before it.
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        """
        Args:
            uri: MLflow tracking URI, e.g. ``sqlite:////abs/outputs/mlflow.db`` or ``http://host:5000``. A relative
                sqlite path is made absolute now (so ``tracking.json`` works from anywhere) and its folder created.
            experiment: experiment name, one per model (``ebtune/dit-tiny``); created on first use.
            artifact_location: where a newly created experiment stores artifacts (a path or URI). Default for a
                sqlite store: the ``mlartifacts`` folder beside the database; otherwise the server decides.
                An existing experiment keeps the location it was created with.
        """
        db = sqlite_store_path(uri)
        self._lock_path = None if db is None else db.with_name(db.name + ".lock")
        if db is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            query = uri.partition("?")[2]
            uri = f"sqlite:///{db.as_posix()}" + (f"?{query}" if query else "")
            artifact_location = artifact_location or str(db.parent / "mlartifacts")
        if artifact_location and "://" not in artifact_location:
            artifact_location = Path(artifact_location).absolute().as_uri()
        self.uri = uri
        self.experiment = experiment
        self._artifact_location = artifact_location
        self._client_instance: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._trial_runs: dict[int, str] = {}
        self._baselines: dict[str, dict[str, Any]] = {}

    @property
    def _client(self) -> MlflowClient:
        """The client, made on first use: for a sqlite store that creates and migrates its tables, under a
        file lock so two first starts do not race."""
        if self._client_instance is None:
            if self._lock_path is None:
                self._client_instance = MlflowClient(tracking_uri=self.uri)
            else:
                with file_lock(self._lock_path, STORE_LOCK_TIMEOUT_S):
                    self._client_instance = MlflowClient(tracking_uri=self.uri)
        return self._client_instance

    @property
    def parent_run_id(self) -> str:
        """Run id of the search's parent run (after :meth:`start`)."""
        if self._parent is None:
            raise RuntimeError("SearchTracker has no parent run yet; call start() first")
        return self._parent

    @property
    def trial_runs(self) -> dict[int, str]:
        """Trial number → child run id, of the runs this search has in the store (as last read)."""
        return dict(self._trial_runs)

    def refresh_trial_runs(self) -> dict[int, str]:
        """Re-read the child runs (other sessions on the search add theirs); returns `trial_runs`."""
        self._trial_runs.update({int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in self._children()})
        return self.trial_runs

    @property
    def baseline_names(self) -> list[str]:
        """The baselines logged on the parent run."""
        return list(self._baselines)

    def start(self, search_name: str, config: dict, space: dict, info: dict, search_id: str | None = None) -> str:
        """Open (or, for a search id already in the experiment, resume) the parent run.

        Args:
            search_name: the parent run's name (tag ``ebtune.search_name``).
            search_id: the search's own id (the study's ``search_id``; default: the name, for a tracker used
                without a study); a second ``start`` with the same id reuses the parent run, its child runs and
                its baselines, and sets it RUNNING again.
            config: the resolved configuration, logged as ``config.json`` (overwritten on resume).
            space: the search space, logged as ``space.json``.
            info: run facts (git commit, device, ebtune version, steps, sampler...), logged as params. Params are
                immutable in MLflow, so a value that changed since the first session is logged as tag
                ``resumed.<key>`` instead.

        Returns:
            The parent run id.
        """
        if "'" in search_name or '"' in search_name:
            raise ValueError(f"search name {search_name!r} contains a quote; choose a name without quotes")
        search_id = search_id or search_name
        experiment_id = self._ensure_experiment()
        found = self._search(experiment_id, f"tags.`{SEARCH_ID_TAG}` = '{search_id}'")
        if found:
            # Two parents can only come from a race between two first starts; the oldest one is the search.
            parent = min(found, key=lambda r: (r.info.start_time, r.info.run_id))
            self._parent = parent.info.run_id
            self._client.update_run(self._parent, status="RUNNING")
            self._trial_runs = {int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in self._children()}
            self._baselines = {b["name"]: b for b in self._load_baselines()}
        else:
            mine = self._client.create_run(experiment_id, start_time=_now_ms(), run_name=search_name,
                                           tags={SEARCH_TAG: search_name, SEARCH_ID_TAG: search_id})
            # Two sessions starting at once may both create one; both keep the oldest, the other is deleted.
            found = self._search(experiment_id, f"tags.`{SEARCH_ID_TAG}` = '{search_id}'") or [mine]
            parent = min(found, key=lambda r: (r.info.start_time, r.info.run_id))
            if parent.info.run_id != mine.info.run_id:
                self._client.delete_run(mine.info.run_id)
                self._trial_runs = {int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in self._children_of(parent.info.run_id)}
            self._parent = parent.info.run_id
        new, changed = self._new_params(parent, info, what=f"search {search_name!r}", strict=False)
        self._client.log_batch(self._parent, params=[Param(k, v) for k, v in new.items()],
                               tags=[RunTag(f"resumed.{k}", v) for k, v in changed.items()])
        self._client.log_dict(self._parent, config, "config.json")
        self._client.log_dict(self._parent, space, "space.json")
        return self._parent

    def log_baseline(self, name: str, params: dict, metrics: dict) -> None:
        """Record a baseline (``nocache``, ``fora2``, ``ddim-25``...) on the parent run.

        Its finite metrics become parent metrics ``baseline.<name>.<metric>`` (a ``+`` in the name, as in
        ``nocache+ebcache``, becomes ``:``, which MLflow allows in metric names); the ``baselines.json`` and
        ``baselines.csv`` artifacts are rewritten with every baseline so far (a name logged again replaces its row).
        """
        parent = self.parent_run_id
        self._baselines[name] = {"name": name, "params": dict(params), "metrics": dict(metrics)}
        now = _now_ms()
        key = name.replace("+", ":")
        self._client.log_batch(parent, metrics=[Metric(f"baseline.{key}.{k}", v, now, 0)
                                                for k, v in _finite_metrics(metrics).items()])
        self._client.log_dict(parent, list(self._baselines.values()), "baselines.json")
        self._client.log_text(parent, _table_csv(self._baselines.values()), "baselines.csv")

    def log_trial(self, number: int, params: dict, metrics: dict | None, state: str, error: str | None = None,
                  schedule_file: str | None = None, grid_png: str | None = None) -> str:
        """Create or update the child run of Optuna trial ``number``.

        Args:
            number: the Optuna trial number; the run is named ``trial-0007`` and tagged ``ebtune.trial``. If this
                search already has a run for it (a resumed search, or a RUNNING trial now complete), that run is
                updated, never duplicated.
            params: the trial's parameters; a value differing from one already logged for this trial raises.
            metrics: objective values and extras; None, NaN and ±inf values are skipped.
            state: Optuna state: ``COMPLETE`` ends the run FINISHED, ``FAIL`` FAILED, ``PRUNED`` KILLED, and
                ``RUNNING`` leaves it open.
            error: the failure message, stored as tag ``error`` (last 7000 characters).
            schedule_file: exported schedule, logged under ``schedule/``.
            grid_png: small sample grid, logged under ``samples/``.

        Returns:
            The child run id.
        """
        if state not in TRIAL_STATUS:
            raise ValueError(f"unknown trial state {state!r}; use one of {', '.join(TRIAL_STATUS)}")
        for path, what in ((schedule_file, "schedule file"), (grid_png, "sample grid")):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{what} {path} of trial {number} does not exist; pass an existing file or None")
        parent = self.parent_run_id
        if number not in self._trial_runs:  # another session on this search may have opened it since start()
            self._trial_runs.update({int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in self._search(
                self._experiment_id, f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TRIAL_TAG}` = '{number}'")})
        run_id = self._trial_runs.get(number)
        if run_id is None:
            run = self._client.create_run(
                self._experiment_id, start_time=_now_ms(), run_name=f"trial-{number:04d}",
                tags={PARENT_TAG: parent, TRIAL_TAG: str(number), PARETO_TAG: "false"})
            run_id = self._trial_runs[number] = run.info.run_id
        else:
            run = self._client.get_run(run_id)
        new_params = self._new_params(run, params, what=f"trial {number}", strict=True)[0]
        now = _now_ms()
        tags = [RunTag(ERROR_TAG, error[-_MAX_ERROR_CHARS:])] if error else []
        self._client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in _finite_metrics(metrics).items()],
                               params=[Param(k, v) for k, v in new_params.items()], tags=tags)
        if schedule_file is not None:
            self._client.log_artifact(run_id, schedule_file, "schedule")
        if grid_png is not None:
            self._client.log_artifact(run_id, grid_png, "samples")
        status = TRIAL_STATUS[state]
        if status == "RUNNING":
            self._client.update_run(run_id, status="RUNNING")
        else:
            self._client.set_terminated(run_id, status, end_time=now)
        return run_id

    def log_confirmed(self, number: int, metrics: dict) -> None:
        """Log a trial's confirmation metrics on its child run as ``confirmed.<metric>``.

        Raises:
            ValueError: the trial has no child run in this search.
        """
        if number not in self._trial_runs:
            raise ValueError(f"trial {number} has no run in this search; log_trial() it before log_confirmed()")
        now = _now_ms()
        self._client.log_batch(self._trial_runs[number],
                               metrics=[Metric(f"confirmed.{k}", v, now, 0) for k, v in _finite_metrics(metrics).items()])

    def tag_relations(self, number: int, relations: dict[str, str]) -> None:
        """Tag a front trial's run with how it stands against each baseline beyond noise, e.g.
        ``ebtune.relations = "nocache: equivalent at lower cost; fora2: dominates"``."""
        if number in self._trial_runs:
            text = "; ".join(f"{name}: {rel}" for name, rel in relations.items())
            self._client.set_tag(self._trial_runs[number], RELATIONS_TAG, text[-_MAX_ERROR_CHARS:])

    def mark_pareto(self, trial_numbers: set[int]) -> None:
        """Tag ``pareto_optimal="true"`` on the child runs of these trials and ``"false"`` on every other child run
        of this search; only tags that change are written. Call it whenever the front changes.

        Raises:
            ValueError: a number has no child run in this search (log the trial first).
        """
        self.parent_run_id  # raises before start(), rather than reporting every trial as missing
        children = self._children()  # another session on this search may have added runs
        self._trial_runs.update({int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in children})
        missing = sorted(set(trial_numbers) - set(self._trial_runs))
        if missing:
            raise ValueError(f"trials {missing} have no run in this search; log_trial() them before mark_pareto()")
        for run in children:
            want = "true" if int(run.data.tags[TRIAL_TAG]) in trial_numbers else "false"
            if run.data.tags.get(PARETO_TAG) != want:
                self._client.set_tag(run.info.run_id, PARETO_TAG, want)

    def finish(self, front: list[dict], baselines: list[dict], trials: list[dict], objectives: list[str],
               status: str = "FINISHED", quality: Quality | None = None) -> None:
        """Write the Pareto artifacts, bring the ``pareto_optimal`` tags in line with ``front`` and end the parent.

        Args:
            front: the Pareto-optimal trials (each with a ``number``).
            baselines: baseline records drawn on the plot.
            trials: every trial (failed ones without finite metrics are not drawn).
            objectives: objective metric names; the plots use the first two as x and y.
            status: final parent status, ``FINISHED``, ``FAILED`` or ``KILLED``.
            quality: the quality metric, its evaluator and image count, for its axis (`plots.Quality`).

        Artifacts: ``pareto.png`` (matplotlib), ``pareto.html`` (plotly, self-contained), ``pareto.csv`` (the front).
        """
        if len(objectives) < 2:
            raise ValueError(f"a Pareto plot needs two objectives, got {objectives}; search with at least two")
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"unknown run status {status!r}; use FINISHED, FAILED or KILLED")
        parent = self.parent_run_id
        self.mark_pareto({int(r["number"]) for r in front})
        x, y = objectives[:2]
        title = f"{self.experiment} · {self._client.get_run(parent).info.run_name}"
        with tempfile.TemporaryDirectory(prefix="ebtune-pareto-") as tmp:
            for writer, name in ((pareto_figure_png, "pareto.png"), (pareto_figure_html, "pareto.html")):
                self._client.log_artifact(parent, str(writer(Path(tmp) / name, trials, front, baselines, x, y, title,
                                                                    quality)))
        self._client.log_text(parent, _table_csv(front), "pareto.csv")
        self._client.set_terminated(parent, status, end_time=_now_ms())

    def log_dir(self, path: str, artifact_path: str) -> None:
        """Log the files of folder ``path`` on the parent run under ``artifact_path`` (replacing earlier copies)."""
        self._client.log_artifacts(self.parent_run_id, path, artifact_path)

    def write_pointer(self, folder: str) -> None:
        """Write ``folder/tracking.json``: ``uri``, ``experiment``, ``experiment_id``, ``parent_run_id`` (the last
        two None while the store was unreachable)."""
        pointer = {"uri": self.uri, "experiment": self.experiment, "experiment_id": self._experiment_id,
                   "parent_run_id": self._parent}
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "tracking.json").write_text(json.dumps(pointer, indent=2) + "\n")

    def _ensure_experiment(self) -> str:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                self._experiment_id = self._client.create_experiment(self.experiment,
                                                                     artifact_location=self._artifact_location)
            except MlflowException:  # another process created it since
                exp = self._client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
                self._experiment_id = exp.experiment_id
        elif exp.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {self.experiment!r} is deleted in {self.uri}; restore it with "
                             f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or set tracking.uri=")
        else:
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _search(self, experiment_id: str, filter_string: str) -> list[Run]:
        """All active runs matching the filter, following MLflow's pages (a search can exceed one page)."""
        runs, token = [], None
        while True:
            page = self._client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _children(self) -> list[Run]:
        return self._children_of(self.parent_run_id)

    def _children_of(self, parent: str) -> list[Run]:
        return self._search(self._experiment_id, f"tags.`{PARENT_TAG}` = '{parent}'")

    def _load_baselines(self) -> list[dict[str, Any]]:
        """The baselines a previous session logged on the parent, so a resumed search keeps its table whole."""
        if "baselines.json" not in {a.path for a in self._client.list_artifacts(self.parent_run_id)}:
            return []
        with tempfile.TemporaryDirectory(prefix="ebtune-baselines-") as tmp:
            local = self._client.download_artifacts(self.parent_run_id, "baselines.json", tmp)
            return json.loads(Path(local).read_text())

    @staticmethod
    def _new_params(run: Run, params: dict, what: str, strict: bool) -> tuple[dict[str, str], dict[str, str]]:
        """Split ``params`` (as MLflow strings) against the run's logged params into (not yet logged, changed).

        With ``strict`` a changed value raises: a trial's parameters are fixed by its number.
        """
        logged = run.data.params
        values = {str(k): str(v) for k, v in params.items()}
        new = {k: v for k, v in values.items() if k not in logged}
        changed = {k: v for k, v in values.items() if k in logged and logged[k] != v}
        if changed and strict:
            first = next(iter(changed))
            raise ValueError(f"{what} is already logged with {first}={logged[first]}, not {changed[first]}; "
                             f"resume a search only with its own study")
        return new, changed


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a lost or broken store raises: MLflow's own errors, network errors (requests' are OSErrors) and
    database errors of a sqlite store."""
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, OSError, SQLAlchemyError


class GuardedTracker:
    """A `SearchTracker` whose store may be down: the first failing call prints one warning line, and every
    call is skipped (returning None) until `retry_after_s` have passed; then the next call tries the store
    again. The study stays the source of truth, so whatever was skipped is written by the next
    `Views.sync` (every start, and `ebtune sync RUN`).

    Args:
        tracker: the tracker to guard; log: where the warning goes.
    """

    def __init__(self, tracker: SearchTracker, log: Any = print, retry_after_s: float = 120.0):
        self.tracker, self._log, self._retry_after_s = tracker, log, retry_after_s
        self._down_since: float | None = None
        self.warned = False

    @property
    def up(self) -> bool:
        return self._down_since is None

    def ready(self) -> bool:
        """Whether calls go to the store now (it is up, or it is time to try it again)."""
        return self._down_since is None or time.monotonic() - self._down_since >= self._retry_after_s

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`tracker.<method>(*args, **kwargs)`, or None while the store is down."""
        if not self.ready():
            return None
        try:
            out = getattr(self.tracker, method)(*args, **kwargs)
        except _unreachable_errors() as e:
            if not self.warned:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                self._log(f"warning: MLflow at {self.tracker.uri} is unreachable ({type(e).__name__}: {first}); "
                          f"searching on, the study keeps every result; `ebtune sync FOLDER` writes them to MLflow later")
                self.warned = True
            self._down_since = time.monotonic()
            return None
        self._down_since = None
        return out
