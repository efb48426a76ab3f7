"""`ebtune ui`: links to the search's runs table and its Pareto front; the server dies with the UI."""
from __future__ import annotations

import ctypes
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


def test_tracking_uri_alone_is_an_override_not_a_folder(ebtune, tmp_path, capsys):
    assert ebtune("ui", f"tracking.uri=sqlite:///{tmp_path}/none.db", "--no-browser") == 2
    assert f"no MLflow store at {tmp_path}/none.db" in capsys.readouterr().err
    (tmp_path / "search").mkdir()
    assert ebtune("ui", f"tracking.uri=sqlite:///{tmp_path}/none.db", "search", "--no-browser") == 2
    assert "search has no tracking.json" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (ppid is the field after the parenthesised name)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue  # a process that exited while the table was read
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        children = [c for c, parent in parents.items() if parent == below]
        found += children
        todo += children
    return found


@pytest.fixture
def subreaper():
    """Make this process the reaper of orphans below it (Linux), so that the servers `ebtune ui` leaves
    come back here: reaping one proves it exited and leaves no zombie behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap(pids: list[int], timeout_s: float) -> list[int]:
    """Wait for `pids` (children of this process) to exit and reap them; return those still running."""
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if os.waitpid(pid, os.WNOHANG)[0] == 0]
        time.sleep(0.1)
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server dies with the UI by Linux's parent-death signal")
def test_links_work_and_kill_9_of_the_ui_stops_every_server_process(tmp_path, subreaper):
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
        server = _descendants(ui.pid)
        assert len(server) == 2, server  # mlflow server, and the uvicorn process it runs and reaps
        ui.send_signal(signal.SIGKILL)
        ui.wait(timeout=10)
        # The orphaned mlflow server comes to this process (the subreaper): reaping it proves it exited.
        assert _reap(server[:1], timeout_s=30) == [], "mlflow server still running 30 s after kill -9 of ebtune ui"
        assert [pid for pid in server if Path(f"/proc/{pid}").exists()] == []  # no process, no zombie
        assert not _port_taken(port)
    finally:
        if ui.poll() is None:
            ui.kill()
