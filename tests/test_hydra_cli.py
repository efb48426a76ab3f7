"""The Hydra idioms a Hydra user types: --cfg, --info, a user config directory, -m, hydra.* keys, .hydra/."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import ebtune.search.pipeline as pipeline
from ebtune.cli.config import CONF_DIR, sweep_jobs
from ebtune.errors import ConfigError
from ebtune.search.space import SPACES_DIR


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A user config directory with one model, one schedule preset and one search space of its own."""
    conf = tmp_path / "my-conf"
    (conf / "model").mkdir(parents=True)
    model = yaml.safe_load((CONF_DIR / "model" / "dit-tiny.yaml").read_text())
    (conf / "model" / "my-dit.yaml").write_text(yaml.safe_dump({**model, "cfg_scale": 2.5}))
    (conf / "schedule").mkdir()
    (conf / "schedule" / "fora4.yaml").write_text("name: fora\ninterval: 4\n")
    (conf / "search_spaces").mkdir()
    shutil.copy(SPACES_DIR / "intervals.yaml", conf / "search_spaces" / "my-space.yaml")
    return conf


@pytest.fixture
def searches(monkeypatch):
    """Replace the search itself: record each plan and what its folder holds when the search starts."""
    seen = []

    def fake_search(config):
        seen.append((config, sorted(p.name for p in (config.folder / ".hydra").iterdir())))
        return SimpleNamespace(exit_code=0)

    monkeypatch.setattr(pipeline, "run_search", fake_search)
    return seen


def _written(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("torch", "my-conf"))


def test_cfg_job_prints_the_composed_config_and_runs_nothing(ebtune, tmp_path, capsys):
    assert ebtune("search", "--cfg", "job", "steps=20", "trials=3") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["steps"], cfg["trials"], cfg["search"]["n_trials"], cfg["model"]["name"]) == (20, 3, 3, "dit-tiny")
    assert _written(tmp_path) == []


def test_cfg_hydra_and_all(ebtune, capsys):
    assert ebtune("search", "--cfg", "hydra") == 0
    assert "sweep" in yaml.safe_load(capsys.readouterr().out)["hydra"]
    assert ebtune("search", "--cfg", "all", "seed=3") == 0
    out = capsys.readouterr().out
    assert "hydra:" in out and "seed: 3" in out


def test_info_lists_the_search_path_groups_and_defaults(ebtune, user_conf, capsys):
    assert ebtune("search", "--info", "--config-dir", str(user_conf)) == 0
    out = capsys.readouterr().out
    assert f"file://{user_conf} (user)" in out
    assert "model: dit-b" in out and "my-dit" in out and "fora4" in out
    # A registry entry's settings and what it does come from its factory (there is no conf/schedule/fora.yaml).
    assert "schedule=fora: interval=2; " in out and "eps_scale=linear: k=0.0 b=1.005; " in out
    assert "launcher=ray: " in out and "`ray:`" in out


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_user_config_directory_adds_models_schedules_and_spaces(ebtune, user_conf, capsys, how):
    where = ["--config-dir", str(user_conf)] if how == "--config-dir" else [f"hydra.searchpath=[file://{user_conf}]"]
    assert ebtune("search", *where, "model=my-dit", "space=my-space", "steps=10", "--dry-run") == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("dry run:")[0])
    assert shown["config"]["model"]["cfg_scale"] == 2.5 and shown["space"]["name"] == "my-space"
    assert ebtune("sample", *where, "schedule=fora4", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out)["schedule"] == {"name": "fora", "interval": 4}


def test_without_the_directory_the_user_model_is_unknown(ebtune, capsys):
    assert ebtune("search", "model=my-dit", "--cfg", "job") == 2
    assert "unknown model 'my-dit'" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("steps=abc", "steps='abc' must be a number"),
    ("metric.n_samples=1.5", "metric.n_samples=1.5 must be a whole number"),
    ("ray.cpus_per_trial=abc", "ray.cpus_per_trial='abc' must be a number"),
    ("search.sampler=cmaes", "unknown search.sampler 'cmaes'; choose one of: "),
    ("search.constraints=fid", "search.constraints='fid' must be a list"),
    ("trials=1.5", "trials=1.5 must be a whole number"),
    ("metric.gap_prune=maybe", "metric.gap_prune='maybe' must be true or false"),
    ("search.bogus=1", "search.bogus is not a setting; search has: sampler, n_trials, "),
    ("+ray.bogus=1", "ray.bogus is not a setting; ray has: address, num_cpus, "),
    ("schedule.interval=2", "schedule.interval is not a setting; schedule has: name"),
    ("hydra.verbose=true", "hydra.verbose is not used by ebtune"),
    ("hydra.searchpath=[/nowhere]", "needs a scheme; write file:///nowhere"),
])
def test_bad_values_name_their_key_before_anything_is_written(ebtune, tmp_path, capsys, override, message):
    assert ebtune("search", override, "--dry-run") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert ebtune("search", override) == 2  # a real run fails the same way, before any file
    assert _written(tmp_path) == []


def test_hydra_run_dir_and_job_name_are_the_search_folder_and_name(ebtune, tmp_path, searches):
    assert ebtune("search", "hydra.run.dir=runs/a", "hydra.job.name=first", "space=intervals") == 0
    plan, hydra_files = searches[0]
    assert plan.folder == tmp_path / "runs" / "a" and plan.name == "first"
    assert hydra_files == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    saved = plan.folder / ".hydra"
    assert yaml.safe_load((saved / "overrides.yaml").read_text()) == ["hydra.run.dir=runs/a", "hydra.job.name=first", "space=intervals"]
    assert yaml.safe_load((saved / "config.yaml").read_text())["space"] == "intervals"
    assert "run" in yaml.safe_load((saved / "hydra.yaml").read_text())["hydra"]


def test_hydra_alias_and_its_setting_conflict(ebtune, capsys):
    assert ebtune("search", "hydra.job.name=a", "name=b", "--dry-run") == 2
    assert "give only name=" in capsys.readouterr().err
    assert ebtune("sample", "hydra.job.name=a", "--cfg", "job") == 2
    assert "hydra.job.name= stands for name=, which this command does not have" in capsys.readouterr().err
    assert ebtune("sample", "hydra.run.dir=there", "--cfg", "job") == 0
    assert yaml.safe_load(capsys.readouterr().out)["out"] == "there"


def test_multirun_plans_every_job_then_searches_each_in_its_own_folder(ebtune, tmp_path, searches, capsys):
    assert ebtune("search", "-m", "trials=1,2", "search.sampler=tpe,random", "name=sw",
                  "hydra.sweep.dir=sweep", "space=intervals") == 0
    assert len(searches) == 4
    folders = [p.folder for p, _ in searches]
    assert folders == [tmp_path / "sweep" / str(k) for k in range(4)]
    assert [p.name for p, _ in searches] == [f"sw-{k}" for k in range(4)]
    assert {(p.cfg["trials"], p.cfg["search"]["sampler"]) for p, _ in searches} == {
        (1, "tpe"), (1, "random"), (2, "tpe"), (2, "random")}
    assert all(files == ["config.yaml", "hydra.yaml", "overrides.yaml"] for _, files in searches)
    assert "sweep job 4/4" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, jobs", [
    # Hydra's basic sweeper order: a cartesian product, the last key varying fastest.
    (["trials=8,16", "seed=0,1"], [["trials=8", "seed=0"], ["trials=8", "seed=1"], ["trials=16", "seed=0"], ["trials=16", "seed=1"]]),
    (["a=range(1,3)", "b=x", "+c@pkg=y,z"], [["a=1", "b=x", "+c@pkg=y"], ["a=1", "b=x", "+c@pkg=z"],
                                            ["a=2", "b=x", "+c@pkg=y"], ["a=2", "b=x", "+c@pkg=z"]]),
    (["a=1,2", "b=[1,2]", "a=3"], [["a=3", "b=[1,2]"]]),  # a key given twice: first place, last values
    (["name=sw", "c='x,y'"], [["name=sw", "c='x,y'"]]),  # a quoted comma is one value
])
def test_sweep_jobs_are_the_basic_sweepers_product(overrides, jobs):
    assert sweep_jobs(overrides) == jobs


def test_sweep_of_an_interval_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError, match=r"lr=interval\(\.\.\.\) has no list of values.*lr=1,2"):
        sweep_jobs(["lr=interval(0,1)"])


def test_multirun_validates_every_job_before_running_one(ebtune, searches, capsys):
    assert ebtune("search", "-m", "steps=10,abc", "space=intervals") == 2
    assert searches == [] and "steps='abc'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["search", "-m", "steps=10"], "-m found nothing to sweep"),
    (["search", "-m", "trials=1,2", "out=here"], "drop out="),
    (["sample", "-m", "n=1,2"], "ebtune sample does not sweep (-m)"),
    (["diagnose", "-m", "n=1,2"], "ebtune diagnose does not sweep (-m)"),
])
def test_multirun_where_it_makes_no_sense_is_one_line(ebtune, tmp_path, capsys, argv, message):
    assert ebtune(*argv) == 2
    assert message in capsys.readouterr().err
    assert _written(tmp_path) == []


@pytest.mark.parametrize("argv", [["train-default", "--out", "x"], ["train-default", "--steps", "3"], ["train-default", "--seed", "1"]])
def test_removed_flag_spellings_are_unknown_arguments(ebtune, tmp_path, capsys, argv):
    """train-default's settings are out=, steps=, seed=; the flags had their release (so did search --name,
    sample --schedule and confirm --n, checked in their own tests)."""
    with pytest.raises(SystemExit) as removed:
        ebtune(*argv)
    assert removed.value.code == 2 and f"unrecognized arguments: {argv[1]}" in capsys.readouterr().err
    assert _written(tmp_path) == []
