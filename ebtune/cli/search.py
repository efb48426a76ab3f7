"""`ebtune search`: the Pareto front of cache schedules on quality versus speed.

Flow: compose `conf/search.yaml` with the overrides → load and check the space for the step count
→ open (or resume) the Optuna study in the search folder and the MLflow parent run → evaluate the
baselines → run the missing trials with the configured launcher → write the front.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Search cache schedules (Optuna; trials local or on Ray Tune; tracked in MLflow) and write the Pareto front. "
    "Overrides: model=, steps=, sampler=ddpm|ddim, cfg_scale=, trials=N, space=ebcache|intervals|block-groups "
    "(or a .yaml path), launcher=local|ray, ray.address=auto (joins a running cluster; implies launcher=ray), "
    "ray.cpus_per_trial=, ray.gpus_per_trial=, ray.max_concurrent=, threads=, metric.n_samples=, metric.batch_size=, "
    "search.sampler=tpe|nsga2|gp|random, search.objectives=[fid,macs], search.constraints=['fid <= nocache + 0.5'], "
    "tracking.uri=, name=NAME (the Optuna study and MLflow parent run; the same name and folder resume), "
    "out=DIR (default outputs/search/<name>/), device=, seed=."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ebtune.cli.config import add_hydra_flags

    p = sub.add_parser("search", help="search cache schedules for the quality/speed Pareto front", description=DESCRIPTION)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the search space, then exit")
    add_hydra_flags(p, "search", sweeps=True)
    p.set_defaults(run=run)


def _objectives(value: Any, device_type: str, decoder: str) -> list[str]:
    from ebtune.cli.config import ConfigError
    from ebtune.search.pareto import direction, objective_names

    names = objective_names(value, device_type)
    if value == "auto":
        return names
    for name in names:
        direction(name)
    if "accuracy" in names and decoder != "digits":
        raise ConfigError("objective 'accuracy' needs the digits classifier (model=dit-tiny); drop it for this model")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"search.objectives={names}; give at least two different metrics, e.g. [fid,macs]")
    return names


def _space_path(name: str, searchpath: Any) -> str:
    """A space name found in a user config directory (`DIR/search_spaces/NAME.yaml`), else as given."""
    from ebtune.cli.config import user_dirs

    for folder in user_dirs(searchpath):
        path = folder / "search_spaces" / f"{name}.yaml"
        if path.is_file():
            return str(path)
    return name


# Settings that count something: a fraction would be truncated silently.
WHOLE_NUMBERS = ("steps", "trials", "seed", "metric.n_samples", "metric.batch_size", "metric.latency_warmup",
                 "metric.bootstrap", "metric.n_proxy", "search.startup_trials", "search.population_size",
                 "search.confirm_n", "search.n_trials")


def _check_search_settings(cfg: dict[str, Any]) -> None:
    """Settings checked before the study opens (the sampler: `study.check_sampler` in `_plan`)."""
    from ebtune.cli.config import ConfigError

    for key in WHOLE_NUMBERS:
        section, _, leaf = key.rpartition(".")
        value = (cfg[section] if section else cfg).get(leaf)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a whole number")
    search = cfg["search"]
    for key in ("startup_trials", "population_size", "confirm_n"):
        if search[key] < 0:
            raise ConfigError(f"search.{key}={search[key]} must be 0 or more")
    if not isinstance(search["constraints"], list):
        raise ConfigError(f"search.constraints={search['constraints']!r} must be a list, e.g. ['fid <= nocache + 0.5']")


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """Everything decided before any model is loaded; raises `ConfigError` for bad input."""
    from ebtune.cli.config import ConfigError, compose_run
    from ebtune.run.factory import (
        model_spec,
        resolve_device,
        resolve_threads,
        sampler_from,
    )
    from ebtune.schedules import ScheduleContext
    from ebtune.search.evaluator import latency_batch, latency_pairs
    from ebtune.search.gap_gate import check_gap_prune
    from ebtune.search.pareto import Constraint
    from ebtune.search.space import load_space
    from ebtune.search.study import check_sampler

    overrides = list(args.overrides)
    if any(o.startswith("ray.") for o in overrides) and not any(o.startswith("launcher=") for o in overrides):
        overrides.append("launcher=ray")
    composed = compose_run(overrides, config_name="search")
    cfg = composed.cfg
    _check_search_settings(cfg)
    space = load_space(_space_path(str(cfg["space"]), composed.searchpath))
    spec = model_spec(cfg["model"])
    sampler = sampler_from(cfg, spec)
    space.check(ScheduleContext(sampler.steps, spec.config.depth, sampler.times))
    device = resolve_device(cfg["device"])
    resolve_threads(cfg["threads"])  # a bad value fails here, before any file is written
    trials = cfg["search"]["n_trials"]  # a whole number: _check_search_settings
    if trials < 1:
        raise ConfigError(f"trials must be at least 1, got {trials}")
    check_sampler(cfg["search"])  # a bad search.sampler fails here, before study.db is created
    metric = cfg["metric"]
    try:
        latency_batch(int(metric["n_samples"]), int(metric["batch_size"]), int(metric["latency_warmup"]))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if int(metric["n_samples"]) < 2:
        raise ConfigError("metric.n_samples must be at least 2 (FID needs a covariance)")
    check_gap_prune(metric, spec.decoder)
    latency_pairs(metric)
    name = cfg["name"] or (Path(cfg["out"]).name if cfg["out"] else
                         f"{spec.name}-{space.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if not name or any(c in name for c in "/\\'\""):
        raise ConfigError(f"search name {name!r} must be non-empty without slashes or quotes; pass name=NAME")
    return {
        "cfg": cfg, "space": space, "spec": spec, "sampler": sampler, "device": device, "name": name,
        "folder": Path(cfg["out"] or Path("outputs") / "search" / name).absolute(),
        "objectives": _objectives(cfg["search"]["objectives"], device.type, spec.decoder),
        "constraints": [Constraint.parse(c) for c in cfg["search"]["constraints"]],
        "composed": composed,
    }


def _dry_run(plan: dict[str, Any]) -> int:
    import yaml

    resolved = {"search_name": plan["name"], "folder": str(plan["folder"]), "objectives": plan["objectives"],
                "device": str(plan["device"])}
    print(yaml.safe_dump({"config": plan["cfg"], "resolved": resolved}, sort_keys=False).rstrip())
    print(yaml.safe_dump({"space": plan["space"].describe()}, sort_keys=False).rstrip())
    print(f"dry run: nothing written; run it without --dry-run to search into {plan['folder']}")
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


def _loading(plan: dict[str, Any]) -> None:
    """The first line of a search, before the model, its decoder and the quality evaluator load."""
    spec, sampler = plan["spec"], plan["sampler"]
    print(f"search {plan['name']}: loading {spec.name} ({'embedded weights' if spec.ckpt is None else spec.ckpt}), "
          f"the {spec.fid} quality evaluator and the {sampler.step.name} sampler ({sampler.steps} steps) on "
          f"{plan['device']}; then the baselines, then the trials", flush=True)


def next_commands(folder: Path) -> None:
    """What to run after a search, with its folder filled in."""
    import shlex

    where = shlex.quote(str(folder))
    print("next:")
    print(f"  ebtune confirm {where}        re-score the front on fresh images (n=1000 for more)")
    print(f"  ebtune export {where} --knee  the knee schedule as a file for `ebtune sample schedule_file=` "
          "or `ebtune.apply(pipe, file)`")
    print(f"  ebtune ui {where}             the runs table and the Pareto front in MLflow")


def _run_search(plan: dict[str, Any]) -> int:
    from ebtune.cli.config import write_hydra_dir

    write_hydra_dir(plan["folder"], plan["composed"])
    _loading(plan)
    code = _search(plan)
    next_commands(plan["folder"])
    return code


def run(args: argparse.Namespace) -> int:
    if args.multirun:
        # Every job is planned (and so validated) before the first one runs.
        plans = [_plan(argparse.Namespace(**{**vars(args), "overrides": job})) for job in sweep_overrides(args.overrides)]
        for k, plan in enumerate(plans):
            print(f"sweep job {k + 1}/{len(plans)}: {' '.join(plan['composed'].overrides)}")
        if args.dry_run:
            return max(_dry_run(plan) for plan in plans)
        return max(_run_search(plan) for plan in plans)
    plan = _plan(args)
    if args.dry_run:
        return _dry_run(plan)
    return _run_search(plan)


def _search(plan: dict[str, Any]) -> int:
    import optuna
    import torch

    from ebtune import __version__
    from ebtune.cli.config import ConfigError
    from ebtune.run.factory import resolve_threads
    from ebtune.search.baselines import NO_CACHE, baseline_names, evaluate_baselines
    from ebtune.search.baselines import plan as baseline_plan
    from ebtune.search.evaluator import Evaluator, Reference
    from ebtune.search.job import Job, SearchStopped, sigterm_interrupts
    from ebtune.search.launchers import LAUNCHERS
    from ebtune.search.recorder import Recorder, git_commit
    from ebtune.search.seeding import seed_study
    from ebtune.search.study import done_trials, open_study, reap
    from ebtune.search.tracking import SearchTracker, default_uri
    from ebtune.search.views import Views

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the recorder prints one line per trial instead
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store creation and migration notices
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a resumed parent run downloads its baselines
    cfg, space, name, folder, objectives = plan["cfg"], plan["space"], plan["name"], plan["folder"], plan["objectives"]
    constraints, device = plan["constraints"], plan["device"]
    if device.type == "cpu":
        torch.set_num_threads(resolve_threads(cfg["threads"]))
    evaluator = Evaluator(cfg, device)
    eps_form = space.reference_eps_form()
    names = baseline_names(evaluator, eps_form)
    unknown = sorted({c.baseline for c in constraints if c.baseline} - set(names))
    if unknown:
        raise ConfigError(f"constraint names baseline(s) {', '.join(unknown)}; baselines are: {', '.join(names)}")
    settings = {"model": plan["spec"].name, "ckpt": plan["spec"].ckpt, "sampler": cfg["sampler"],
                "steps": evaluator.sampler.steps, "cfg_scale": evaluator.sampler.guidance.scale, "seed": cfg["seed"],
                "space": space.describe(), "objectives": objectives, "constraints": [str(c) for c in constraints],
                "metric": cfg["metric"], "device": device.type}
    total = int(cfg["search"]["n_trials"])
    # A new study's seeds (the calibrated one included) are enqueued under the folder lock; a loaded
    # study gets back the calibrated masks it stored.
    study, store = open_study(folder, cfg["search"].get("storage"), name, objectives, settings, cfg["search"],
                              bool(constraints), first_start=lambda new: seed_study(new, space, evaluator, total))
    space = seed_study(study, space, evaluator, total)
    uri = cfg["tracking"]["uri"] or default_uri()
    tracker = SearchTracker(uri, cfg["tracking"]["experiment"] or f"ebtune/{plan['spec'].name}")
    info = {"search": name, "model": plan["spec"].name, "steps": evaluator.sampler.steps, "sampler": cfg["sampler"]["name"],
            "cfg_scale": evaluator.sampler.guidance.scale, "space": space.name, "objectives": ",".join(objectives),
            "launcher": cfg["launcher"]["name"], "device": evaluator.provenance()["latency"]["device"],
            "n_samples": evaluator.n_samples, "ebtune_version": __version__, "git_commit": git_commit() or "unknown",
            "folder": str(folder)}
    study.set_user_attr("tracking", {"uri": tracker.uri, "experiment": tracker.experiment})
    study.set_user_attr("mlflow_start", {"config": cfg, "space": space.describe(), "info": info})
    views = Views(folder, study, tracker, objectives, constraints, (cfg, space.describe(), info), {})
    recorder = Recorder(folder, study, space, evaluator, views, objectives, constraints, total)
    views.meta = recorder.pareto_meta()
    study.set_user_attr("pareto_meta", views.meta)
    interrupted = reap(study, float(cfg["search"]["grace_period"] or 60))
    views.sync()  # MLflow and pareto.json catch up with the study (a kill, or MLflow down last time)
    done = len(done_trials(study))
    print(f"search {name}: space {space.name} ({space.schedule} + eps {space.eps_scale}), {total} trials "
          f"({done} done), objectives {', '.join(objectives)}, {evaluator.n_samples} images per evaluation on {device}")
    print(f"search folder: {folder} (rerun with name={name} out={folder} to resume)")
    if interrupted:
        print(f"re-queued {len(interrupted)} trial(s) a dead session left running: {', '.join(map(str, interrupted))}")
    status, code = "FAILED", 0
    try:
        with sigterm_interrupts():
            if [b["name"] for b in recorder.baselines] == names:
                print("baselines: recorded in the study; re-running no cache for the distance reference")
                base = baseline_plan(evaluator)[0]
                outcome = evaluator.evaluate(base.schedule(evaluator.ctx), None)
                reference = Reference(outcome.latents, recorder.baseline_metrics()[NO_CACHE]["latency_s"])
            else:
                reference = evaluate_baselines(evaluator, recorder.baseline, eps_form)[1]
            launcher = LAUNCHERS.make(cfg["launcher"]["name"], cfg, folder)
            if len(done_trials(study)) < total:
                recorder.unconfirm()
                launcher.run(Job(study, store, space, cfg, reference, objectives, recorder, evaluator, total))
            confirm_n = int(cfg["search"]["confirm_n"])
            if confirm_n > 0 and recorder.confirmation is None and recorder.front():
                _confirm(recorder, folder, cfg, confirm_n, device)
            status = "FINISHED"
    except SearchStopped as stop:
        print(f"search stopped: {stop}")
        code = 1
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        front = recorder.finish(status)
        _summary(front, recorder.current_baselines(), objectives, recorder.confirmation)
        print(f"sampling cost: {recorder.cost() / 1e12:.4g} TMACs (images x MACs per image, baselines, trials and "
              f"confirmation included)")
        print(f"search folder: {folder}")
        if views.parent_run_id is None or not views.guard.up:
            print(f"MLflow: {tracker.uri} was unreachable; the study holds every result: run `ebtune sync {folder}` "
                  f"when it is back")
        else:
            print(f"MLflow: {tracker.uri} (experiment {tracker.experiment}, parent run {tracker.parent_run_id}); "
                  f"browse with `ebtune ui`")
    return code


def _confirm(recorder: Any, folder: Path, cfg: dict[str, Any], n: int, device: Any) -> None:
    """Re-score the front and the baselines on `n` fresh images and make those the search's numbers."""
    import copy

    from ebtune.search.confirm import confirm, fresh_seed

    confirm_cfg = copy.deepcopy(cfg)
    confirm_cfg["metric"]["n_samples"] = n
    confirm_cfg["seed"] = fresh_seed(cfg["seed"])
    confirm_cfg["device"] = device.type if device.type == "cpu" else str(device)
    print(f"confirming the front and the baselines on {n} fresh images (search.confirm_n; 0 skips this)")
    recorder.confirmed(confirm(folder, confirm_cfg))


def _fmt(m: dict, key: str) -> str:
    from ebtune.search.pareto import std_key

    std = m.get(std_key(key))
    return f"{key} {m[key]:.4g}" + (f" ± {std:.2g}" if isinstance(std, float) and std == std else "")


def _summary(front: list[dict], baselines: list[dict], objectives: list[str], confirmed: dict | None) -> None:
    """The front, sorted by the first objective, and how each front point stands against each
    baseline beyond the quality metric's noise (dominates, tie, trade-off, dominated)."""
    from ebtune.search.pareto import NOISE_Z, relation

    where = (f"confirmed on {confirmed['n_samples']} fresh images" if confirmed else "on the search's images, not confirmed")
    print(f"Pareto front ({len(front)} point(s)) over {', '.join(objectives)}, {where}; differences count beyond "
          f"{NOISE_Z:g} standard errors:")
    for point in sorted(front, key=lambda p: p["metrics"][objectives[0]]):
        m = point["metrics"]
        print(f"  {point['name']}: " + "  ".join(_fmt(m, k) for k in objectives)
              + f"  speedup {m['speedup']:.2f}x  latency {m['latency_s']:.3f}s  -> {point['schedule_file']}")
    for base in baselines:
        rel = {p["name"]: relation(p["metrics"], base["metrics"], objectives, NOISE_Z) for p in front}
        kinds = [k for k in ("dominates", "matches at lower cost", "tie", "trade-off", "matched at higher cost", "dominated")
                 if k in rel.values()]
        said = "; ".join(f"{k}: {', '.join(n for n, r in rel.items() if r == k)}" for k in kinds) or "no front point"
        print(f"  baseline {base['name']} ({_fmt(base['metrics'], objectives[0])}, speedup "
              f"{base['metrics']['speedup']:.2f}x) <- {said}")