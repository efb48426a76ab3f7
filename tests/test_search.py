"""`ebtune search`: space and config errors, --dry-run, Pareto properties, and a tiny end-to-end local
search on dit-tiny (files, MLflow runs and tags, resume of a finished and of a killed search)."""
from __future__ import annotations

import json
import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ebtune.errors import ConfigError
from ebtune.io.schedule_file import load_schedule_file
from ebtune.schedules import ScheduleContext
from ebtune.search.pareto import (
    Constraint,
    dominates,
    feasible_front,
    knee,
    non_dominated,
)
from ebtune.cli.config import compose
from ebtune.search.baselines import plan
from ebtune.search.evaluator import Evaluator
from ebtune.search.space import load_space, parse_space, space_names

from .conftest import TINY_SEARCH

TINY = [*TINY_SEARCH, "launcher=local"]


def _space_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


# -- spaces and config errors -----------------------------------------------------------------------

def test_shipped_spaces_load_and_build_valid_schedules():
    assert {"ebcache", "intervals", "block-groups"} <= set(space_names())
    ctx = ScheduleContext.linear(50, 6)
    for name in ("ebcache", "intervals", "block-groups"):
        space = load_space(name)
        space.check(ctx)
        study = optuna.create_study()
        for _ in range(5):
            params = space.suggest(study.ask())
            schedule = space.to_schedule(params, ctx)
            assert schedule.steps == 50 and schedule.depth == 6
            assert space.eps_form(params)["name"] == space.eps_scale
        assert space.seeds
        for seed in space.seeds:  # seeds are full points here, so they build as they are
            space.to_schedule(seed, ctx)


def test_ebcache_seeds_include_fora3_with_the_papers_correction():
    from ebtune.schedules import fora

    ctx = ScheduleContext.linear(50, 6)
    space = load_space("ebcache")
    masks = [(s.attn, s.mlp) for s in (space.to_schedule(seed, ctx) for seed in space.seeds)]
    assert (fora(ctx, 3).attn, fora(ctx, 3).mlp) in masks


def test_ebcache_space_maps_onto_intervals_and_ebcache_scale():
    space = load_space("ebcache")
    assert (space.schedule, space.eps_scale) == ("intervals", "ebcache")
    names = {p.name for p in space.params}
    assert {"warmup", "cooldown", "boundary", "attn", "mlp", "attn_late", "mlp_late", "max_reuse",
            "eps_scale.b_h", "eps_scale.b_l"} <= names
    b_h = next(p for p in space.params if p.name == "eps_scale.b_h")
    assert b_h.low < 1 < b_h.high  # the published corrections disagree in sign


def test_block_groups_space_gives_per_group_lists():
    space = load_space("block-groups")
    params = space.suggest(optuna.create_study().ask())
    sched, _ = space.split(params)
    assert len(sched["attn"]) == len(sched["mlp"]) == 4


@pytest.mark.parametrize("text, message", [
    ("schedule: intervals\nparams:\n  attn: {type: int, low: 4, high: 1}\n", "empty range"),
    ("schedule: intervals\nparams:\n  atn: {type: int, low: 1, high: 3}\n", "unknown parameter 'atn'"),
    ("schedule: intervals\neps_scale: constant\nparams:\n  eps_scale.k: {type: float, low: 0.9, high: 1.1}\n",
     "unknown parameter 'eps_scale.k'"),
    ("schedule: intervals\nparams:\n  attn: {type: integer, low: 1, high: 3}\n", "has type 'integer'"),
    ("schedule: nope\nparams:\n  attn: {type: int, low: 1, high: 3}\n", "unknown schedule family"),
    ("schedule: intervals\nparams:\n  mode: {type: categorical, choices: []}\n", "non-empty list of choices"),
    ("schedule: intervals\nparams:\n  attn: {type: int, low: 1, high: 3}\nseeds:\n  - {attn: 5}\n", "seed 0 sets attn=5 outside its range"),
    ("schedule: intervals\nparams:\n  attn: {type: int, low: 1, high: 3}\nseeds:\n  - {mlp: 2}\n", "seed 0 sets 'mlp', which is not searched"),
])
def test_invalid_space_files_exit_2_with_the_problem(ebtune, tmp_path, capsys, text, message):
    assert ebtune("search", "--dry-run", f"space={_space_file(tmp_path, text)}") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_space_exits_2_listing_the_spaces(ebtune, capsys):
    assert ebtune("search", "space=no-such-space") == 2
    err = capsys.readouterr().err
    assert "unknown space 'no-such-space'" in err and "ebcache" in err and "block-groups" in err


def test_space_that_cannot_fit_the_step_count_fails_before_any_trial(ebtune, tmp_path, capsys):
    assert ebtune("search", "space=ebcache", "steps=10", "trials=1") == 2
    assert "cannot produce a valid schedule for steps=10" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override, message", [
    ("launcher=slurm", "unknown launcher 'slurm'"),
    ("search.objectives=[quality,bogus]", "unknown metric 'bogus'"),
    ("search.objectives=[quality]", "at least two different metrics"),
    ("search.constraints=['quality < 3']", "cannot parse constraint"),
    # "fid" is the Fréchet Inception Distance: dit-tiny's searches are scored by digits-native.
    ("search.objectives=[fid,macs]", "'fid' is not measured by this search: its quality metric is 'digits-native'"),
    ("search.constraints=['fid <= nocache + 0.5']", "write 'quality' or 'digits-native' instead"),
    ("metric.n_samples=1", "metric.n_samples"),
    ("trials=0", "trials must be at least 1"),
])
def test_config_errors_exit_2(ebtune, capsys, override, message):
    assert ebtune("search", "--dry-run", *TINY, override) == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_config_and_space(ebtune, tmp_path, capsys):
    assert ebtune("search", "--dry-run", "model=dit-tiny", "space=intervals", "trials=7", "name=dry") == 0
    out = capsys.readouterr().out
    assert "n_trials: 7" in out and "search_name: dry" in out and "eps_scale.value" in out
    assert "objectives:\n  - digits-native\n  - macs" in out
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(SystemExit) as removed:  # the old spelling of name= had its release
        ebtune("search", "--dry-run", "model=dit-tiny", "space=intervals", "--name", "dry")
    assert removed.value.code == 2 and "unrecognized arguments: --name" in capsys.readouterr().err


def test_space_parse_rejects_searched_and_fixed_at_once():
    doc = {"schedule": "intervals", "params": {"attn": {"type": "int", "low": 1, "high": 2}}, "fixed": {"attn": 2}}
    with pytest.raises(ConfigError, match="both searched and fixed"):
        parse_space(doc, "x")


# -- Pareto ---------------------------------------------------------------------------------------

def test_front_is_non_dominated_and_dominates_the_rest():
    rng = random.Random(0)
    objectives = ["fid", "speedup"]  # minimise and maximise
    for _ in range(20):
        points = [{"fid": rng.uniform(0, 10), "speedup": rng.choice([1.0, 1.5, 2.0, rng.uniform(1, 3)])}
                  for _ in range(rng.randint(1, 40))]
        front = non_dominated(points, objectives)
        assert front
        for i in front:
            assert not any(dominates(p, points[i], objectives) for p in points)
        for j in set(range(len(points))) - set(front):
            assert any(dominates(points[i], points[j], objectives) for i in front)
        assert knee([points[i] for i in front], objectives) in range(len(front))


def test_dominance_follows_each_metric_direction():
    assert dominates({"fid": 1, "speedup": 2}, {"fid": 2, "speedup": 1}, ["fid", "speedup"])
    assert not dominates({"fid": 1, "speedup": 1}, {"fid": 1, "speedup": 1}, ["fid", "speedup"])
    assert not dominates({"fid": 1, "speedup": 1}, {"fid": 2, "speedup": 2}, ["fid", "speedup"])


def test_knee_picks_the_balanced_point():
    points = [{"fid": 0.0, "macs": 10.0}, {"fid": 1.0, "macs": 1.0}, {"fid": 10.0, "macs": 0.0}]
    assert knee(points, ["fid", "macs"]) == 1


def test_constraints_relative_to_a_baseline_filter_the_front():
    c = Constraint.parse("fid <= nocache + 0.5")
    assert (c.metric, c.op, c.value, c.baseline) == ("fid", "<=", 0.5, "nocache")
    baselines = {"nocache": {"fid": 10.0}}
    assert c.violation({"fid": 10.4}, baselines) < 0 < c.violation({"fid": 10.6}, baselines)
    assert Constraint.parse("speedup >= 1.5").violation({"speedup": 1.2}, {}) == pytest.approx(0.3)
    points = [{"fid": 9.0, "macs": 5.0}, {"fid": 11.0, "macs": 1.0}, {"fid": 10.2, "macs": 3.0}]
    assert feasible_front(points, ["fid", "macs"], [c], baselines) == [0, 2]


# -- end to end -----------------------------------------------------------------------------------

def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ebtune/dit-tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_tiny_local_search_end_to_end_then_resume(ebtune, tmp_path, capsys):
    run = tmp_path / "run"
    assert ebtune("search", *TINY, "trials=3", f"out={run}", "name=tiny") == 0
    out = capsys.readouterr().out.strip().splitlines()
    end = out.index("next:")  # the summary's last lines, then the next commands with this folder filled in
    assert out[end - 2] == f"search folder: {run}" and out[end - 1].startswith("MLflow: sqlite:///")
    assert any(line.split()[:3] == ["ebtune", "export", str(run)] for line in out[end:])
    assert any(line.startswith("[  3/3 front") for line in out)
    for name in ("study.db", "pareto.json", "tracking.json"):
        assert (run / name).is_file()

    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["model"] == "dit-tiny" and pareto["steps"] == 10 and pareto["objectives"] == ["digits-native", "macs"]
    names = [b["name"] for b in pareto["baselines"]]
    assert names[0] == "nocache" and {"fora2", "fora3", "ebcache-table"} <= set(names)
    assert any(n.startswith("ddpm-") for n in names)
    macs = [b["metrics"]["macs"] for b in pareto["baselines"][1:]]
    assert macs == sorted(macs)  # after no cache, cheapest first: successive halving needs the cheaper ones known
    # After the trials, exactly the planned baselines that cost no more than the front's costliest point
    # (stopped ones included): a costlier one could judge nothing the search claims.
    planned = plan(Evaluator(compose(TINY, config_name="search"), "cpu"), load_space("intervals"))
    costliest = max(p["metrics"]["macs"] for p in pareto["points"])
    recorded = [b["name"] for b in optuna.load_study(study_name="tiny", storage=f"sqlite:///{run / 'study.db'}")
                .user_attrs["baselines"]]
    assert recorded == ["nocache"] + [p.base.name for p in planned[1:] if p.macs <= costliest]
    assert any(p.macs > costliest for p in planned), "every baseline is cheaper than the front: the test proves nothing"
    assert pareto["points"]
    for point in pareto["points"]:
        assert {"number", "params", "metrics", "schedule_file", "mlflow_run_id"} <= set(point)
        assert {"digits-native", "macs", "speedup", "latency_s", "latency_speedup", "distance", "accuracy"} <= set(point["metrics"])
        file = load_schedule_file(run / point["schedule_file"])
        assert file.provenance["mlflow_run_id"] == point["mlflow_run_id"]
        assert file.provenance["metrics"]["evaluator"] == "digits-native" and file.provenance["metrics"]["n_samples"] == 20
        assert file.search_params == point["params"] and file.schedule.steps == 10
    schedules = sorted(p.name for p in (run / "schedules").iterdir())
    assert {"trial-0000.json", "trial-0001.json", "trial-0002.json", "baseline-nocache.json"} <= set(schedules)
    nocache = next(b for b in pareto["baselines"] if b["name"] == "nocache")["metrics"]
    assert nocache["distance"] == 0.0 and nocache["speedup"] == 1.0

    pointer = json.loads((run / "tracking.json").read_text())
    assert pointer["uri"] == f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').as_posix()}"
    parents, children = _runs(pointer["uri"])
    assert [p.info.run_id for p in parents] == [pointer["parent_run_id"]]
    assert len(children) == 3 and all(c.data.tags["mlflow.parentRunId"] == pointer["parent_run_id"] for c in children)
    tagged = {int(c.data.tags["ebtune.trial"]) for c in children if c.data.tags["pareto_optimal"] == "true"}
    assert tagged == {p["number"] for p in pareto["points"]}
    assert "baseline.fora2.digits-native" in parents[0].data.metrics

    # Export by MLflow run id: a trial's run gives that trial, the search's run its knee.
    child = next(c for c in children if c.data.tags["ebtune.trial"] == "1")
    assert ebtune("export", child.info.run_id, "--out", str(tmp_path / "t1.json")) == 0
    assert load_schedule_file(tmp_path / "t1.json").schedule == load_schedule_file(run / "schedules/trial-0001.json").schedule
    assert ebtune("export", pointer["parent_run_id"], "--knee", "--out", str(tmp_path / "k.json")) == 0
    assert load_schedule_file(tmp_path / "k.json").provenance["exported"]["trial"] in tagged

    # Same name and folder: the study continues with two more trials, nothing is duplicated.
    assert ebtune("search", *TINY, "trials=5", f"out={run}", "name=tiny") == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    # Plain Optuna (and optuna-dashboard) sees the objectives by name and each metric as its own attribute.
    assert study.metric_names == ["digits-native", "macs"]
    assert all(t.user_attrs["digits-native"] == t.user_attrs["metrics"]["digits-native"] == t.values[0] for t in study.trials)
    assert all((run / t.user_attrs["schedule_file"]).is_file() for t in study.trials)
    seeds = load_space("intervals").seeds
    assert [t.params for t in study.trials[:len(seeds)]] == [dict(s) for s in seeds]  # seeds go first
    assert "baselines: no cache recorded in the study" in capsys.readouterr().out
    parents, children = _runs(pointer["uri"])
    assert len(parents) == 1 and len(children) == 5

    # Other settings under the same name are refused rather than mixed into the study.
    assert ebtune("search", *TINY, "trials=5", "metric.n_samples=30", f"out={run}", "name=tiny") == 2
    assert "other settings (metric)" in capsys.readouterr().err


def test_killed_search_retries_the_interrupted_trial(ebtune, tmp_path, capsys):
    run = tmp_path / "run"
    assert ebtune("search", *TINY, "trials=1", f"out={run}", "name=k") == 0
    # A session killed mid-trial leaves that trial RUNNING in the study, tagged with its (now dead) process.
    storage = f"sqlite:///{run / 'study.db'}"
    study = optuna.load_study(study_name="k", storage=storage)
    trial = study.ask()
    params = load_space("intervals").suggest(trial)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("ebtune.session", f"{socket.gethostname()}:{gone.stdout.strip()}:?")
    assert ebtune("search", *TINY, "trials=3", f"out={run}", "name=k") == 0
    out = capsys.readouterr().out
    assert "re-queued 1 trial(s) a dead session left running: 1" in out
    trials = optuna.load_study(study_name="k", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == params and trials[2].system_attrs["failed_trial"] == 1  # same point, run again
    assert "fail_reason" not in trials[1].user_attrs  # interrupted, not failed: it does not count
    with sqlite3.connect(run / "study.db") as db:
        assert db.execute("select count(*) from studies").fetchone() == (1,)
    _, children = _runs(json.loads((run / "tracking.json").read_text())["uri"])
    by_number = {int(c.data.tags["ebtune.trial"]): c for c in children}
    assert by_number[1].info.status == "FAILED" and "interrupted" in by_number[1].data.tags["error"]
    assert {n: by_number[n].info.status for n in (0, 2, 3)} == {0: "FINISHED", 2: "FINISHED", 3: "FINISHED"}


def test_failing_trials_are_recorded_and_the_search_goes_on(ebtune, tmp_path, capsys):
    # ε scaled up by 1e20 or more: the samples overflow, every trial fails with its error.
    space = _space_file(tmp_path, "schedule: intervals\neps_scale: constant\nparams:\n"
                                  "  attn: {type: int, low: 1, high: 2}\n"
                                  "  eps_scale.value: {type: float, low: 1.0e+20, high: 1.0e+30, log: true}\n")
    run = tmp_path / "run"
    assert ebtune("search", *TINY, f"space={space}", "trials=2", f"out={run}", "name=bad") == 0
    out = capsys.readouterr().out
    assert out.count(" FAILED: ") == 2 and "TrialError" in out
    assert json.loads((run / "pareto.json").read_text())["points"] == []
    _, children = _runs(json.loads((run / "tracking.json").read_text())["uri"])
    assert {c.info.status for c in children} == {"FAILED"} and all("TrialError" in c.data.tags["error"] for c in children)


def test_run_search_is_the_pipeline_the_command_runs_and_its_result_is_the_study(tmp_path, monkeypatch):
    from ebtune.cli.config import compose
    from ebtune.search import SearchConfig, run_search
    from ebtune.search.records import SearchRecord
    from ebtune.search.study import load_folder_study

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "py"
    tiny = [o for o in TINY if not o.startswith("search.baseline_samplers=")]
    cfg = compose([*tiny, "trials=2", "name=py", f"out={folder}", "search.baseline_samplers=[ddim]"],
                  config_name="search")
    lines: list[str] = []
    result = run_search(SearchConfig.from_mapping(cfg), log=lines.append)
    assert (result.exit_code, result.status, result.folder) == (0, "FINISHED", folder)
    record = SearchRecord(load_folder_study(folder))
    assert [p["number"] for p in result.front] == [p["number"] for p in record.front(record.objectives, record.constraints)]
    names = [b["name"] for b in result.baselines]
    # Each baseline sampler runs uncached at 10 / (1.5, 2, 3, 4, 6, 8) steps (those the front reaches are sampled).
    planned = [p.base.name for p in plan(Evaluator(cfg, "cpu"), load_space("intervals"))]
    assert [n for n in planned if n.startswith("ddim-") and "+" not in n] == [f"ddim-{k}" for k in (1, 2, 3, 5, 7)]
    assert [n for n in planned if n.startswith("ddpm-") and "+" not in n] == [f"ddpm-{k}" for k in (1, 2, 3, 5, 7)]
    assert names == [n for n in planned if n in names] and "ddim-5" in names
    assert load_schedule_file(folder / "schedules/baseline-ddim-5.json").sampler["name"] == "ddim"
    evaluated = [b["metrics"] for b in record.baselines] + [t["metrics"] for t in record.trials()]
    assert result.cost_macs == pytest.approx(sum(m["images"] * m["macs"] for m in evaluated)) and result.reused_macs == 0
    pareto = json.loads((folder / "pareto.json").read_text())
    assert [p["number"] for p in pareto["points"]] == [p["number"] for p in result.front]
    assert f"sampling cost: {result.cost_macs / 1e12:.4g} TMACs" in "\n".join(lines)

    # Another search of the same model, sampler, steps, seeds and n takes every baseline from the store,
    # identical to the first search's, and so does its confirmation's no cache; one with other images
    # evaluates its own.
    again = compose([*tiny, "trials=1", "name=again", f"out={tmp_path / 'again'}", "search.baseline_samplers=[ddim]",
                     "search.confirm_n=20"], config_name="search")
    second = run_search(SearchConfig.from_mapping(again), log=lines.append)
    again_record = SearchRecord(load_folder_study(tmp_path / "again"))
    first = {b["name"]: b for b in record.baselines}
    assert {b["name"] for b in again_record.baselines} <= set(first) and all(b["reused"] for b in again_record.baselines)
    assert [b["quality_draws"] for b in again_record.baselines if "quality_draws" in b] == [
        first[b["name"]]["quality_draws"] for b in again_record.baselines if "quality_draws" in b]
    confirmed = again_record.confirmation
    reused = [b["metrics"] for b in again_record.baselines]
    assert confirmed["reused"] == [] and second.reused_macs == pytest.approx(sum(m["images"] * m["macs"] for m in reused))
    third_cfg = compose([*tiny, "trials=1", "name=again2", f"out={tmp_path / 'again2'}", "search.baseline_samplers=[ddim]",
                         "search.confirm_n=20"], config_name="search")
    third_result = run_search(SearchConfig.from_mapping(third_cfg), log=lines.append)
    third_confirmed = SearchRecord(load_folder_study(tmp_path / "again2")).confirmation
    assert "nocache" in third_confirmed["reused"] and set(third_confirmed["reused"]) <= set(confirmed["baselines"])
    assert third_confirmed["baselines"]["nocache"] == confirmed["baselines"]["nocache"]
    assert third_result.cost_macs == pytest.approx(second.cost_macs - sum(
        confirmed["baselines"][n]["images"] * confirmed["baselines"][n]["macs"] for n in third_confirmed["reused"]))
    other = compose([*tiny, "trials=1", "name=other", f"out={tmp_path / 'other'}", "search.baseline_samplers=[ddim]",
                     "seed=1"], config_name="search")
    third = run_search(SearchConfig.from_mapping(other), log=lines.append)
    assert third.reused_macs == 0 and not any(b["reused"] for b in SearchRecord(load_folder_study(tmp_path / "other")).baselines)
