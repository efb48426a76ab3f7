"""`ebtune ui`: serve the MLflow UI on the search runs until Ctrl-C."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ebtune.errors import ConfigError

# MLflow's defaults start ~13 processes (~2.5 GB, ~22 s); one worker without the job runner starts in ~5 s.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
READY_TIMEOUT_S = 120.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="open the MLflow UI on the search runs",
        description="Serve the MLflow UI for the store `ebtune search` writes (default sqlite:///<cwd>/outputs/mlflow.db, "
        "artifacts in outputs/mlartifacts) and print its URL; Ctrl-C stops it. Override: tracking.uri=URI.",
    )
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes the UI to the network)")
    p.set_defaults(run=run)


def store_from(overrides: list[str], cwd: Path) -> tuple[str, Path]:
    """The backend store URI and artifact folder to serve.

    Args:
        overrides: ``key=value`` tokens; only ``tracking.uri=`` is accepted.
        cwd: the directory the default store ``outputs/mlflow.db`` lives under.

    Returns:
        (absolute sqlite URI, the ``mlartifacts`` folder beside the database).

    Raises:
        ConfigError: an override other than ``tracking.uri=``, or a store that is not sqlite.
        FileNotFoundError: the database file does not exist.
    """
    from ebtune.search.tracking import default_uri, sqlite_store_path

    uri = None
    for token in overrides:
        key, sep, value = token.partition("=")
        if key != "tracking.uri" or not sep or not value:
            raise ConfigError(f"unknown override {token!r}; `ebtune ui` takes only tracking.uri=URI")
        uri = value
    db = sqlite_store_path(uri or default_uri(cwd))
    if db is None:
        raise ConfigError(f"tracking.uri={uri} is not a sqlite store; a tracking server serves its own UI, open it in a browser")
    if not db.is_file():
        raise FileNotFoundError(f"no MLflow store at {db}; run `ebtune search` first or set tracking.uri=")
    return f"sqlite:///{db.as_posix()}", db.parent / "mlartifacts"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As the server does, so a port still in TIME_WAIT after a previous `ebtune ui` counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(server: subprocess.Popen) -> None:
    """Terminate the server's whole process group (MLflow forks its web workers), then reap it."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Start `mlflow server` on the store, print the URL once `/health` answers, serve until interrupted.

    Ctrl-C (SIGINT) or SIGTERM stops the server's process group and returns 0; a server that exits by itself
    (or never becomes healthy) returns 1. The server runs in its own session so that terminal signals reach only
    this process, which then shuts the server down in order.
    """
    uri, artifacts = store_from(list(getattr(args, "overrides", []) or []), Path.cwd())
    if not _port_free(args.host, args.port):
        raise ConfigError(f"port {args.port} on {args.host} is in use; pass --port with a free one")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", str(artifacts), "--host", args.host, "--port", str(args.port), "--workers", "1"]
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    server = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV}, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(url):
            if server.poll() is not None:
                print(f"ebtune ui: error: mlflow server exited with code {server.returncode}; see its output above",
                      file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"ebtune ui: error: mlflow server not healthy at {url} after {READY_TIMEOUT_S:.0f} s; "
                      f"see its output above", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"MLflow UI: {url}  (store {uri}; Ctrl-C to stop)", flush=True)
        code = server.wait()
        print(f"ebtune ui: error: mlflow server exited with code {code}; see its output above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping MLflow UI", flush=True)
        return 0
    finally:
        _stop(server)
        signal.signal(signal.SIGTERM, previous_term)
