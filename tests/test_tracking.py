"""MLflow tracking of a search (SearchTracker, Pareto plots) and `ebtune ui`, against sqlite stores in tmp_path."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Before mlflow is imported anywhere: no telemetry file under the home directory.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from ebtune.cli import ui as cli_ui  # noqa: E402
from ebtune.search.tracking import SearchTracker  # noqa: E402

EXPERIMENT = "ebtune/dit-tiny"
INFO = {"git_commit": "7c3d95f", "device": "cpu", "ebtune_version": "0.1.0", "steps": 20, "sampler": "ddim"}
CONFIG = {"model": {"name": "dit-tiny"}, "steps": 20, "search": {"n_trials": 4, "objectives": ["fid", "macs"]}}
SPACE = {"attn_interval": {"type": "int", "low": 1, "high": 4}, "b_h": {"type": "float", "low": 0.9, "high": 1.0}}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, empty sqlite store; tests copy it because creating the tables takes several seconds."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh store at tmp_path/outputs/mlflow.db, with tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "outputs" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(empty_store, db)
    return db


def uri(db: Path) -> str:
    return f"sqlite:///{db}"


def started(db: Path, name: str = "s1") -> SearchTracker:
    tracker = SearchTracker(uri(db), EXPERIMENT)
    tracker.start(name, CONFIG, SPACE, INFO)
    return tracker


def children(client: MlflowClient, tracker: SearchTracker, extra: str = "") -> list:
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'{extra}")


def artifact_text(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    dst = tmp_path / "download" / run_id
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text(errors="replace")


def test_parent_and_trial_runs(store: Path, tmp_path: Path) -> None:
    tracker = started(store)
    schedule = tmp_path / "trial-0003.json"
    schedule.write_text('{"format": "ebtune-schedule"}')
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"\x89PNG\r\n\x1a\n")
    run_id = tracker.log_trial(3, {"attn_interval": 2, "b_h": 0.97},
                               {"fid": 12.5, "macs": 1.1e9, "latency_s": None, "distance": math.nan}, "COMPLETE",
                               schedule_file=str(schedule), grid_png=str(grid))
    client = MlflowClient(tracking_uri=uri(store))

    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.run_name == "s1"
    assert parent.data.tags["ebtune.search_name"] == "s1"
    assert parent.data.params == {k: str(v) for k, v in INFO.items()}
    assert json.loads(artifact_text(client, parent.info.run_id, "config.json", tmp_path)) == CONFIG
    assert json.loads(artifact_text(client, parent.info.run_id, "space.json", tmp_path)) == SPACE

    child = client.get_run(run_id)
    assert child.info.run_name == "trial-0003"
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert child.data.tags["ebtune.trial"] == "3"
    assert child.data.params == {"attn_interval": "2", "b_h": "0.97"}
    assert child.data.metrics == {"fid": 12.5, "macs": 1.1e9}  # None and NaN left out
    assert artifact_text(client, run_id, "schedule/trial-0003.json", tmp_path) == '{"format": "ebtune-schedule"}'
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/grid.png"]
    assert [r.info.run_id for r in children(client, tracker)] == [run_id]


def test_failed_trial_is_failed_with_error(store: Path) -> None:
    tracker = started(store)
    run_id = tracker.log_trial(0, {"attn_interval": 4}, None, "FAIL", error="RuntimeError: NaN in sample 3")
    run = MlflowClient(tracking_uri=uri(store)).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: NaN in sample 3"
    assert run.data.metrics == {}
    with pytest.raises(ValueError, match="unknown trial state 'DONE'"):
        tracker.log_trial(1, {}, None, "DONE")


def test_mark_pareto_flips_tags(store: Path) -> None:
    tracker = started(store)
    for n in range(4):
        tracker.log_trial(n, {"attn_interval": n + 1}, {"fid": 10.0 + n, "macs": 1e9 - n}, "COMPLETE")
    client = MlflowClient(tracking_uri=uri(store))

    def tagged(value: str) -> set[int]:
        return {int(r.data.tags["ebtune.trial"]) for r in children(client, tracker, f" and tags.pareto_optimal = '{value}'")}

    tracker.mark_pareto({0, 2})
    assert (tagged("true"), tagged("false")) == ({0, 2}, {1, 3})
    tracker.mark_pareto({1, 3})
    assert (tagged("true"), tagged("false")) == ({1, 3}, {0, 2})
    with pytest.raises(ValueError, match=r"trials \[9\] have no run"):
        tracker.mark_pareto({1, 9})


def test_resume_reuses_parent_and_trial_runs(store: Path, tmp_path: Path) -> None:
    first = started(store)
    first.log_baseline("nocache", {"steps": 20}, {"fid": 10.0, "macs": 2e9})
    done = first.log_trial(0, {"attn_interval": 2}, {"fid": 11.0}, "COMPLETE")
    running = first.log_trial(1, {"attn_interval": 3}, None, "RUNNING")

    second = SearchTracker(uri(store), EXPERIMENT)
    assert second.start("s1", CONFIG, SPACE, {**INFO, "git_commit": "abc1234"}) == first.parent_run_id
    assert second.log_trial(1, {"attn_interval": 3}, {"fid": 12.0}, "COMPLETE") == running
    second.log_baseline("fora2", {"interval": 2}, {"fid": 11.5, "macs": 1e9})
    with pytest.raises(ValueError, match="trial 0 is already logged with attn_interval=2, not 4"):
        second.log_trial(0, {"attn_interval": 4}, None, "COMPLETE")

    client = MlflowClient(tracking_uri=uri(store))
    assert sorted(r.info.run_id for r in children(client, second)) == sorted([done, running])
    assert client.get_run(running).info.status == "FINISHED"
    assert client.get_run(running).data.metrics == {"fid": 12.0}
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.params["git_commit"] == "7c3d95f"
    assert parent.data.tags["resumed.git_commit"] == "abc1234"
    assert parent.data.metrics == {"baseline.nocache.fid": 10.0, "baseline.nocache.macs": 2e9,
                                   "baseline.fora2.fid": 11.5, "baseline.fora2.macs": 1e9}
    rows = artifact_text(client, parent.info.run_id, "baselines.csv", tmp_path).splitlines()
    assert [r.split(",")[0] for r in rows] == ["name", "nocache", "fora2"]
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert len(client.search_runs([exp], "tags.`ebtune.search_name` = 's1'")) == 1
    assert started(store, "s2").parent_run_id != first.parent_run_id


def test_finish_writes_pareto_artifacts(store: Path, tmp_path: Path) -> None:
    tracker = started(store)
    trials = []
    for n, (fid, macs) in enumerate([(12.0, 1.0e9), (11.0, 1.5e9), (13.0, 1.6e9), (10.5, 1.9e9)]):
        record = {"number": n, "name": f"trial-{n:04d}", "params": {"attn_interval": n + 1},
                  "metrics": {"fid": fid, "macs": macs}}
        tracker.log_trial(n, record["params"], record["metrics"], "COMPLETE")
        trials.append(record)
    failed = {"number": 4, "name": "trial-0004", "params": {"attn_interval": 9}, "metrics": None}
    tracker.log_trial(4, failed["params"], None, "FAIL", error="OOM")
    baselines = [{"name": "nocache", "params": {}, "metrics": {"fid": 10.0, "macs": 2.0e9}},
                 {"name": "fora2", "params": {"interval": 2}, "metrics": {"fid": 11.8, "macs": 1.1e9}}]
    front = [trials[0], trials[1], trials[3]]
    tracker.finish(front, baselines, trials + [failed], ["fid", "macs", "latency_s"])

    client = MlflowClient(tracking_uri=uri(store))
    parent_id = tracker.parent_run_id
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"pareto.png", "pareto.html", "pareto.csv"}
    png = tmp_path / "dl"
    png.mkdir()
    assert Path(client.download_artifacts(parent_id, "pareto.png", str(png))).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = artifact_text(client, parent_id, "pareto.html", tmp_path)
    assert "fora2" in html and "Pareto front (3)" in html and "trials (4)" in html
    assert 'src="http' not in html and len(html) > 1_000_000  # plotly.js embedded, no CDN, for offline viewing
    rows = artifact_text(client, parent_id, "pareto.csv", tmp_path).splitlines()
    assert rows[0].startswith("name,number,metrics.fid,metrics.macs")
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1", "3"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    true = children(client, tracker, " and tags.pareto_optimal = 'true'")
    assert {r.data.tags["ebtune.trial"] for r in true} == {"0", "1", "3"}


def test_tracking_json_and_default_artifact_folder(store: Path, tmp_path: Path) -> None:
    tracker = SearchTracker("sqlite:///outputs/mlflow.db", EXPERIMENT)  # relative to the working directory
    tracker.start("s1", CONFIG, SPACE, INFO)
    tracker.write_pointer(str(tmp_path / "outputs" / "search" / "s1"))
    pointer = json.loads((tmp_path / "outputs" / "search" / "s1" / "tracking.json").read_text())
    experiment = MlflowClient(tracking_uri=uri(store)).get_experiment_by_name(EXPERIMENT)
    assert pointer == {"uri": f"sqlite:///{store}", "experiment": EXPERIMENT,
                       "experiment_id": experiment.experiment_id, "parent_run_id": tracker.parent_run_id}
    assert experiment.artifact_location == (tmp_path / "outputs" / "mlartifacts").as_uri()
    assert list((tmp_path / "outputs" / "mlartifacts").glob(f"{tracker.parent_run_id}/artifacts/config.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # MLflow wrote nowhere else in the cwd


def test_ui_store_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no MLflow store at .*outputs/mlflow.db; run `ebtune search` first"):
        cli_ui.store_from([], tmp_path)
    with pytest.raises(ValueError, match="only tracking.uri="):
        cli_ui.store_from(["port=5001"], tmp_path)
    with pytest.raises(ValueError, match="not a sqlite store"):
        cli_ui.store_from(["tracking.uri=http://10.0.0.5:5000"], tmp_path)


def test_ui_port_in_use_is_an_error(store: Path) -> None:
    assert cli_ui.store_from([], Path.cwd()) == (f"sqlite:///{store}", store.parent / "mlartifacts")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use; pass --port"):
            cli_ui.run(argparse.Namespace(host="127.0.0.1", port=port, overrides=[]))


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return None


@pytest.mark.slow
def test_ui_serves_and_stops_on_ctrl_c(store: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A shell that starts pytest in the background ignores SIGINT in its children; restore Python's handler.
    script = ("import argparse, signal, sys; from ebtune.cli import ui as cli_ui; "
              "signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.exit(cli_ui.run(argparse.Namespace(host='127.0.0.1', port=int(sys.argv[1]), "
              "overrides=['tracking.uri=' + sys.argv[2]])))")
    log = (tmp_path / "ui.out").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script, str(port), uri(store)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        # Ready means both: the server answers and `ebtune ui` has printed its URL (it polls /health itself).
        while _health(url) != 200 or f"MLflow UI: {url}" not in (tmp_path / "ui.out").read_text():
            assert proc.poll() is None, (tmp_path / "ui.out").read_text()
            assert time.monotonic() < deadline, "MLflow UI not healthy and announced within 60 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert _health(url) is None  # the server's process group is gone too
