"""`ebtune export`, `ebtune schedules list` and `ebtune sample schedule_file=` on a search folder."""
from __future__ import annotations

import json

import pytest

from ebtune.cli import main
from ebtune.io.schedule_file import load_schedule_file, save_schedule_file
from ebtune.schedules import ScheduleContext, fora, intervals
from ebtune.search.records import set_views_source, store_result
from ebtune.search.study import open_study

DEPTH = 6  # dit-tiny


@pytest.fixture
def search_folder(tmp_path):
    """A search folder as `ebtune search` wrote it before metrics had names of their own (its quality
    under "fid", no `quality` in what it says about itself), with three Pareto points: still read."""
    folder = tmp_path / "run"
    ctx = ScheduleContext.linear(50, DEPTH)
    settings = {"objectives": ["fid", "macs"], "constraints": [], "metric": {"margin": 0.0}}
    study, _ = open_study(folder, None, "run", ["fid", "macs"], settings, {"sampler": "random", "seed": 0}, False)
    set_views_source(study, {"uri": "sqlite:///unused.db", "experiment": "e"}, {"config": {}, "space": {}, "info": {}},
                     {"model": "dit-tiny", "steps": 50, "sampler": {"name": "ddpm"}})
    for number, (schedule, fid, speedup) in enumerate([
        (fora(ctx, 2), 3.0, 1.9), (intervals(ctx, attn=2, mlp=1, warmup=10), 2.2, 1.2), (fora(ctx, 3), 4.5, 2.7),
    ]):
        rel = f"schedules/trial-{number:04d}.json"
        save_schedule_file(folder / rel, schedule, model={"family": "dit", "name": "dit-tiny", "depth": DEPTH},
                           sampler={"name": "ddpm", "steps": 50}, eps_scale={"name": "none"},
                           provenance={"metrics": {"fid": fid}})
        metrics = {"fid": fid, "speedup": speedup, "macs": 1e9 / speedup}
        trial = study.ask()
        store_result(trial, metrics, [], rel, [])
        study.tell(trial, [metrics["fid"], metrics["macs"]])
    return folder


@pytest.mark.parametrize("choice,trial", [(["--knee"], 0), (["--quality", "3.5"], 0), (["--quality", "5"], 2),
                                          (["--min-speedup", "1.5"], 0), (["--min-speedup", "1.0"], 1)])
def test_export_picks_the_point(search_folder, tmp_path, choice, trial):
    out = tmp_path / "s.json"
    assert main(["export", str(search_folder), *choice, "--out", str(out)]) == 0
    exported = load_schedule_file(out)
    source = load_schedule_file(search_folder / f"schedules/trial-{trial:04d}.json")
    assert exported.schedule == source.schedule
    assert exported.provenance["exported"]["trial"] == trial and exported.provenance["metrics"] == {"fid": 4.5 if trial == 2 else 3.0 if trial == 0 else 2.2}


def test_export_errors_are_one_line(search_folder, tmp_path, capsys):
    assert main(["export", str(search_folder), "--quality", "1.0", "--out", str(tmp_path / "s.json")]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    assert main(["export", "0123456789abcdef", f"tracking.uri=sqlite:///{tmp_path}/none.db", "--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no Pareto point has fid <= 1 (best is 2.2)" in err[0]
    assert "no study.db or storage.json in" in err[1] and "there is no MLflow store at" in err[2]
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "none.db").exists()


def test_schedules_list_shows_the_front(search_folder, capsys):
    assert main(["schedules", "list", str(search_folder)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [int(r.split()[0]) for r in rows] == [1, 0, 2]  # sorted by speedup


def test_sample_applies_and_retargets(search_folder, tmp_path, capsys):
    out = tmp_path / "s.json"
    main(["export", str(search_folder), "--min-speedup", "2.5", "--out", str(out)])
    assert main(["sample", f"schedule_file={out}", "steps=25", "n=2", f"out={tmp_path / 'a'}"]) == 0
    printed = capsys.readouterr().out
    assert "retarget: steps 50 -> 25" in printed
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["steps"] == 25 and 2.3 < run["ideal_speedup"] < 3.0  # FORA(3)'s share of reuse is kept


def test_sample_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["sample", f"schedule_file={bad}", "n=1"]) == 2
    assert "is not JSON" in capsys.readouterr().err
