"""`ebtune ui`: links to the search's runs table and its Pareto front; the server dies with the UI."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ebtune.cli import ui as cli_ui


def test_runs_links_are_mlflow3_runs_table_routes():
    table, front = cli_ui.runs_links("http://127.0.0.1:5000", "7")
    assert table == "http://127.0.0.1:5000/#/experiments/7/runs?compareRunsMode=TABLE"
    route, _, query = front.partition("?")
    assert route == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert urllib.parse.parse_qs(query) == {"searchFilter": ["tags.pareto_optimal = 'true'"], "compareRunsMode": ["TABLE"]}


def test_folder_without_pointer_is_an_error(ebtune, tmp_path, capsys):
    (tmp_path / "search").mkdir()
    assert ebtune("ui", "search", "--no-browser") == 2
    assert "search has no tracking.json" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_links_work_and_kill_9_of_the_ui_frees_the_port(tmp_path):
    from mlflow import MlflowClient

    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.create_experiment("ebtune/dit-tiny", artifact_location=(tmp_path / "art").as_uri())
    front_run = client.create_run(experiment, tags={"pareto_optimal": "true"}).info.run_id
    client.create_run(experiment, tags={"pareto_optimal": "false"})
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "tracking.json").write_text(json.dumps({"uri": f"sqlite:///{db}", "experiment_id": experiment}))
    port = _free_port()
    log = tmp_path / "ui.out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log.open("w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "ebtune.cli", "ui", str(folder), "--port", str(port), "--no-browser"],
                              cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "Pareto front only" not in log.read_text():
            assert ui.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "ebtune ui printed no links within 120 s"
            time.sleep(0.5)
        lines = log.read_text().splitlines()
        table = next(line for line in lines if line.startswith("runs of the search")).split(": ", 1)[1]
        front = next(line for line in lines if line.startswith("Pareto front only")).split(": ", 1)[1]
        assert f"/#/experiments/{experiment}/runs" in table
        # The printed filter is one the server understands and it selects the front run only.
        search_filter = urllib.parse.parse_qs(front.partition("?")[2])["searchFilter"][0]
        body = json.dumps({"experiment_ids": [experiment], "filter": search_filter}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        assert [r["info"]["run_id"] for r in runs] == [front_run]
        assert _port_taken(port)
        ui.send_signal(signal.SIGKILL)
        ui.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _port_taken(port):
            assert time.monotonic() < deadline, "the MLflow server still holds the port 30 s after kill -9 of ebtune ui"
            time.sleep(0.2)
    finally:
        if ui.poll() is None:
            ui.kill()
