"""What a search's Optuna study holds: the one module that names, writes and reads its attributes.

Study attributes:
- `search`: the settings a resume must match; `search_id`: the search's own id (its MLflow parent
  run carries it); `session.<k>`: the sessions that opened it (their index seeds their sampler).
- `baselines`: one record per evaluated baseline (name, params, metrics, schedule_file, quality and
  proxy draws, `reused` when an earlier search's identical evaluation was taken).
- `confirmed`: the front's confirmation (n_samples, seed, margin, trials' and baselines' metrics and
  quality draws), whichever command ran it; None or absent before one ran.
- `tracking`, `mlflow_start`, `pareto_meta`: what `ebtune sync` needs to rebuild the views without a
  model (`pareto_meta["quality"]` names the quality metric; a study written before metrics had names
  of their own lacks it, and its quality is under "fid", `LEGACY_QUALITY`); `mlflow_run.<n>` and
  `mlflow_synced.<n>`: the MLflow view's progress per trial.
- `calibrated_seed` (`ebtune.search.seeding`) and the gap records (`ebtune.search.gap_gate`).

Trial attributes: `metrics` (every reported metric) and each metric on its own (for
optuna-dashboard), `constraints` (violations, ≤ 0 = satisfied), `schedule_file` (written before the
tell), `quality_draws` (the quality metric's bootstrap draws, paired with every other evaluation's),
`rungs` (successive halving's rungs: the quality on the first images, with paired draws), `fail_reason` (a real failure),
`ebtune.session` (host:pid:start of the process running it) and `ebtune.heartbeat`.

`SearchRecord(study)` reads a study: its trials, baselines, confirmation and feasible front, each a
pure function of the stored attributes, so `pareto.json`, MLflow, `export` and `confirm` agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from ebtune.search.inference import Scored
from ebtune.search.pareto import DIRECTIONS, Constraint, feasible_front

# study attributes
SETTINGS = "search"
SEARCH_ID = "search_id"
BASELINES = "baselines"
CONFIRMED = "confirmed"
TRACKING = "tracking"
MLFLOW_START = "mlflow_start"
PARETO_META = "pareto_meta"
MLFLOW_RUN = "mlflow_run."
SYNCED = "mlflow_synced."
# trial attributes
METRICS = "metrics"
CONSTRAINTS = "constraints"
SCHEDULE_ATTR = "schedule_file"
RUNGS = "rungs"
PRUNED = "pruned"  # a baseline stopped at a rung of successive halving: it judges nothing
QUALITY_DRAWS = "quality_draws"  # the quality metric's bootstrap draws: paired across every evaluation
REUSED = "reused"  # a baseline record taken from an earlier search's identical evaluation (baseline_cache)
FAIL_REASON = "fail_reason"
SESSION_ATTR = "ebtune.session"
HEARTBEAT_ATTR = "ebtune.heartbeat"  # epoch seconds of a running trial's last heartbeat
# Where studies and pareto.json files written before metrics had names of their own (ebtune main up to
# 5382254) keep the quality metric, whichever it was (digits-native included).
LEGACY_QUALITY = "fid"


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


# -- writing ---------------------------------------------------------------------------------------
def set_baseline(study: optuna.Study, record: dict[str, Any]) -> None:
    """Add (or replace, by name) one baseline record."""
    kept = [b for b in study.user_attrs.get(BASELINES, []) if b["name"] != record["name"]]
    study.set_user_attr(BASELINES, kept + [record])


def set_confirmation(study: optuna.Study, result: dict[str, Any]) -> None:
    """Store `ebtune.search.confirm.confirm`'s result: from now on the front uses its numbers."""
    rows = result["rows"]
    study.set_user_attr(CONFIRMED, {
        "n_samples": result["n_samples"], "seed": result["seed"], "margin": result["margin"],
        "trials": {str(r["trial"]): r["metrics"] for r in rows if r["trial"] is not None},
        "baselines": {r["name"]: r["metrics"] for r in rows if r["trial"] is None},
        "draws": {r["name"]: r[QUALITY_DRAWS] for r in rows}, REUSED: list(result.get(REUSED, []))})


def unconfirm(study: optuna.Study) -> None:
    """New trials make a confirmation stale."""
    if study.user_attrs.get(CONFIRMED) is not None:
        study.set_user_attr(CONFIRMED, None)


def set_views_source(study: optuna.Study, tracking: dict[str, str], mlflow_start: dict[str, Any],
                     meta: dict[str, Any]) -> None:
    """What `ebtune sync` needs to rebuild the views from the study alone."""
    study.set_user_attr(TRACKING, tracking)
    study.set_user_attr(MLFLOW_START, mlflow_start)
    study.set_user_attr(PARETO_META, meta)


def store_result(trial: Any, metrics: dict[str, float], violations: list[float], schedule_file: str,
                 quality_draws: Sequence[float]) -> None:
    """A completed trial's results, stored before it is told."""
    trial.set_user_attr(METRICS, metrics)
    trial.set_user_attr(QUALITY_DRAWS, [float(d) for d in quality_draws])
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(CONSTRAINTS, violations)
    trial.set_user_attr(SCHEDULE_ATTR, schedule_file)


def set_run_id(study: optuna.Study, number: int, run_id: str) -> None:
    """Remember trial `number`'s MLflow run (one key per trial: sessions never overwrite each other)."""
    study.set_user_attr(f"{MLFLOW_RUN}{number}", run_id)


def run_ids(study: optuna.Study) -> dict[int, str]:
    """Trial number → MLflow run id."""
    return {int(k[len(MLFLOW_RUN):]): v for k, v in study.user_attrs.items() if k.startswith(MLFLOW_RUN)}


def mark_synced(study: optuna.Study, number: int, state: str) -> None:
    study.set_user_attr(f"{SYNCED}{number}", state)


def synced(study: optuna.Study) -> dict[int, str]:
    """Trial number → the state its MLflow run was last written in."""
    return {int(k[len(SYNCED):]): v for k, v in study.user_attrs.items() if k.startswith(SYNCED)}


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchRecord:
    """A search as its study records it (see the module docstring)."""

    study: optuna.Study

    @property
    def settings(self) -> dict[str, Any]:
        return self.study.user_attrs[SETTINGS]

    @property
    def objectives(self) -> list[str]:
        return list(self.settings["objectives"])

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.parse(c) for c in self.settings["constraints"]]

    @property
    def margin(self) -> float:
        """`metric.margin` the search was started with; 0 (equivalence never claimed) for a study
        started before margins existed."""
        return float(self.settings["metric"].get("margin", 0.0))

    @property
    def meta(self) -> dict[str, Any]:
        return self.study.user_attrs[PARETO_META]

    @property
    def quality(self) -> str:
        """The key the search's quality metric is stored under (`quality_key`)."""
        return quality_key(self.study.user_attrs.get(PARETO_META, {}))

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return list(self.study.user_attrs.get(BASELINES, []))

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The front's confirmation, or None before one ran."""
        return self.study.user_attrs.get(CONFIRMED)

    def trials(self) -> list[dict[str, Any]]:
        """Every completed trial as {number, name, params, metrics, schedule_file, mlflow_run_id}."""
        runs = run_ids(self.study)
        return [{"number": t.number, "name": trial_name(t.number), "params": dict(t.params),
                 "metrics": t.user_attrs[METRICS], QUALITY_DRAWS: t.user_attrs.get(QUALITY_DRAWS, []),
                 "schedule_file": t.user_attrs.get(SCHEDULE_ATTR, f"schedules/{trial_name(t.number)}.json"),
                 "mlflow_run_id": runs.get(t.number)}
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if METRICS in t.user_attrs]

    def current_baselines(self) -> list[dict[str, Any]]:
        """The baseline records, with confirmed metrics and draws (and the search's metrics as
        `search_metrics`) once confirmed."""
        confirmed = self.confirmation
        shown = [{k: v for k, v in b.items() if k != RUNGS} for b in self.baselines if not b.get(PRUNED)]
        if not confirmed:
            return shown
        return [{**b, "metrics": confirmed["baselines"][b["name"]], "search_metrics": b["metrics"],
                 QUALITY_DRAWS: confirmed.get("draws", {}).get(b["name"], [])}
                for b in shown if b["name"] in confirmed["baselines"]]

    def front(self, objectives: list[str], constraints: list[Constraint]) -> list[dict[str, Any]]:
        """The feasible front a person can tell apart (`pareto.feasible_front`, paired draws and the
        search's margin); once confirmed, among the confirmed points and on their confirmed metrics."""
        records = self.trials()
        confirmed = self.confirmation
        if confirmed:
            records = [{**r, "metrics": confirmed["trials"][str(r["number"])], "search_metrics": r["metrics"],
                        QUALITY_DRAWS: confirmed.get("draws", {}).get(r["name"], [])}
                       for r in records if str(r["number"]) in confirmed["trials"]]
        baselines = {b["name"]: b["metrics"] for b in self.current_baselines()}
        quality = self.quality
        idx = feasible_front([scored(r, quality) for r in records], objectives, constraints, baselines, self.margin)
        return [records[i] for i in idx]


def quality_key(meta: Mapping[str, Any]) -> str:
    """The quality metric's key in a search's records, from what `pareto.json` (or the study's
    `pareto_meta`) says about the search: its `quality`, or "fid" in files written before metrics
    had names of their own."""
    return str(meta.get("quality", LEGACY_QUALITY))


def scored(record: Mapping[str, Any], quality: str) -> Scored:
    """A baseline or trial record as paired inference judges it: its metrics and its draws of the
    quality metric `quality`."""
    return Scored(record["metrics"], {quality: tuple(record.get(QUALITY_DRAWS, ()))}, record["name"],
                  record.get("params", {}))


def resume_refusal(name: str, stored: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """The one line refusing to resume study `name` written by an earlier ebtune, or None when that is
    not why its `stored` settings differ from `settings`: it stored its quality metric as "fid"
    (`_legacy_quality`), or a settings section lacks keys this version has (`metric.couple_noise`:
    its fewer-step runs drew plain step noise, and one front cannot mix both)."""
    new_keys = sorted(f"{section}.{key}" for section, values in settings.items() if isinstance(values, Mapping)
                      and isinstance(stored.get(section), Mapping) for key in set(values) - set(stored[section]))
    legacy = _legacy_quality(name, stored, settings)
    if legacy or not new_keys:
        return legacy
    return (f"search {name!r} was started by an earlier ebtune, before {', '.join(new_keys)} existed, and cannot be "
            f"resumed: start a new search (another name= and out=); {OLD_FOLDERS}")


OLD_FOLDERS = "the old folder's pareto.json, `ebtune export`, `ebtune confirm` and `ebtune sync` still read it"


def _legacy_quality(name: str, stored: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """Such a study keeps its quality metric under "fid" whichever metric it was (dit-tiny's digits-native
    included), and its trials' metrics cannot be renamed in place; a search now reporting the metric
    under its own name would mix both keys in one front."""
    old, new = list(stored.get("objectives", ())), list(settings.get("objectives", ()))
    if LEGACY_QUALITY not in old or LEGACY_QUALITY in new or len(new) <= old.index(LEGACY_QUALITY):
        return None
    now = new[old.index(LEGACY_QUALITY)]
    if now in DIRECTIONS:  # not a quality metric: the objectives changed, which the caller says
        return None
    return (f"search {name!r} was started by an ebtune that stored its quality metric as 'fid'; this version "
            f"reports it as {now!r} and cannot resume that study: start a new search (another name= and out=); "
            f"{OLD_FOLDERS}")


def shown(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as files and MLflow show it: without its draws."""
    return {k: v for k, v in record.items() if k not in (QUALITY_DRAWS, RUNGS, REUSED)}
