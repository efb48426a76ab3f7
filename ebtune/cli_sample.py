"""`ebtune sample`: sample a grid under a schedule; print MACs, the MAC-ideal speedup and wall time."""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images under a cache schedule",
        description="Sample n images and write grid.png and samples.npz. Overrides: model=, steps=, sampler=ddpm|ddim, "
        "cfg_scale=, n=, seed=, out=DIR, schedule=<none|fora|intervals|ebcache-table|ebcache-calibrated|block-groups> "
        "with schedule.<param>=, eps_scale=<none|ebcache|constant|linear> with eps_scale.<param>=.",
    )
    p.add_argument("--schedule", metavar="FILE", help="apply an exported schedule file (retargeted to steps= if they differ)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .build import eps_scale_from, model_spec, resolve_device, sampler_from, schedule_from
    from .config import compose
    from .generate import class_balanced_labels, generate
    from .images import save_grid
    from .macs import ideal_speedup, sampling_macs
    from .models import load_model

    cfg = compose(args.overrides)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    if int(cfg["n"]) < 1:
        raise ValueError(f"n must be at least 1, got {cfg['n']}")
    spec = model_spec(cfg["model"])
    device = resolve_device(cfg["device"])
    loaded = load_model(spec, device)
    sampler = sampler_from(cfg, spec)
    if args.schedule:
        from .apply import schedule_for_run

        schedule, notes = schedule_for_run(args.schedule, loaded, sampler)
        for note in notes:
            print(f"retarget: {note}")
    else:
        schedule = schedule_from(cfg["schedule"], eps_scale_from(cfg), sampler, loaded, int(cfg["seed"]))
    labels = class_balanced_labels(int(cfg["n"]), loaded.config.num_classes)
    out = Path(cfg["out"] or Path("outputs") / "sample" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    out.mkdir(parents=True, exist_ok=True)
    result = generate(loaded, sampler, schedule, labels, int(cfg["seed"]), int(cfg["batch_size"]))
    np.savez(out / "samples.npz", images=result.images, labels=result.labels)
    save_grid(result.images, out / "grid.png", ncol=min(len(result.images), loaded.config.num_classes if loaded.config.num_classes <= 16 else 8))
    macs = sampling_macs(loaded.config, schedule, batch=len(labels), cfg=sampler.guidance.active)
    (out / "run.json").write_text(json.dumps({
        "model": spec.name, "sampler": cfg["sampler"], "steps": sampler.steps, "cfg_scale": sampler.guidance.scale,
        "n": len(labels), "seed": cfg["seed"], "schedule": schedule.name, "schedule_params": dict(schedule.params),
        "macs": macs, "ideal_speedup": ideal_speedup(loaded.config, schedule), "wall_s": result.seconds,
        "device": str(device),
    }, indent=2, default=str))
    print(schedule.describe())
    print(f"MACs: {macs / 1e9:.3f} G for {len(labels)} images ({macs / len(labels) / 1e9:.3f} G per image)")
    print(f"MAC-ideal speedup vs no cache: {ideal_speedup(loaded.config, schedule):.2f}x")
    print(f"wall time: {result.seconds:.2f} s on {device}")
    print(f"grid: {out / 'grid.png'}")
    print(f"samples: {out / 'samples.npz'}")
    return 0
