"""The Optuna study of a search: the only place search state lives.

`study.db` (sqlite) in the search folder holds every trial with its parameters, objective values
and user attributes (`metrics`: all reported metrics; `constraints`: violations, ≤ 0 = satisfied;
why a trial failed is in its MLflow run), plus study attributes: `search` (the settings a resume must match),
`baselines` (their records) and `mlflow_runs` (trial number → MLflow run id). A search started
again with the same name and folder loads the study and continues it; the sampler is rebuilt
(Optuna does not store it) with its seed offset by the number of trials so far, so a resumed
random sampler does not repeat itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ebtune.errors import ConfigError
from ebtune.registry import Registry
from ebtune.search.pareto import direction

SAMPLERS = ("tpe", "nsga2", "gp", "random")
DB_NAME = "study.db"


def storage(folder: Path) -> optuna.storages.RDBStorage:
    """The sqlite storage `<folder>/study.db` (created on first use)."""
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{(folder / DB_NAME).absolute().as_posix()}")


def constraint_values(trial: FrozenTrial) -> Sequence[float]:
    """Optuna's `constraints_func`: the violations the search stored before telling the trial."""
    return trial.user_attrs.get("constraints", ())


def _tpe(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=int(search["startup_trials"]), **cons)


def _nsga2(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(search["population_size"]), **cons)


def _gp(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=int(search["startup_trials"]), **cons)


def _random(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


# Optuna samplers by `search.sampler` name; each takes (search config, seed, constraint kwargs).
SAMPLERS: Registry[optuna.samplers.BaseSampler] = Registry("search.sampler")
SAMPLERS.register("tpe", _tpe)  # multivariate TPE
SAMPLERS.register("nsga2", _nsga2)
SAMPLERS.register("gp", _gp)
SAMPLERS.register("random", _random)


def make_sampler(search: Mapping[str, Any], seed: int, constrained: bool) -> optuna.samplers.BaseSampler:
    """The configured sampler (`SAMPLERS`), seeded with `seed`.

    Raises:
        ConfigError: unknown sampler name.
    """
    cons = {"constraints_func": constraint_values} if constrained else {}
    return SAMPLERS.make(search["sampler"], search, seed, cons)


def open_study(store: optuna.storages.BaseStorage, name: str, objectives: Sequence[str], settings: Mapping[str, Any],
               search: Mapping[str, Any], constrained: bool) -> optuna.Study:
    """Create or load study `name` in `store` and check that a loaded one fits `settings`.

    Args:
        settings: what a resume must not change (model, steps, space, objectives, sample count...).
        search: the `search` config (sampler, seed, startup_trials, population_size).

    Raises:
        ConfigError: the folder holds this study with other settings.
    """
    directions = [direction(m) for m in objectives]
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(store)}
    n_before = existing[name].n_trials if name in existing else 0
    sampler = make_sampler(search, int(search["seed"]) + n_before, constrained)
    study = optuna.create_study(storage=store, study_name=name, directions=directions, sampler=sampler,
                                load_if_exists=True)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", dict(settings))
    elif stored != dict(settings):
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise ConfigError(f"search {name!r} was started with other settings ({', '.join(changed)}); "
                          f"resume it with the same settings or start a new search with --name")
    return study


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a killed session as failed; returns their numbers."""
    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in numbers:
        study.tell(number, state=TrialState.FAIL)
    return numbers


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ended (complete, pruned by the first fidelity, or failed), by number; they count
    towards `n_trials`."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))


def add_run_id(study: optuna.Study, number: int, run_id: str) -> None:
    runs = dict(study.user_attrs.get("mlflow_runs", {}))
    runs[str(number)] = run_id
    study.set_user_attr("mlflow_runs", runs)


def run_ids(study: optuna.Study) -> dict[int, str]:
    return {int(k): v for k, v in study.user_attrs.get("mlflow_runs", {}).items()}
