"""`ebtune sample`: sample a grid under a schedule; print MACs, the MAC-ideal speedup and wall time."""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ebtune.cli.config import add_hydra_flags, choices

    p = sub.add_parser(
        "sample",
        help="sample images under a cache schedule",
        description="Sample n images and write grid.png and samples.npz. Overrides: model=, steps=, sampler=ddpm|ddim, "
        f"cfg_scale=, n=, seed=, out=DIR, schedule=<{'|'.join(choices('schedule'))}> with schedule.<param>=, "
        f"eps_scale=<{'|'.join(choices('eps_scale'))}> with eps_scale.<param>=, or schedule_file=FILE (an exported "
        "schedule, retargeted to steps= if they differ; it brings its own ε scaling).",
    )
    add_hydra_flags(p, "config", sweeps=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ebtune.cli.config import compose
    from ebtune.core.schedule import no_cache
    from ebtune.io.grids import save_grid
    from ebtune.run.factory import sampling_run
    from ebtune.run.generate import generate

    cfg = compose(args.overrides)
    setup = sampling_run(cfg, args.overrides)
    for note in setup.notes:
        print(f"retarget: {note}")
    loaded, sampler, schedule, labels, device = setup.loaded, setup.sampler, setup.schedule, setup.labels, setup.device
    spec = loaded.spec
    out = Path(cfg["out"] or Path("outputs") / "sample" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    out.mkdir(parents=True, exist_ok=True)
    result = generate(loaded, sampler, schedule, labels, int(cfg["seed"]), int(cfg["batch_size"]))
    np.savez(out / "samples.npz", images=result.images, labels=result.labels)
    save_grid(result.images, out / "grid.png", ncol=min(len(result.images), loaded.config.num_classes if loaded.config.num_classes <= 16 else 8))
    macs = loaded.macs(schedule, batch=len(labels), cfg=sampler.guidance.active)
    ideal = loaded.macs(no_cache(schedule.steps, schedule.depth)) / loaded.macs(schedule)  # MAC-ideal speedup
    (out / "run.json").write_text(json.dumps({
        "model": spec.name, "sampler": cfg["sampler"], "steps": sampler.steps, "cfg_scale": sampler.guidance.scale,
        "n": len(labels), "seed": cfg["seed"], "schedule": schedule.name, "schedule_params": dict(schedule.params),
        "macs": macs, "ideal_speedup": ideal, "wall_s": result.seconds,
        "device": str(device),
    }, indent=2, default=str))
    print(schedule.describe())
    print(f"MACs: {macs / 1e9:.3f} G for {len(labels)} images ({macs / len(labels) / 1e9:.3f} G per image)")
    print(f"MAC-ideal speedup vs no cache: {ideal:.2f}x")
    print(f"wall time: {result.seconds:.2f} s on {device}")
    print(f"grid: {out / 'grid.png'}")
    print(f"samples: {out / 'samples.npz'}")
    return 0
