"""`ebtune diagnose`: exposure-bias diagnostics of a schedule against no cache, with and without its
ε scaling; writes diagnostics.csv, summary.json and PNG plots (see ebtune.diagnostics)."""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ebtune.cli.config import add_hydra_flags, choices

    p = sub.add_parser(
        "diagnose",
        help="measure exposure bias and cache errors of a schedule per step",
        description="Sample n images three times from the same noise (no cache; the schedule with ε factors 1; the "
        "schedule with its ε scaling) and record per step ‖ε̂‖ and its gap to ‖ε‖ on forward-noised real data "
        "(dit-tiny only), the SNR of x̂_t against nominal, the cached branches' errors and the correlation of "
        "consecutive ε errors. Writes diagnostics.csv, summary.json, eps_gap.png, snr.png, cache_error.png. "
        f"Overrides: model=, steps=, sampler=<{'|'.join(choices('sampler'))}>, cfg_scale=, n=, seed=, out=DIR, schedule=<{'|'.join(choices('schedule'))}> "
        f"with schedule.<param>=, eps_scale=<{'|'.join(choices('eps_scale'))}> with eps_scale.<param>=, or "
        "schedule_file=FILE; mlflow_run=RUN_ID (with tracking.uri=) logs the results to that run.",
    )
    add_hydra_flags(p, "diagnose", sweeps=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ebtune.cli.config import compose
    from ebtune.diagnostics import diagnose
    from ebtune.diagnostics.plots import write_plots
    from ebtune.diagnostics.reference import real_latents
    from ebtune.diagnostics.report import (
        summary,
        summary_lines,
        write_csv,
        write_summary,
    )
    from ebtune.run.factory import config_key, sampling_run
    from ebtune.run.generate import initial_noise

    cfg = compose(args.overrides, "diagnose")
    uri = None
    if cfg["mlflow_run"]:
        from ebtune.diagnostics.mlflow_log import check_run
        from ebtune.search.tracking import default_uri

        uri = cfg["tracking"]["uri"] or default_uri()
        check_run(str(cfg["mlflow_run"]), uri)
    setup = sampling_run(cfg, args.overrides)
    for note in setup.notes:
        print(f"retarget: {note}")
    loaded, sampler, schedule, seed = setup.loaded, setup.sampler, setup.schedule, int(cfg["seed"])
    labels = setup.labels.to(setup.device)
    with config_key("n"):
        real = real_latents(loaded, labels, seed)
    noise = initial_noise(len(labels), loaded.config, seed, setup.device)
    # Step noise from seed + 1, as `ebtune sample` draws its first batch.
    d = diagnose(sampler, loaded.model, schedule, noise, labels, seed + 1, *(real or (None, None)))
    out = Path(cfg["out"] or Path("outputs") / "diagnose" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    out.mkdir(parents=True, exist_ok=True)
    s = summary(d, {"model": loaded.spec.name, "sampler": sampler.step.name, "steps": sampler.steps,
                    "cfg_scale": sampler.guidance.scale, "n": len(labels), "seed": seed, "schedule": schedule.describe(),
                    "schedule_params": dict(schedule.params), "eps_scale": list(schedule.eps_scale)})
    write_csv(d, out / "diagnostics.csv")
    write_summary(s, out / "summary.json")
    plots = write_plots(d, out, f"{loaded.spec.name}: {schedule.name}")
    print("\n".join(summary_lines(s)))
    print(f"table: {out / 'diagnostics.csv'}")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    if uri is not None:
        from ebtune.diagnostics.mlflow_log import log_diagnosis

        log_diagnosis(str(cfg["mlflow_run"]), uri, out, d, s)
        print(f"logged to MLflow run {cfg['mlflow_run']} in {uri}")
    return 0
