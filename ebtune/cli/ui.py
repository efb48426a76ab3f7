"""`ebtune ui`: serve the MLflow UI on the search runs until Ctrl-C, and print where to look.

MLflow 3 opens an experiment on its GenAI overview, which is empty for ebtune's runs, so the printed
links go to the runs table of the search's experiment (`#/experiments/<id>/runs`), and to the same
table filtered to the Pareto front (`searchFilter=tags.pareto_optimal = 'true'`), the query
parameters MLflow's own runs page writes.

The server must not outlive `ebtune ui`, however it ends: Ctrl-C and SIGTERM stop its process group
in order, and a `kill -9` of `ebtune ui` is caught by a small guard process between the two. The
guard leads the server's process group and gets SIGTERM when `ebtune ui` dies (Linux
`prctl(PR_SET_PDEATHSIG)`); it then stops the whole group, which reaches the uvicorn process
`mlflow server` starts as well (a parent-death signal on `mlflow server` alone would not).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from ebtune.errors import ConfigError

# MLflow's defaults start ~13 processes (~2.5 GB, ~22 s); one worker without the job runner starts in ~5 s.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
READY_TIMEOUT_S = 120.0
FRONT_FILTER = "tags.pareto_optimal = 'true'"

# Run as `python -c GUARD mlflow server ...` in a new session: starts the server in its own process
# group and, on SIGTERM (sent by `ebtune ui` to stop it, or by the kernel when `ebtune ui` dies),
# stops the group: SIGTERM, up to 15 s, then SIGKILL. Plain Python so that it starts in milliseconds.
GUARD = """
import os, signal, subprocess, sys, time
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while server is not None and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)
server = None
signal.signal(signal.SIGTERM, stop)
if os.getppid() != int(os.environ["EBTUNE_UI_PID"]):
    stop(None, None)  # `ebtune ui` died before the parent-death signal was armed
server = subprocess.Popen(sys.argv[1:])
sys.exit(server.wait())
"""


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
    p.add_argument("folder", nargs="?", help="a search folder: link to its experiment (default: the latest one)")
    p.add_argument("--no-browser", action="store_true", help="print the links only, do not open a browser")
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


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def runs_links(url: str, experiment_id: str) -> tuple[str, str]:
    """(the experiment's runs table, the same table filtered to the Pareto front) in MLflow 3's UI."""
    base = f"{url}/#/experiments/{experiment_id}/runs"
    front = urllib.parse.urlencode({"searchFilter": FRONT_FILTER, "compareRunsMode": "TABLE"}, quote_via=urllib.parse.quote)
    return f"{base}?compareRunsMode=TABLE", f"{base}?{front}"


def _pointer(folder: str | None) -> dict | None:
    """A search folder's tracking.json (store, experiment, parent run), or None without a folder."""
    if folder is None:
        return None
    pointer = Path(folder) / "tracking.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{folder} has no tracking.json; pass a folder `ebtune search` wrote")
    return json.loads(pointer.read_text())


def _latest_experiment(url: str) -> str | None:
    """The most recently updated experiment other than Default, asked from the running server."""
    body = json.dumps({"max_results": 100, "order_by": ["last_update_time DESC"]}).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        experiments = [e for e in json.loads(response.read()).get("experiments", []) if e.get("name") != "Default"]
    return str(experiments[0]["experiment_id"]) if experiments else None


def _open_browser(link: str) -> None:
    """Open `link` where a graphical browser can be (never a terminal browser, which would block)."""
    if sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        try:
            webbrowser.open(link)
        except webbrowser.Error:
            pass  # the links are printed; a browser is a convenience


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
    (or never becomes healthy) returns 1. The server runs in its own session under the guard (module docstring), so
    that terminal signals reach only this process, which then shuts the server down in order, and a SIGKILL of this
    process still stops the server.
    """
    overrides = list(getattr(args, "overrides", []) or [])
    pointer = _pointer(getattr(args, "folder", None))
    uri, artifacts = store_from(overrides or ([f"tracking.uri={pointer['uri']}"] if pointer else []), Path.cwd())
    if pointer and pointer["uri"] != uri:
        raise ConfigError(f"{args.folder} was tracked in {pointer['uri']}, not {uri}; pass tracking.uri={pointer['uri']}")
    if not _port_free(args.host, args.port):
        raise ConfigError(f"port {args.port} on {args.host} is in use; pass --port with a free one")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", str(artifacts), "--host", args.host, "--port", str(args.port), "--workers", "1"]
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    server = subprocess.Popen([sys.executable, "-c", GUARD, *cmd], env={**os.environ, **SERVER_ENV,
                              "EBTUNE_UI_PID": str(os.getpid())}, start_new_session=True, preexec_fn=_die_with_parent)
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
        experiment = str(pointer["experiment_id"]) if pointer else _latest_experiment(url)
        if experiment is None:
            print("the store has no experiment yet; run `ebtune search` first", flush=True)
        else:
            table, front = runs_links(url, experiment)
            print(f"runs of the search (experiment {experiment}): {table}", flush=True)
            print(f"Pareto front only ({FRONT_FILTER}): {front}", flush=True)
            if not getattr(args, "no_browser", False):
                _open_browser(table)
        code = server.wait()
        print(f"ebtune ui: error: mlflow server exited with code {code}; see its output above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping MLflow UI", flush=True)
        return 0
    finally:
        _stop(server)
        signal.signal(signal.SIGTERM, previous_term)
