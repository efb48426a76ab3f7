"""Fault injection: kills, lost MLflow, failing and hung trials, two sessions, a name reused in another folder.

The end-to-end cases (marked slow) run the real `ebtune search` on dit-tiny in subprocesses through
tests/fault_driver.py, then check that the records agree (`_consistency`): every trial counted once,
interrupted trials retried with the same parameters, MLflow runs and `pareto.json` equal to the study.
Each prints one `FAULT-TABLE` row: `pytest tests/test_faults.py -m slow -s | grep FAULT-TABLE`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from ebtune.errors import ConfigError
from ebtune.io.checkpoints import CheckpointError, read_state_dict
from ebtune.search.job import TrialTimeout, time_limit
from ebtune.search.study import (
    HEARTBEAT_ATTR,
    Heartbeat,
    check_sampler,
    claim,
    counted,
    load_folder_study,
    make_sampler,
    open_study,
    reap,
    session_tag,
    storage,
    stored_trial_id,
    to_run,
)
from ebtune.search.tracking import GuardedTracker, SearchTracker

from .conftest import TINY_SEARCH

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_SEARCH, "metric.n_samples=16", "threads=1", "search.heartbeat_interval=1", "search.grace_period=3"]
SEARCH = {"sampler": "random", "seed": 0, "startup_trials": 2, "population_size": 4, "heartbeat_interval": 1,
          "grace_period": 3}


# -- unit level (default run) -----------------------------------------------------------------------
def _dead_tag() -> str:
    pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    return f"{socket.gethostname()}:{pid.strip()}:?"


def _study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    return open_study(tmp_path / "s", None, "s", ["fid", "macs"], {"model": "m"}, SEARCH, False)


def test_dead_sessions_trial_is_requeued_and_a_live_one_is_not(tmp_path):
    study, store = _study(tmp_path)
    dead, live = study.ask({"a": optuna.distributions.IntDistribution(1, 9)}), study.ask()
    dead.set_user_attr("ebtune.session", _dead_tag())
    live.set_user_attr("ebtune.session", session_tag())
    assert reap(study, store) == [dead.number]
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == TrialState.FAIL and states[live.number] == TrialState.RUNNING
    retried = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in retried] == [dead.params] and retried[0].system_attrs["failed_trial"] == dead.number
    # The interrupted trial does not count; the live one holds its place in the budget.
    assert not counted(study.trials[dead.number]) and to_run(study, 3) == 2


def test_untagged_running_trial_is_requeued_after_the_grace_period(tmp_path):
    study, store = _study(tmp_path)
    study.ask()
    assert reap(study, store, grace_s=60) == []
    assert reap(study, store, grace_s=0) == [0]


def test_a_late_heartbeat_fails_another_hosts_trial_but_not_a_live_local_one(tmp_path):
    study, store = _study(tmp_path)
    local, remote, beating = study.ask(), study.ask(), study.ask()
    local.set_user_attr("ebtune.session", session_tag())  # this process: alive
    remote.set_user_attr("ebtune.session", "elsewhere:123:456")
    beating.set_user_attr("ebtune.session", "elsewhere:124:457")
    for t in (local, remote):
        with Heartbeat(store, stored_trial_id(store, study, t.number), interval_s=60):
            pass  # one beat each
    time.sleep(2.5)  # both heartbeats are now older than the grace period
    with Heartbeat(store, stored_trial_id(store, study, beating.number), interval_s=60):
        assert reap(study, store, grace_s=1) == [remote.number]
    assert study.trials[remote.number].user_attrs[HEARTBEAT_ATTR] > 0
    states = {t.number: t.state for t in study.trials}
    assert states[local.number] == TrialState.RUNNING and states[remote.number] == TrialState.FAIL


def test_sessions_claiming_at_once_start_exactly_the_budget(tmp_path):
    study, _ = _study(tmp_path)
    total, claimed = 9, []

    def session() -> None:
        mine, store = load_folder_study(tmp_path / "s"), storage(tmp_path / "s")
        while (trial := claim(mine, store, total, tmp_path / "s", poll_s=0.05)) is not None:
            claimed.append(trial.number)
            mine.tell(trial, [1.0, 2.0])

    threads = [threading.Thread(target=session) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(study.trials) == total and sorted(claimed) == list(range(total))


def test_real_failures_count_interruptions_do_not(tmp_path):
    study, _ = _study(tmp_path)
    failed = study.ask()
    failed.set_user_attr("fail_reason", "RuntimeError: boom")
    study.tell(failed, state=TrialState.FAIL)
    study.tell(study.ask(), state=TrialState.FAIL)  # no reason: an interruption
    assert [counted(t) for t in study.trials] == [True, False]


def test_two_first_starts_at_once_share_one_study(tmp_path):
    code = ("import sys; from pathlib import Path; from ebtune.search.study import open_study; "
            f"s, _ = open_study(Path(sys.argv[1]), None, 'race', ['fid', 'macs'], {{'model': 'm'}}, {SEARCH!r}, False, "
            "[{'a': 1}, {'a': 2}]); print(s.user_attrs['search_id'])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "f")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]  # one search id: one study
    study = load_folder_study(tmp_path / "f")
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [{"a": 1}, {"a": 2}]  # seeds enqueued once
    assert study.metric_names == ["fid", "macs"]
    assert sorted(k for k in study.user_attrs if k.startswith("session.")) == ["session.0", "session.1"]


def test_sessions_get_different_sampler_seeds(tmp_path):
    a, _ = open_study(tmp_path / "s", None, "s", ["fid", "macs"], {"model": "m"}, SEARCH, False)
    b, _ = open_study(tmp_path / "s", None, "s", ["fid", "macs"], {"model": "m"}, SEARCH, False)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    assert a.ask(dist).params != b.ask(dist).params


def test_sampler_by_target_and_bad_samplers_are_refused():
    sampler = make_sampler({**SEARCH, "sampler": {"_target_": "optuna.samplers.NSGAIIISampler", "population_size": 6}},
                           5, constrained=True)
    assert isinstance(sampler, optuna.samplers.NSGAIIISampler) and sampler._population_size == 6
    for bad, message in [("cmaes", "unknown search.sampler 'cmaes'"),
                         ({"_target_": "optuna.samplers.Nope"}, "cannot be imported"),
                         ({"_target_": "optuna.samplers.TPESampler", "bogus": 1}, "check its arguments"),
                         ({"_target_": "collections.OrderedDict"}, "not an Optuna sampler")]:
        with pytest.raises(ConfigError, match=message):
            check_sampler({**SEARCH, "sampler": bad})


def test_storage_url_is_kept_in_the_folder_and_a_different_one_refused(tmp_path):
    url = f"journal:{tmp_path / 'shared' / 'study.log'}"
    study, _ = open_study(tmp_path / "f", url, "j", ["fid", "macs"], {"model": "m"}, SEARCH, False)
    assert json.loads((tmp_path / "f" / "storage.json").read_text()) == {"url": url}
    assert load_folder_study(tmp_path / "f").user_attrs["search_id"] == study.user_attrs["search_id"]
    with pytest.raises(ConfigError, match="keeps its study in journal:"):
        open_study(tmp_path / "f", None, "j", ["fid", "macs"], {"model": "m"}, SEARCH, False)


def test_unreachable_mlflow_warns_once_and_is_skipped(tmp_path):
    lines: list[str] = []
    guard = GuardedTracker(SearchTracker("http://127.0.0.1:1", "ebtune/x"), lines.append)
    started = time.monotonic()
    assert guard.call("start", "s", {}, {}, {}) is None
    assert guard.call("log_trial", 0, {}, None, "RUNNING") is None  # skipped: no second wait, no second warning
    assert time.monotonic() - started < 60
    assert len(lines) == 1 and "unreachable" in lines[0] and "ebtune sync" in lines[0]
    assert not guard.up


def test_time_limit_stops_a_python_loop():
    with pytest.raises(TrialTimeout, match="search.trial_timeout_s=0.2"):
        with time_limit(0.2):
            while True:
                torch.zeros(10).sum()


def test_legacy_state_dict_loads_and_a_refused_pickle_gives_a_safe_fix(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    assert torch.equal(read_state_dict(legacy)["w"], torch.ones(2))
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.ones(2), "x": socket.socket}, bad)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(bad)
    text = str(err.value)
    assert "socket.socket" in text and "safetensors" in text and "weights_only=False" not in text
    assert "\n" not in text


def test_bad_inputs_are_one_line(ebtune, tmp_path, capsys):
    assert ebtune("sample", f"schedule_file={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder, not a schedule file" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as removed:  # the old spelling of schedule_file= had its release
        ebtune("sample", "--schedule", str(tmp_path))
    assert removed.value.code == 2 and "unrecognized arguments: --schedule" in capsys.readouterr().err
    assert ebtune("search", *TINY_SEARCH, "trials=abc", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "trials='abc'" in err and "number" in err and len(err.strip().splitlines()) == 1  # the key is named
    assert ebtune("search", *TINY_SEARCH, "search.sampler=cmaes", f"out={tmp_path / 'r'}", "--dry-run") == 2
    assert "unknown search.sampler 'cmaes'" in capsys.readouterr().err and not (tmp_path / "r").exists()


# -- end to end (slow) ---------------------------------------------------------------------------------
def _driver(tmp_path: Path, kind: str, arg: str, *argv: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = [sys.executable, str(ROOT / "tests" / "fault_driver.py"), kind, arg, "--", *argv]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_ctrl_c_enabled)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                          preexec_fn=_ctrl_c_enabled)


def _ctrl_c_enabled() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt: the
    # driver must see SIGINT as a user's Ctrl-C does, however pytest itself was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _consistency(run: Path, total: int) -> dict:
    """Counts of the table and whether study, MLflow, pareto.json and schedule files agree."""
    study = load_folder_study(run)
    trials = study.trials
    problems = []
    if [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]:
        problems.append("trials left running or waiting")
    interrupted = [t for t in trials if t.state == TrialState.FAIL and not counted(t)]
    retried = {t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs}
    lost = [t.number for t in interrupted if t.number not in retried]
    duplicated = [n for n, t in retried.items() if counted(trials[n])]  # a retry of a trial that had counted
    if sum(counted(t) for t in trials) != total:
        problems.append(f"{sum(counted(t) for t in trials)} counted trials, not {total}")
    pointer = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(pointer["uri"])
    exp = client.get_experiment_by_name("ebtune/dit-tiny").experiment_id
    sid = study.user_attrs["search_id"]
    parents = client.search_runs([exp], f"tags.`ebtune.search_id` = '{sid}'")
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        problems.append(f"parents {[p.info.status for p in parents]}")
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'") if parents else []
    numbers = [int(c.data.tags["ebtune.trial"]) for c in children]
    if sorted(numbers) != [t.number for t in trials]:
        problems.append(f"MLflow runs {sorted(numbers)} for trials {[t.number for t in trials]}")
    status = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}
    for c in children:
        t = trials[int(c.data.tags["ebtune.trial"])]
        if c.info.status != status[t.state.name]:
            problems.append(f"trial {t.number} is {t.state.name} but its run {c.info.status}")
    pareto = json.loads((run / "pareto.json").read_text())
    tagged = {int(c.data.tags["ebtune.trial"]) for c in children if c.data.tags.get("pareto_optimal") == "true"}
    if tagged != {p["number"] for p in pareto["points"]}:
        problems.append(f"pareto tags {sorted(tagged)} vs pareto.json {[p['number'] for p in pareto['points']]}")
    missing = [p["schedule_file"] for p in pareto["points"] if not (run / p["schedule_file"]).is_file()]
    if missing:
        problems.append(f"missing schedule files {missing}")
    return {"finished": sum(t.state == TrialState.COMPLETE for t in trials), "failed": sum(
        t.state == TrialState.FAIL and counted(t) for t in trials), "interrupted": len(interrupted), "lost": len(lost),
        "duplicated": len(duplicated), "problems": problems}


def _row(injected: str, c: dict) -> None:
    print(f"FAULT-TABLE | {injected} | finished {c['finished']} | failed {c['failed']} | interrupted "
          f"{c['interrupted']} | lost {c['lost']} | duplicated {c['duplicated']} | consistent "
          f"{'yes' if not c['problems'] else 'no: ' + '; '.join(c['problems'])}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kill_after_tell", "kill_in_trial"])
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, kind):
    run = tmp_path / "k"
    args = ["search", *TINY, "trials=4", f"out={run}", "name=k"]
    killed = _driver(tmp_path, kind, "1", *args)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = _driver(tmp_path, "trials", "ok", *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    c = _consistency(run, 4)
    _row(f"SIGKILL of the driver {'after trial 1 told, before its MLflow write' if kind == 'kill_after_tell' else 'during trial 1'}", c)
    assert c["problems"] == [] and c["lost"] == 0 and c["duplicated"] == 0
    assert c["interrupted"] == (1 if kind == "kill_in_trial" else 0)


def _when_running(run: Path, number: int, proc: subprocess.Popen, timeout_s: float = 600) -> str:
    """Wait until trial `number` of the search in `run` is RUNNING (asked; its Ray worker may not have
    started yet), once the trial before it was told; returns what the driver printed until then."""
    seen = []
    for line in proc.stdout:  # the study exists once the trial before is told
        seen.append(line)
        if f"trial-{number - 1:04d}" in line:
            break
    started = time.monotonic()
    while time.monotonic() - started < timeout_s and proc.poll() is None:
        if any(t.number == number and t.state == TrialState.RUNNING for t in load_folder_study(run).trials):
            return "".join(seen)
        time.sleep(0.2)
    raise AssertionError(f"trial {number} never ran: {''.join(seen)[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_ray_driver_killed_during_a_trial_then_resume(tmp_path, monkeypatch, sig):
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the driver's lines arrive as they are printed
    run = tmp_path / "rk"
    args = ["search", *TINY, "launcher=ray", "ray.num_cpus=1", "trials=3", f"out={run}", "name=rk"]
    driver = _driver(tmp_path, "trials", "ok", *args, wait=False)
    out = _when_running(run, 1, driver)
    driver.send_signal(sig)
    out += driver.communicate(timeout=300)[0]
    assert driver.returncode == (-9 if sig == signal.SIGKILL else 130), out[-4000:]
    assert sig == signal.SIGKILL or "trial-0001 interrupted; re-queued" in out  # as a local session does
    resumed = _driver(tmp_path, "trials", "ok", *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    c = _consistency(run, 3)
    _row(f"launcher=ray: {sig.name} of the driver during trial 1, then resume", c)
    assert c["problems"] == [] and c["interrupted"] == 1 and c["lost"] == 0 and c["duplicated"] == 0


@pytest.mark.slow
def test_sigterm_finishes_the_bookkeeping_and_requeues_the_trial(tmp_path):
    run = tmp_path / "t"
    args = ["search", *TINY, "trials=3", f"out={run}", "name=t"]
    stopped = _driver(tmp_path, "term_in_trial", "1", *args)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "trial-0001 interrupted; re-queued" in stopped.stdout and "Traceback" not in stopped.stderr
    pointer = json.loads((run / "tracking.json").read_text())
    parent = MlflowClient(pointer["uri"]).get_run(pointer["parent_run_id"])
    assert parent.info.status == "KILLED"
    assert _driver(tmp_path, "trials", "ok", *args).returncode == 0
    c = _consistency(run, 3)
    _row("SIGTERM of the driver during trial 1, then resume", c)
    assert c["problems"] == [] and c["interrupted"] == 1 and c["lost"] == 0 and c["duplicated"] == 0


@pytest.mark.slow
def test_failing_and_hung_trials_are_trial_failures(tmp_path):
    run = tmp_path / "f"
    out = _driver(tmp_path, "trials", "exit,raise,nan,hang,ok", "search", *TINY, "trials=5", f"out={run}", "name=f",
                  "search.trial_timeout_s=20")
    assert out.returncode == 0, out.stdout + out.stderr
    study = load_folder_study(run)
    reasons = [t.user_attrs.get("fail_reason", "").splitlines()[-1:] for t in study.trials]
    assert "SystemExit: 3" in reasons[0][0] and "injected failure" in reasons[1][0]
    assert "objective(s) digits-native are not finite" in reasons[2][0] and "search.trial_timeout_s=20" in reasons[3][0]
    assert [t.state.name for t in study.trials] == ["FAIL"] * 4 + ["COMPLETE"]
    c = _consistency(run, 5)
    _row("SystemExit, exception, NaN objective, hang past trial_timeout_s=20 in trials 0-3", c)
    assert c["problems"] == []
    client = MlflowClient(json.loads((run / "tracking.json").read_text())["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ebtune/dit-tiny").experiment_id], "tags.`ebtune.trial` = '3'")
    assert "trial_timeout_s" in runs[0].data.tags["error"]


@pytest.mark.slow
def test_consecutive_failures_stop_the_search_with_a_summary(tmp_path):
    run = tmp_path / "c"
    out = _driver(tmp_path, "trials", "raise,raise,raise", "search", *TINY, "trials=5", f"out={run}", "name=c",
                  "search.max_consecutive_failures=2")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "search stopped: 2 trials failed in a row" in out.stdout and "verdict (0 distinguishable front point(s)" in out.stdout
    study = load_folder_study(run)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]


@pytest.mark.slow
def test_mlflow_unreachable_from_the_start_then_sync(tmp_path):
    run = tmp_path / "m"
    started = time.monotonic()
    out = _driver(tmp_path, "trials", "ok", "search", *TINY, "trials=2", f"out={run}", "name=m",
                  "tracking.uri=http://127.0.0.1:1")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum("MLflow at http://127.0.0.1:1 is unreachable" in line for line in lines) == 1
    assert "Traceback" not in out.stdout and f"run `ebtune sync {run}`" in out.stdout
    assert len(json.loads((run / "pareto.json").read_text())["points"]) >= 1
    took = time.monotonic() - started
    store = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    synced = _driver(tmp_path, "trials", "ok", "sync", str(run), f"tracking.uri={store}")
    assert synced.returncode == 0 and "synced 2 trials" in synced.stdout, synced.stdout + synced.stderr
    again = _driver(tmp_path, "trials", "ok", "sync", str(run), f"tracking.uri={store}")
    assert again.returncode == 0
    (run / "tracking.json").write_text(json.dumps({"uri": store}))  # where _consistency looks
    c = _consistency(run, 2)
    # The parent run stays RUNNING after a sync (no session finished it there); everything else must agree.
    c["problems"] = [p for p in c["problems"] if not p.startswith("parents ['RUNNING']")]
    _row(f"MLflow unreachable from the start (search took {took:.0f}s), then `ebtune sync` twice", c)
    assert c["problems"] == []


@pytest.mark.slow
def test_two_sessions_share_the_budget(tmp_path):
    run = tmp_path / "two"
    args = ["search", *TINY, "trials=6", f"out={run}", "name=two"]
    procs = [_driver(tmp_path, "trials", "ok", *args, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-4000:] for o in outs)
    # The two sessions write MLflow one at a time: neither takes the other's write for an outage.
    assert not any("unreachable" in o for o in outs), "\n---\n".join(outs)
    c = _consistency(run, 6)
    study = load_folder_study(run)
    sessions = {t.user_attrs["ebtune.session"] for t in study.trials}
    _row(f"two sessions started at once on one search (trials=6; trials run by {len(sessions)} sessions)", c)
    assert c["problems"] == [] and len(study.trials) == 6


@pytest.mark.slow
def test_same_name_in_another_folder_leaves_the_first_search_alone(tmp_path):
    first, second = tmp_path / "a" / "same", tmp_path / "b" / "same"
    assert _driver(tmp_path, "trials", "ok", "search", *TINY, "trials=2", f"out={first}", "name=same").returncode == 0
    before = _consistency(first, 2)
    assert _driver(tmp_path, "trials", "raise,raise", "search", *TINY, "trials=2", f"out={second}",
                   "name=same").returncode == 0
    after = _consistency(first, 2)
    c2 = _consistency(second, 2)
    _row("same name=, another out= (second search's trials all fail)", {**after, "problems": after["problems"] + c2["problems"]})
    assert after == before and after["problems"] == [] and c2["problems"] == []
