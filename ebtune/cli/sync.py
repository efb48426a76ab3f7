"""`ebtune sync RUN`: rebuild a search's MLflow runs and `pareto.json` from its Optuna study.

The study is the search's one source of truth; this writes what MLflow lacks (trials finished while
the store was down, or by a session killed between Optuna's tell and its MLflow write), re-tags
the front and rewrites `pareto.json`. Running it twice changes nothing the second time.
"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="write a search's results from its study to MLflow and pareto.json",
                       description="Reconcile the MLflow runs and pareto.json of a search folder with its Optuna "
                       "study (idempotent). Overrides: tracking.uri=URI (default: the store the search used).")
    p.add_argument("folder", help="a folder written by `ebtune search`")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    from pathlib import Path

    from ebtune.run.overrides import settings
    from ebtune.search.study import done_trials
    from ebtune.search.views import folder_views

    uri = settings("sync", args.overrides, {"tracking.uri": str}).get("tracking.uri")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    views = folder_views(Path(args.folder), uri)
    views.sync()
    front = views.front()
    n = len(done_trials(views.study))
    if views.parent_run_id is None or not views.guard.up:
        print(f"pareto.json rewritten ({len(front)} front point(s) of {n} trials); MLflow at {views.tracker.uri} "
              f"is unreachable: run `ebtune sync {args.folder}` again when it is back")
        return 1
    print(f"synced {n} trials of search {views.study.study_name} to {views.tracker.uri} (parent run "
          f"{views.parent_run_id}); pareto.json: {len(front)} front point(s)")
    return 0
