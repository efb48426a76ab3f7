"""`ebtune ui`: serve the MLflow UI on the search runs until Ctrl-C, and print where to look.

MLflow 3 opens an experiment on its GenAI overview, which is empty for ebtune's runs, so the printed
links go to the runs table of the search's experiment (`#/experiments/<id>/runs`), and to the same
table filtered to the Pareto front (`searchFilter=tags.pareto_optimal = 'true'`), the query
parameters MLflow's own runs page writes.

The server must not outlive `ebtune ui`, however it ends. On Linux `mlflow server` starts with the
kernel's parent-death signal armed (`prctl(PR_SET_PDEATHSIG, SIGTERM)`), so a `kill -9` of `ebtune ui`
still sends it SIGTERM; `mlflow server` forwards SIGTERM to the uvicorn process it runs and exits
once uvicorn has (before it has started uvicorn, SIGTERM just ends it). Ctrl-C and SIGTERM of
`ebtune ui` stop it with the same SIGTERM, in order. Elsewhere only those stop it.
"""
from __future__ import annotations

import argparse
import ctypes
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
from typing import Callable

from ebtune.errors import ConfigError

# MLflow's defaults start ~13 processes (~2.5 GB, ~22 s); one worker without the job runner starts in ~5 s.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
FRONT_FILTER = "tags.pareto_optimal = 'true'"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn for the server: its own process group, so that a terminal's Ctrl-C reaches only
    `ebtune ui` (which then stops the server once, in order), and SIGTERM when `parent` dies.

    The parent-death signal fires when the *thread* that forked exits, so call Popen from the main
    thread. libc is loaded here, before the fork: the child must not import between fork and exec.
    """
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def arm() -> None:
        os.setpgid(0, 0)
        if libc is not None and libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # `ebtune ui` died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


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
    """SIGTERM the server (it forwards it to uvicorn and waits for it); if it has not exited within
    STOP_TIMEOUT_S, SIGKILL its process group so that uvicorn goes too."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _wait_healthy(server: subprocess.Popen, url: str) -> str | None:
    """None once `/health` answers, else why the server will not serve."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _healthy(url):
        if server.poll() is not None:
            return f"mlflow server exited with code {server.returncode}; see its output above"
        if time.monotonic() > deadline:
            return f"mlflow server not healthy at {url} after {READY_TIMEOUT_S:.0f} s; see its output above"
        time.sleep(0.5)
    return None


def _print_links(url: str, uri: str, pointer: dict | None, browser: bool) -> None:
    print(f"MLflow UI: {url}  (store {uri}; Ctrl-C to stop)", flush=True)
    experiment = str(pointer["experiment_id"]) if pointer else _latest_experiment(url)
    if experiment is None:
        print("the store has no experiment yet; run `ebtune search` first", flush=True)
        return
    table, front = runs_links(url, experiment)
    print(f"runs of the search (experiment {experiment}): {table}", flush=True)
    print(f"Pareto front only ({FRONT_FILTER}): {front}", flush=True)
    if browser:
        _open_browser(table)


def run(args: argparse.Namespace) -> int:
    """Start `mlflow server` on the store, print the URL once `/health` answers, serve until interrupted.

    Ctrl-C (SIGINT) or SIGTERM stops the server and returns 0; a server that exits by itself (or never
    becomes healthy) returns 1. A SIGKILL of this process stops the server too (module docstring).
    """
    # argparse gives the first free token to the optional folder, a `tracking.uri=` override too.
    tokens = [t for t in (getattr(args, "folder", None), *(getattr(args, "overrides", []) or [])) if t]
    folder = next((t for t in tokens if "=" not in t or Path(t).is_dir()), None)
    overrides = [t for t in tokens if t is not folder]
    pointer = _pointer(folder)
    uri, artifacts = store_from(overrides or ([f"tracking.uri={pointer['uri']}"] if pointer else []), Path.cwd())
    if pointer and pointer["uri"] != uri:
        raise ConfigError(f"{folder} was tracked in {pointer['uri']}, not {uri}; pass tracking.uri={pointer['uri']}")
    if not _port_free(args.host, args.port):
        raise ConfigError(f"port {args.port} on {args.host} is in use; pass --port with a free one")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", str(artifacts), "--host", args.host, "--port", str(args.port), "--workers", "1"]
    url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does
    server = subprocess.Popen(cmd, env={**os.environ, **SERVER_ENV}, preexec_fn=_die_with(os.getpid()))
    try:
        error = _wait_healthy(server, url)
        if error is None:
            _print_links(url, uri, pointer, browser=not getattr(args, "no_browser", False))
            error = f"mlflow server exited with code {server.wait()}; see its output above"
        print(f"ebtune ui: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping MLflow UI", flush=True)
        return 0
    finally:
        _stop(server)
        signal.signal(signal.SIGTERM, previous_term)
