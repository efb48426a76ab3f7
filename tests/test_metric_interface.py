"""The `Metric` interface: a metric is searched under its own name and direction, end to end.

A metric written here (higher is better, no reference statistics) is registered the way a new one
is (one `METRICS.register` line) and searched through `run_search`; "fid" names the Fréchet
Inception Distance only; `quality` stands for the search's metric; files and studies written before
metrics had names of their own (their quality under "fid") stay readable, and resuming such a study
is refused with one line.
"""
from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
import torch

from ebtune.cli import main
from ebtune.cli.config import compose
from ebtune.errors import ConfigError
from ebtune.metrics.base import MAXIMIZE, Metric, bootstrap_draws, check_images
from ebtune.metrics.registry import METRICS, quality_name
from ebtune.search import SearchConfig, run_search
from ebtune.search.evaluator import Evaluator
from ebtune.search.inference import BETTER, WORSE, Scored
from ebtune.search.pareto import Constraint, direction, feasible_front, non_dominated, objective_names, relation
from ebtune.search.pipeline import open_session
from ebtune.search.records import SETTINGS, SearchRecord
from ebtune.search.study import load_folder_study
from ebtune.search.verdict import verdict

from .conftest import TINY_SEARCH


class Contrast(Metric):
    """Mean per-image pixel spread in [0, 1]: higher is better (a blank image scores 0)."""

    name = "contrast"
    direction = MAXIMIZE

    def score_draws(self, images: np.ndarray, bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
        x = check_images(images).astype(np.float64) / 255.0
        spread = torch.from_numpy(x.reshape(len(x), -1).std(axis=1))
        return bootstrap_draws(len(spread), bootstrap, seed, lambda idx: float(spread[idx].mean()))


@pytest.fixture
def contrast(monkeypatch):
    """`Contrast` registered as `model.fid=contrast` for this test: a new metric's one registry line."""
    monkeypatch.setitem(METRICS._factories, "contrast", Contrast)
    return "contrast"


def test_quality_names_its_metric_and_fid_is_the_inception_distance_only(contrast):
    assert {name: quality_name(name) for name in ("inception", "digits", "digits-native", contrast)} == {
        "inception": "fid", "digits": "digits-fd", "digits-native": "digits-native", "contrast": "contrast"}
    assert objective_names("auto", "cpu", "digits-native") == ["digits-native", "macs"]
    assert objective_names("auto", "cuda", "contrast") == ["contrast", "latency_s"]
    assert objective_names(["quality", "speedup"], "cpu", "contrast") == ["contrast", "speedup"]
    assert (direction("contrast"), direction("fid"), direction("digits-native")) == ("maximize", "minimize", "minimize")
    c = Constraint.parse("quality >= nocache - 0.01", "contrast")
    assert (c.metric, c.op, c.value, c.baseline) == ("contrast", ">=", -0.01, "nocache")
    with pytest.raises(ConfigError, match="'fid' is not measured by this search: its quality metric is 'contrast'"):
        objective_names(["fid", "macs"], "cpu", "contrast")
    with pytest.raises(ConfigError, match="write 'quality' or 'digits-native' instead"):
        Constraint.parse("digits-fd <= nocache + 0.5", "digits-native")
    assert Constraint.parse("fid <= nocache + 0.5").metric == "fid"  # as a study stored it: read back as is


def _point(value: float, macs: float, draws: np.ndarray, name: str = "", schedule: str = "cached") -> Scored:
    metrics = {"contrast": value, "contrast_std": float(np.std(draws, ddof=1)), "macs": macs, "speedup": 100.0 / macs,
               "images": 64.0}
    return Scored(metrics, {"contrast": tuple(draws)}, name, {"schedule": schedule})


def test_a_maximised_metric_orients_dominance_inference_and_the_verdict(contrast):
    rng = np.random.default_rng(0)
    shared = rng.normal(0.5, 0.05, 50)
    high, low = _point(0.6, 50.0, shared + 0.1, "trial 1"), _point(0.4, 50.0, shared - 0.1, "ddim-5", "none")
    objectives = ["contrast", "macs"]
    assert relation(high, low, objectives, margin=0.01) == "dominates"  # higher contrast, same MACs
    assert relation(low, high, objectives, margin=0.01) == "worse"
    assert non_dominated([high.metrics, low.metrics], objectives) == [0]
    assert feasible_front([high, low], objectives, [Constraint.parse("quality >= 0.5", "contrast")]) == [0]
    v = verdict([high], [low, _point(0.7, 100.0, shared + 0.2, "nocache", "none")], objectives, margin=0.01)
    level = v.levels[0]
    assert (level.baseline.name, level.standing) == ("ddim-5", BETTER)
    assert level.difference.value == pytest.approx(0.2)  # point − baseline in the metric's own units
    assert v.lines()[1].startswith("At <= 2.00x: trial 1 (2.00x) beats ddim-5: contrast +0.2")
    assert v.to_dict()["direction"] == "maximize"
    worse = verdict([low], [_point(0.6, 40.0, shared + 0.1, "ddim-4", "none")], objectives, margin=0.01)
    assert worse.levels[0].standing == WORSE and worse.levels[0].difference.value == pytest.approx(-0.2)


def test_a_new_metric_is_searched_under_its_name_and_direction_end_to_end(contrast, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the MLflow store stays in the test's folder
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    folder = tmp_path / "run"
    cfg = compose([*TINY_SEARCH, "model.fid=contrast", "metric.n_proxy=0", "trials=4", "name=c", f"out={folder}",
                   "search.constraints=['quality >= nocache - 0.5']"], config_name="search")
    config = SearchConfig.from_mapping(cfg)
    assert config.objectives == ("contrast", "macs") and str(config.constraints[0]) == "contrast >= nocache - 0.5"
    lines: list[str] = []
    result = run_search(config, log=lines.append)
    assert result.exit_code == 0 and result.front

    pareto = json.loads((folder / "pareto.json").read_text())
    assert (pareto["quality"], pareto["objectives"]) == ("contrast", ["contrast", "macs"])
    assert pareto["directions"] == {"contrast": "maximize", "macs": "minimize"}
    assert pareto["verdict"]["quality"] == "contrast" and pareto["verdict"]["direction"] == "maximize"
    for entry in pareto["points"] + pareto["baselines"]:
        assert {"contrast", "contrast_std"} <= set(entry["metrics"]) and entry["metrics"]["contrast_std"] > 0
    assert "fid" not in json.dumps(pareto)  # no key or word of a non-FID metric
    assert all("fid" not in line for line in lines)

    # Optuna ranks by the metric's direction, and the classic front on pareto's directions is Optuna's own.
    study = load_folder_study(folder)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["contrast", "macs"]
    trials = SearchRecord(study).trials()
    best = {trials[i]["number"] for i in non_dominated([t["metrics"] for t in trials], ["contrast", "macs"])}
    assert best == {t.number for t in study.best_trials}
    assert all(t.user_attrs["contrast"] == t.values[0] for t in study.trials if t.values)
    file = json.loads((folder / pareto["points"][0]["schedule_file"]).read_text())
    assert file["provenance"]["metrics"]["evaluator"] == "contrast" and "contrast" in file["provenance"]["metrics"]

    # export and confirm read the metric and its direction from the study.
    front = pareto["points"]
    assert main(["export", str(folder), "--min-speedup", "0", "--out", str(tmp_path / "best.json")]) == 0
    exported = json.loads((tmp_path / "best.json").read_text())["provenance"]["exported"]["trial"]
    assert exported == max(front, key=lambda p: p["metrics"]["contrast"])["number"]  # highest = best
    bound = min(p["metrics"]["contrast"] for p in front)
    assert main(["export", str(folder), "--quality", f"{bound}", "--out", str(tmp_path / "q.json")]) == 0
    assert main(["confirm", str(folder), "n=20", "seed=0"]) == 0  # same images: the same numbers
    rows = json.loads((folder / "confirmed.json").read_text())["rows"]
    assert all(r["metrics"]["contrast"] == pytest.approx(r["search_metrics"]["contrast"]) for r in rows)


def test_successive_halving_follows_a_maximised_metric(contrast):
    from ebtune.core.schedule import no_cache
    from ebtune.search.evaluator import TrialPruned
    from ebtune.search.halving import ProxyRule

    evaluator = Evaluator(compose([*TINY_SEARCH, "model.fid=contrast", "metric.n_proxy=10"], config_name="search"), "cpu")
    first = evaluator.evaluate(no_cache(10, evaluator.loaded.config.depth), None)
    rung = first.rungs[0]
    known = [({"macs": first.metrics["macs"]}, [{**rung.to_attr(), "draws": [d + 1.0 for d in rung.draws],
                                                  "value": rung.value + 1.0}])]
    # A known point higher by 1.0 on every draw: better for a maximised metric, so the same run stops ...
    with pytest.raises(TrialPruned):
        evaluator.evaluate(no_cache(10, evaluator.loaded.config.depth), None, gate=ProxyRule.over(known, MAXIMIZE))
    # ... and the same point read as lower-is-better is worse, so the run goes on.
    assert evaluator.evaluate(no_cache(10, evaluator.loaded.config.depth), None,
                              gate=ProxyRule.over(known, "minimize")).metrics["images"] == evaluator.n_samples


def _tiny(folder, name: str) -> SearchConfig:
    return SearchConfig.from_mapping(compose([*TINY_SEARCH, "trials=1", f"name={name}", f"out={folder}"],
                                             config_name="search"))


def test_resuming_a_study_the_landed_main_wrote_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    folder, config = tmp_path / "old", _tiny(tmp_path / "old", "old")
    open_session(config, Evaluator(config.cfg, config.device), log=lambda line: None)  # the study a search opens
    # What the landed main stored for the same command: dit-tiny's digits-native objective named "fid".
    study = load_folder_study(folder)
    settings = study.user_attrs[SETTINGS]
    assert settings["objectives"] == ["digits-native", "macs"]
    study.set_user_attr(SETTINGS, {**settings, "objectives": ["fid", "macs"]})
    with pytest.raises(ConfigError) as refused:
        run_search(_tiny(folder, "old"), log=lambda line: None)
    message = str(refused.value)
    assert message == ("search 'old' was started by an ebtune that stored its quality metric as 'fid'; this version "
                       "reports it as 'digits-native' and cannot resume that study: start a new search (another "
                       "name= and out=); the old folder's pareto.json, `ebtune export`, `ebtune confirm` and "
                       "`ebtune sync` still read it")
    assert load_folder_study(folder).user_attrs.get("baselines") is None  # refused before anything ran


def test_resuming_a_study_from_before_a_setting_existed_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    folder, config = tmp_path / "old", _tiny(tmp_path / "old", "old")
    open_session(config, Evaluator(config.cfg, config.device), log=lambda line: None)
    # What the landed main stored: its metric section had no couple_noise (fewer-step runs drew plain noise).
    study = load_folder_study(folder)
    settings = study.user_attrs[SETTINGS]
    study.set_user_attr(SETTINGS, {**settings, "metric": {k: v for k, v in settings["metric"].items() if k != "couple_noise"}})
    with pytest.raises(ConfigError) as refused:
        run_search(_tiny(folder, "old"), log=lambda line: None)
    assert str(refused.value) == ("search 'old' was started by an earlier ebtune, before metric.couple_noise existed, "
                                  "and cannot be resumed: start a new search (another name= and out=); the old "
                                  "folder's pareto.json, `ebtune export`, `ebtune confirm` and `ebtune sync` still read it")
    assert load_folder_study(folder).user_attrs.get("baselines") is None  # refused before anything ran


def test_a_study_written_before_metrics_had_names_is_still_read(tmp_path):
    """The landed main's records: quality under "fid" (here dit-tiny's digits-native), no `quality` in
    pareto_meta. The views, the verdict, export and `schedules list` read them under "fid"."""
    from ebtune.io.schedule_file import save_schedule_file
    from ebtune.schedules import ScheduleContext, fora, no_cache
    from ebtune.search.records import set_baseline, set_views_source, store_result
    from ebtune.search.study import open_study
    from ebtune.search.views import folder_views

    folder, ctx, rng = tmp_path / "old", ScheduleContext.linear(10, 6), np.random.default_rng(0)
    settings = {"objectives": ["fid", "macs"], "constraints": ["fid <= nocache + 5"], "metric": {"margin": 0.5}}
    study, _ = open_study(folder, None, "old", ["fid", "macs"], settings, {"sampler": "random", "seed": 0}, True)
    set_views_source(study, {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "e"},
                     {"config": {}, "space": {}, "info": {}},
                     {"model": "dit-tiny", "steps": 10, "sampler": {"name": "ddpm"}, "space": "intervals",
                      "quality_evaluator": "digits-native", "n_samples": 20})
    shared = rng.normal(0, 1, 20)

    def record(name: str, value: float, speedup: float, schedule) -> dict:
        rel = f"schedules/{name}.json"
        save_schedule_file(folder / rel, schedule, model={"family": "dit", "name": "dit-tiny", "depth": 6},
                           sampler={"name": "ddpm", "steps": 10}, eps_scale={"name": "none"})
        metrics = {"fid": value, "fid_std": 1.0, "macs": 1e9 / speedup, "speedup": speedup, "images": 20.0}
        return {"metrics": metrics, "schedule_file": rel, "quality_draws": list(value + shared)}

    base = record("baseline-nocache", 10.0, 1.0, no_cache(10, 6))
    set_baseline(study, {"name": "nocache", "params": {"schedule": "none"}, **base})
    for number, (value, speedup) in enumerate([(10.2, 1.9), (13.0, 2.6)]):
        r = record(f"trial-{number:04d}", value, speedup, fora(ctx, 2 + number))
        trial = study.ask()
        store_result(trial, r["metrics"], [value - 15.0], r["schedule_file"], r["quality_draws"])
        study.tell(trial, [value, r["metrics"]["macs"]])

    views = folder_views(folder)
    assert views.quality == "fid" and SearchRecord(views.study).quality == "fid"
    points = views.update_front()  # what `ebtune sync` writes, without MLflow
    pareto = json.loads((folder / "pareto.json").read_text())
    assert pareto["quality"] == "fid" and pareto["verdict"]["quality"] == "fid" and [p["number"] for p in points] == [0, 1]
    assert points[0]["relations"]["nocache"] == "equivalent at lower cost"  # paired draws, margin 0.5
    assert main(["export", str(folder), "--quality", "11", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["provenance"]["exported"]["trial"] == 0
    assert main(["schedules", "list", str(folder)]) == 0
    assert not math.isnan(pareto["points"][1]["metrics"]["fid"])
