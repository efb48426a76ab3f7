"""Attach a diagnosis to an existing MLflow run (mlflow imported only here, only when asked)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ebtune.diagnostics.matched import RUNS, Diagnosis
from ebtune.errors import ConfigError


def check_run(run_id: str, uri: str) -> None:
    """Fail before any sampling when the run cannot be logged to.

    Raises:
        FileNotFoundError: `uri` names a sqlite store that does not exist (it is not created).
        ConfigError: no such run in the store at `uri`.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ebtune.search.tracking import sqlite_store_path

    store = sqlite_store_path(uri)
    if store is not None and not store.is_file():
        raise FileNotFoundError(f"there is no MLflow store at {store} for mlflow_run={run_id}; set tracking.uri= to the search's store")

    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"mlflow_run={run_id} is not a run in {uri}; pass a run id from that store or set tracking.uri=") from None


def log_diagnosis(run_id: str, uri: str, out: Path, diagnosis: Diagnosis, summary: dict[str, Any]) -> None:
    """The files in `out` as artifacts under `diagnostics/`, the summary's step means as metrics
    `diag_<run>_<measure>`, and the per-step gap (or ‖ε̂‖ where there is no real data) as stepped
    metrics `diag_gap_<run>` / `diag_eps_norm_<run>`."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    metrics = [Metric(f"diag_{r}_{k}", v, now, 0) for r, m in summary["runs"].items() for k, v in m.items() if v is not None]
    measure = "gap" if diagnosis.has_real else "eps_norm"
    for r in RUNS:
        values = diagnosis.columns[f"{measure}_{r}"]
        metrics += [Metric(f"diag_{measure}_{r}", float(v), now, i) for i, v in enumerate(values)]
    for lo in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[lo:lo + 1000])
    client.log_artifacts(run_id, str(out), artifact_path="diagnostics")
