"""`ebtune search launcher=ray` on dit-tiny: two concurrent trials in a local Ray, and a search that joins
a cluster started separately with `ray start` whose trials run in that cluster's worker processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .conftest import TINY_SEARCH

pytestmark = pytest.mark.slow

TINY = [*TINY_SEARCH, "launcher=ray", "trials=2"]
RAY = str(Path(sys.executable).with_name("ray"))


def _results(run: Path) -> list[dict]:
    """The last Tune result of every trial of the search in `run`."""
    out = []
    for path in (run / "ray_results").rglob("result.json"):
        lines = path.read_text().strip().splitlines()
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def _children(run: Path) -> list:
    pointer = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(pointer["uri"])
    return client.search_runs([pointer["experiment_id"]], f"tags.`mlflow.parentRunId` = '{pointer['parent_run_id']}'")


def test_ray_search_runs_two_trials_at_once_and_tracks_them(ebtune, tmp_path, capsys):
    run = tmp_path / "run"
    assert ebtune("search", *TINY, "ray.num_cpus=2", f"out={run}", "name=ray2") == 0
    out = capsys.readouterr().out
    assert "ray: 2 concurrent trial(s)" in out
    results = _results(run)
    assert sorted(r["trial_number"] for r in results) == [0, 1]
    assert all(r["worker_pid"] != os.getpid() for r in results)
    # Both trials were in flight at the same time: their [start, end] windows overlap.
    (s0, e0), (s1, e1) = [(r["timestamp"] - r["time_total_s"], r["timestamp"]) for r in results]
    assert max(s0, s1) <= min(e0, e1) + 1
    children = _children(run)
    assert sorted(c.info.run_name for c in children) == ["trial-0000", "trial-0001"]
    assert all(c.info.status == "FINISHED" and c.data.tags["pareto_optimal"] in ("true", "false") for c in children)
    front = {p["number"] for p in json.loads((run / "pareto.json").read_text())["points"]}
    assert front == {int(c.data.tags["ebtune.trial"]) for c in children if c.data.tags["pareto_optimal"] == "true"}
    assert list((run / "ray").glob("session_*"))  # Ray's session files stay in the search folder


def test_ray_asking_for_missing_gpus_is_a_clear_error(ebtune, tmp_path, capsys):
    assert ebtune("search", *TINY, "ray.num_cpus=2", "ray.gpus_per_trial=1", f"out={tmp_path / 'run'}") == 2
    assert "ray.gpus_per_trial=1 but the Ray cluster has 0 GPUs" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster(port: int, temp_dir: str, env: dict) -> subprocess.Popen:
    """`ray start --head --block` in a session of its own: the cluster lives as long as that process,
    and stopping its process group stops exactly this cluster (`ray stop` would stop every Ray
    instance on the machine, including other users' ones)."""
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--num-cpus=2", f"--port={port}", f"--temp-dir={temp_dir}",
                             "--include-dashboard=false", "--disable-usage-stats"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True).returncode:
        assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start within 120 s"
        time.sleep(1)
    return head


def _stop_cluster(head: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
            head.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def test_search_joins_a_running_cluster_and_runs_trials_in_its_workers(ebtune, tmp_path, monkeypatch, capsys):
    # A short temp dir: Ray's socket paths must stay under 107 bytes, which pytest's tmp_path can exceed.
    temp_dir = tempfile.mkdtemp(prefix="ebtune-raytest-")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = _start_cluster(port, temp_dir, env)
    try:
        # `auto` finds the cluster through RAY_ADDRESS (several clusters may run on a shared machine).
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        run = tmp_path / "run"
        assert ebtune("search", *TINY, "ray.address=auto", f"out={run}", "name=joined") == 0
        results = _results(run)
        assert len(results) == 2
        logs = " ".join(p.name for p in Path(temp_dir).glob("session_*/logs/worker-*"))
        for r in results:
            assert r["worker_pid"] != os.getpid()
            assert f"-{r['worker_pid']}." in logs  # a worker process of that cluster
        assert len(_children(run)) == 2
    finally:
        _stop_cluster(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
