"""`ebtune search`: the Pareto front of cache schedules on quality versus speed.

The command composes `conf/search.yaml` with the overrides (Hydra, `cli/config.py`), checks them into a
`SearchConfig` and calls `ebtune.search.run_search`; `-m` plans every job first, then runs each.
"""
from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the search stack (torch, Optuna) loads only when a search runs
    from ebtune.cli.config import Composed
    from ebtune.search.config import SearchConfig

DESCRIPTION = (
    "Search cache schedules (Optuna; trials local or on Ray Tune; tracked in MLflow) and write the Pareto front. "
    "Overrides: model=, steps=, sampler=ddpm|ddim|dpmpp-2m|dpmpp-3m, cfg_scale=, trials=N, "
    "space=ebcache|intervals|block-groups|forecast|joint (or a .yaml path), search.baseline_samplers=auto|[ddim,...], launcher=local|ray, ray.address=auto (joins a running cluster; implies launcher=ray), "
    "ray.cpus_per_trial=, ray.gpus_per_trial=, ray.max_concurrent=, threads=, metric.n_samples=, metric.batch_size=, "
    "search.sampler=tpe|nsga2|gp|random, search.objectives=[quality,macs], search.constraints=['quality <= nocache + 0.5'], "
    "tracking.uri=, name=NAME (the Optuna study and MLflow parent run; the same name and folder resume), "
    "out=DIR (default outputs/search/<name>/), device=, seed=."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ebtune.cli.config import add_hydra_flags

    p = sub.add_parser("search", help="search cache schedules for the quality/speed Pareto front", description=DESCRIPTION)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the search space, then exit")
    add_hydra_flags(p, "search", sweeps=True)
    p.set_defaults(run=run)


def _space_path(name: str, searchpath: Any) -> str:
    """A space name found in a user config directory (`DIR/search_spaces/NAME.yaml`), else as given."""
    from ebtune.cli.config import user_dirs

    for folder in user_dirs(searchpath):
        path = folder / "search_spaces" / f"{name}.yaml"
        if path.is_file():
            return str(path)
    return name


@dataclass(frozen=True)
class Plan:
    """One `ebtune search` job: its checked config and the Hydra composition it came from."""

    config: SearchConfig
    composed: Composed


def _plan(args: argparse.Namespace) -> Plan:
    """Everything decided before any model is loaded; raises `ConfigError` for bad input."""
    from ebtune.cli.config import compose_run
    from ebtune.search.config import SearchConfig

    overrides = list(args.overrides)
    if any(o.startswith("ray.") for o in overrides) and not any(o.startswith("launcher=") for o in overrides):
        overrides.append("launcher=ray")
    composed = compose_run(overrides, config_name="search")
    config = SearchConfig.from_mapping(composed.cfg, _space_path(str(composed.cfg["space"]), composed.searchpath))
    return Plan(config, composed)


def _dry_run(plan: Plan) -> int:
    import yaml

    config = plan.config
    resolved = {"search_name": config.name, "folder": str(config.folder), "objectives": list(config.objectives),
                "device": str(config.device)}
    print(yaml.safe_dump({"config": dict(config.cfg), "resolved": resolved}, sort_keys=False).rstrip())
    print(yaml.safe_dump({"space": config.space.describe()}, sort_keys=False).rstrip())
    print(f"dry run: nothing written; run it without --dry-run to search into {config.folder}")
    return 0


def sweep_overrides(overrides: list[str], now: datetime.datetime | None = None) -> list[list[str]]:
    """`-m`: one override list per job, each searching into its own folder `<hydra.sweep.dir>/<k>`
    (default outputs/multirun/<date>_<time>) under the name `<name>-<k>`.

    Raises:
        ConfigError: nothing is swept, or out= names one folder for every job.
    """
    from ebtune.cli.config import ConfigError, sweep_jobs

    jobs = sweep_jobs(overrides)
    keys = {o.partition("=")[0] for o in overrides}
    if len(jobs) < 2:
        raise ConfigError("-m found nothing to sweep; give comma-separated values, e.g. trials=8,16 search.sampler=tpe,nsga2")
    if keys & {"out", "hydra.run.dir"}:
        raise ConfigError("-m gives each job its own folder under hydra.sweep.dir=; drop out=/hydra.run.dir=")
    stamp = f"{now or datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    root = Path(next((o.partition("=")[2] for o in overrides if o.startswith("hydra.sweep.dir=")),
                     Path("outputs") / "multirun" / stamp))
    given = next((o.partition("=")[2] for o in overrides if o.partition("=")[0] in ("name", "hydra.job.name")), None)
    out = []
    for k, job in enumerate(jobs):
        base = next((o.partition("=")[2] for o in job if o.partition("=")[0] in ("name", "hydra.job.name")), given)
        job = [o for o in job if o.partition("=")[0] not in ("name", "hydra.job.name", "hydra.sweep.dir")]
        out.append([*job, f"name={base or 'sweep-' + stamp}-{k}", f"out={root.absolute() / str(k)}"])
    return out


def _loading(config: SearchConfig) -> None:
    """The first line of a search, before the model, its decoder and the quality evaluator load."""
    spec, sampler = config.model, config.sampler
    print(f"search {config.name}: loading {spec.name} ({'embedded weights' if spec.ckpt is None else spec.ckpt}), "
          f"the {spec.fid} quality evaluator and the {sampler.step.name} sampler ({sampler.steps} steps) on "
          f"{config.device}; then no cache, the trials, and the baselines the front reaches", flush=True)


def next_commands(folder: Path) -> None:
    """What to run after a search, with its folder filled in."""
    import shlex

    where = shlex.quote(str(folder))
    print("next:")
    print(f"  ebtune confirm {where}        re-score the front on fresh images (n=1000 for more)")
    print(f"  ebtune export {where} --knee  the knee schedule as a file for `ebtune sample schedule_file=` "
          "or `ebtune.apply(pipe, file)`")
    print(f"  ebtune ui {where}             the runs table and the Pareto front in MLflow")


def _search(plan: Plan) -> int:
    from ebtune.cli.config import write_hydra_dir
    from ebtune.search.pipeline import run_search

    write_hydra_dir(plan.config.folder, plan.composed)
    _loading(plan.config)
    code = run_search(plan.config).exit_code
    next_commands(plan.config.folder)
    return code


def run(args: argparse.Namespace) -> int:
    if args.multirun:
        # Every job is planned (and so validated) before the first one runs.
        plans = [_plan(argparse.Namespace(**{**vars(args), "overrides": job})) for job in sweep_overrides(args.overrides)]
        for k, plan in enumerate(plans):
            print(f"sweep job {k + 1}/{len(plans)}: {' '.join(plan.composed.overrides)}")
        if args.dry_run:
            return max(_dry_run(plan) for plan in plans)
        return max(_search(plan) for plan in plans)
    plan = _plan(args)
    if args.dry_run:
        return _dry_run(plan)
    return _search(plan)
