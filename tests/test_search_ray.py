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


def _stop_cluster(temp_dir: str) -> None:
    """Stop only the processes of the cluster started in `temp_dir` (`ray stop` would stop every Ray
    instance on the machine, including other users' ones)."""
    mine = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                mine.append(int(proc.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


def test_search_joins_a_running_cluster_and_runs_trials_in_its_workers(ebtune, tmp_path, monkeypatch, capsys):
    # A short temp dir: Ray's socket paths must stay under 107 bytes, which pytest's tmp_path can exceed.
    temp_dir = tempfile.mkdtemp(prefix="ebtune-raytest-")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        subprocess.run([RAY, "start", "--head", "--num-cpus=2", f"--port={port}", f"--temp-dir={temp_dir}",
                        "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)
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
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
