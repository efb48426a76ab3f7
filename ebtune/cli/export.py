"""`ebtune export` and `ebtune schedules list`: pick a point of a search's Pareto front and ship it.

SOURCE is a search folder (its study: `study.db`, or the storage `storage.json` names) or an MLflow
run id: a trial's run exports that trial, a search's parent run stands for its folder (the run's
`folder` param). The front is read from the study, as `pareto.json` is written from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
from pathlib import Path
from typing import Any

from ebtune.errors import ConfigError
from ebtune.io.schedule_file import ScheduleFileError, load_schedule_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a tuned schedule file from a search's Pareto front",
                       description="Choose one Pareto point (default: the knee) and write its schedule file. "
                       "Overrides: tracking.uri=URI (to resolve MLflow run ids).")
    p.add_argument("source", help="search folder or MLflow run id")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--knee", action="store_true", help="the knee of the front (default)")
    pick.add_argument("--quality", type=float, metavar="X", help="the fastest point whose quality metric is X or "
                      "better (<= X for a lower-is-better metric such as fid, >= X for a higher-is-better one)")
    pick.add_argument("--min-speedup", type=float, metavar="Y", help="the best-quality point with speedup >= Y")
    p.add_argument("--out", default="schedule.json", metavar="FILE", help="where to write (default: schedule.json)")
    p.set_defaults(run=run_export)

    s = sub.add_parser("schedules", help="inspect searches' schedules")
    ssub = s.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    ls = ssub.add_parser("list", help="show a search's Pareto front as a table")
    ls.add_argument("source", help="search folder or MLflow run id")
    ls.set_defaults(run=run_list)


def _tracking_uri(command: str, overrides: list[str]) -> str:
    from ebtune.run.overrides import settings
    from ebtune.search.tracking import default_uri

    return settings(command, overrides, {"tracking.uri": str}).get("tracking.uri") or default_uri()


def load_front(source: str, overrides: list[str], command: str = "export") -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """(search folder, what the search records about itself, the points to choose from) for a folder
    or run id. A trial's run id yields that one trial (Pareto-optimal or not); a search's parent run its front.
    """
    uri = _tracking_uri(command, overrides)  # checks the overrides before anything is read
    folder = Path(source)
    if folder.exists():
        data, points = _from_study(folder)
    else:
        folder, data, points = _from_run(source, uri)
    if not points:
        raise ConfigError(f"the Pareto front in {folder} is empty; run more trials or relax the constraints")
    return folder, data, points


def _from_study(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The search's description and its front, from its study.

    Raises:
        FileNotFoundError: not a search folder.
    """
    from ebtune.search.records import SearchRecord
    from ebtune.search.study import load_folder_study

    record = SearchRecord(load_folder_study(folder))
    objectives = record.objectives
    return {**record.meta, "quality": record.quality, "objectives": objectives}, record.front(objectives, record.constraints)


def _from_run(run_id: str, uri: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ebtune.search.records import trial_name
    from ebtune.search.tracking import sqlite_store_path

    store = sqlite_store_path(uri)
    if store is not None and not store.is_file():
        raise FileNotFoundError(f"{run_id!r} is not a search folder, and there is no MLflow store at {store}; "
                                "pass a folder or set tracking.uri=")
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
        parent = client.get_run(run.data.tags["mlflow.parentRunId"]) if "mlflow.parentRunId" in run.data.tags else run
    except MlflowException:
        raise FileNotFoundError(f"{run_id!r} is neither a search folder nor a run in {uri}; pass a folder or set tracking.uri=") from None
    if "folder" not in parent.data.params:
        raise ConfigError(f"run {run_id} was not written by `ebtune search` (its search run has no folder param)")
    folder = Path(parent.data.params["folder"])
    data, front = _from_study(folder)
    if parent is run:
        return folder, data, front
    number = int(run.data.tags["ebtune.trial"])
    point = {"number": number, "metrics": dict(run.data.metrics), "schedule_file": f"schedules/{trial_name(number)}.json"}
    return folder, data, [point]


def choose(points: list[dict[str, Any]], objectives: list[str], quality: str, bound: float | None,
           min_speedup: float | None) -> dict[str, Any]:
    """The knee by default; with a bound (on the quality metric `quality`, or on the speedup), the best
    point on the other axis that meets it."""
    from ebtune.search.pareto import direction, knee

    sign = 1.0 if direction(quality) == "minimize" else -1.0  # sign * value: lower is better
    if bound is not None:
        ok = [p for p in points if sign * p["metrics"][quality] <= sign * bound]
        if not ok:
            best = min((p["metrics"][quality] for p in points), key=lambda v: sign * v)
            word = "<=" if sign > 0 else ">="
            raise ConfigError(f"no Pareto point has {quality} {word} {bound:g} (best is {best:.3g}); relax --quality")
        return max(ok, key=lambda p: p["metrics"]["speedup"])
    if min_speedup is not None:
        ok = [p for p in points if p["metrics"]["speedup"] >= min_speedup]
        if not ok:
            best = max(p["metrics"]["speedup"] for p in points)
            raise ConfigError(f"no Pareto point reaches speedup {min_speedup} (best is {best:.3g}x); lower --min-speedup")
        return min(ok, key=lambda p: sign * p["metrics"][quality])
    return points[knee([p["metrics"] for p in points], objectives)]


def run_export(args: argparse.Namespace) -> int:
    folder, data, points = load_front(args.source, args.overrides)
    quality = data["quality"]
    point = choose(points, data["objectives"], quality, args.quality, args.min_speedup)
    try:
        file = load_schedule_file(folder / point["schedule_file"])
    except ScheduleFileError as e:
        raise ConfigError(f"{e}") from None
    how = f"quality={args.quality:g}" if args.quality is not None else f"min_speedup={args.min_speedup}" if args.min_speedup is not None else "knee"
    provenance = {**file.provenance, "exported": {"from": str(folder.resolve()), "trial": point.get("number"), "choice": how,
                                                   "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dataclasses.replace(file, provenance=provenance).save(out)
    m = point["metrics"]
    print(f"exported trial {point.get('number')} ({how}): {quality} {m.get(quality, float('nan')):.3f}, "
          f"speedup {m.get('speedup', float('nan')):.2f}x -> {out}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    folder, data, points = load_front(args.source, args.overrides, "schedules list")
    cols = [data["quality"], "speedup", "macs", "latency_s", "distance", "accuracy"]
    sampler = data.get("sampler", {})
    print(f"Pareto front of {folder} ({data.get('model')}, {sampler.get('name') if isinstance(sampler, dict) else sampler}, {data.get('steps')} steps, "
          f"objectives {', '.join(data.get('objectives', []))})")
    print(f"{'trial':>6} " + " ".join(f"{c:>10}" for c in cols) + "  schedule_file")
    for p in sorted(points, key=lambda p: p["metrics"].get("speedup", 0)):
        m = p["metrics"]
        cells = [f"{m[c]:>10.4g}" if isinstance(m.get(c), (int, float)) else f"{'-':>10}" for c in cols]
        print(f"{p.get('number', '-'):>6} " + " ".join(cells) + f"  {p.get('schedule_file', '')}")
    return 0
