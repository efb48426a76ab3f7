"""The calibrated seed: EB-Cache Algorithm 1 on the model at search start, enqueued once, its masks
kept in the study so a resume neither calibrates again nor enqueues it twice."""
from __future__ import annotations

import json

import optuna
import pytest
import yaml

import ebtune.search.seeding as seeding
from ebtune.cli.config import compose
from ebtune.errors import ConfigError
from ebtune.schedules import SCHEDULES
from ebtune.search.evaluator import Evaluator
from ebtune.search.space import CALIBRATED, MASKS_KEY, parse_space

from .conftest import TINY_SEARCH

STEPS = 10
# Loose thresholds, so calibration reuses far more than an interval pattern can express.
DOC = {
    "schedule": "intervals", "eps_scale": "constant",
    "params": {"attn": {"type": "int", "low": 1, "high": 4}, "mlp": {"type": "int", "low": 1, "high": 4},
               "eps_scale.value": {"type": "float", "low": 0.94, "high": 1.04}},
    "seeds": [{"attn": 2, "mlp": 2, "eps_scale.value": 0.98}],
    "calibrated_seed": {"a": 0.5, "c": 0.5, "boundary": 0.4, "n": 2, "eps_scale.value": 0.97},
}


@pytest.fixture(scope="module")
def evaluator():
    cfg = compose(["model=dit-tiny", f"steps={STEPS}", "metric.n_samples=4", "metric.batch_size=2",
                   "metric.latency_warmup=0", "device=cpu"], config_name="search")
    return Evaluator(cfg, "cpu")


@pytest.mark.parametrize("change, message", [
    ({"calibrated_seed": {"a": 0.5, "delta": 1, "eps_scale.value": 0.97}}, "calibrated_seed sets delta"),
    ({"calibrated_seed": {"a": 0.5}}, "gives no eps_scale.value"),
    ({"calibrated_seed": {"a": 0.5, "eps_scale.value": 2.0}}, "outside its range"),
])
def test_bad_calibrated_seed_is_a_config_error(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_space({**DOC, **change}, "t")


def test_nearest_point_reproduces_what_the_space_expresses(evaluator):
    space = parse_space(DOC, "t")
    target = SCHEDULES.make("intervals", evaluator.ctx, attn=3, mlp=4)
    point, agree = seeding.nearest_point(space, target, evaluator.ctx, {"eps_scale.value": 1.0})
    assert agree == 1.0 and (point["attn"], point["mlp"]) == (3, 4)


def test_calibrated_seed_is_enqueued_once_and_survives_a_resume(evaluator, monkeypatch):
    space = parse_space(DOC, "t")
    calls = []
    real = seeding.calibrate
    monkeypatch.setattr(seeding, "calibrate", lambda *a: calls.append(1) or real(*a))
    study = optuna.create_study(directions=["minimize", "minimize"])
    seeded = seeding.seed_study(study, space, evaluator, n_trials=4, log=lambda line: None)
    calibrated = real(space, evaluator)  # what Algorithm 1 gives: deterministic on the CPU
    assert calls == [1] and study.user_attrs[seeding.STUDY_ATTR]["agreement"] < 1.0
    assert seeded.calibrated.attn == calibrated.attn and seeded.calibrated.mlp == calibrated.mlp

    points = []
    for _ in range(3):
        trial = study.ask()
        points.append(seeded.suggest(trial))
        study.tell(trial, [1.0, 1.0])
    marked = [p for p in points if p.get(MASKS_KEY) == CALIBRATED]
    assert len(marked) == 1 and points[0] == DOC["seeds"][0]
    built = seeded.to_schedule(marked[0], evaluator.ctx)
    assert built.attn == calibrated.attn and built.eps_scale == (0.97,) * STEPS
    with pytest.raises(ValueError, match="calibrates at its start"):  # the masks live in the search, not the space file
        space.to_schedule(marked[0], evaluator.ctx)

    resumed = seeding.seed_study(study, space, evaluator, n_trials=4, log=lambda line: None)
    assert calls == [1] and resumed.calibrated == seeded.calibrated
    assert len(study.trials) == 3 and not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_no_calibration_when_the_seed_does_not_fit_the_trials(evaluator, monkeypatch):
    monkeypatch.setattr(seeding, "calibrate", lambda *a: pytest.fail("calibrated although the seed cannot run"))
    study = optuna.create_study(directions=["minimize", "minimize"])
    seeding.seed_study(study, parse_space(DOC, "t"), evaluator, n_trials=1)
    assert len(study.trials) == 1 and seeding.STUDY_ATTR not in study.user_attrs


@pytest.mark.slow
def test_search_evaluates_the_calibrated_seed_once_across_a_resume(ebtune, tmp_path, capsys):
    space = tmp_path / "cal.yaml"
    space.write_text(yaml.safe_dump(DOC))
    args = [*TINY_SEARCH, f"space={space}", "name=cal", "metric.n_proxy=0"]
    assert ebtune("search", *args, "trials=2") == 0
    assert "calibrated seed: EB-Cache Algorithm 1" in capsys.readouterr().out
    assert ebtune("search", *args, "trials=3") == 0
    assert "calibrated seed" not in capsys.readouterr().out
    study = optuna.load_study(study_name="cal", storage=f"sqlite:///{tmp_path / 'outputs/search/cal/study.db'}")
    marked = [t for t in study.trials if t.params.get(MASKS_KEY) == CALIBRATED]
    assert len(study.trials) == 3 and len(marked) == 1 and marked[0].state == optuna.trial.TrialState.COMPLETE
    saved = json.loads((tmp_path / f"outputs/search/cal/schedules/trial-{marked[0].number:04d}.json").read_text())
    assert saved["search_params"][MASKS_KEY] == CALIBRATED
