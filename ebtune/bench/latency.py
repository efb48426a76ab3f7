"""Latency of cached sampling versus no cache, measured in one run (torch only, CPU or GPU).

    python -m ebtune.bench --model DiT-XL/2 --steps 50 --batch 32 --dtype bf16 --device cuda [--compile]
    python -m ebtune.bench --model tiny --steps 50 --batch 256

Random weights (the cost does not depend on them; adaLN-Zero gates are randomised so nothing is
trivially zero). Each schedule: warm-up runs, then the median of `--repeats` timed sampling runs,
synchronised on GPU; reported as seconds and as speedup over no cache next to the MAC-ideal one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ebtune.core.dit import DiT
from ebtune.core.macs import ideal_speedup
from ebtune.core.schedule import Schedule, no_cache
from ebtune.run.loading import ARCHITECTURES
from ebtune.sampling.samplers import Guidance, make_sampler
from ebtune.schedules import ScheduleContext, make_schedule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

CASES = [
    ("none", {}),
    ("attn/2", {"attn": 2, "mlp": 1}),
    ("mlp/2", {"attn": 1, "mlp": 2}),
    ("both/2", {"attn": 2, "mlp": 2}),
    ("attn/3+mlp/2", {"attn": 3, "mlp": 2}),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(fns: list, repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Median wall time of each fn; rounds run every fn once, so drifting machine load hits all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run(model_name: str, image_size: int, steps: int, batch: int, dtype: str, device: str, compile_blocks: bool,
        repeats: int, warmup: int, cfg_scale: float) -> list[dict]:
    dev = torch.device(device)
    config = ARCHITECTURES[model_name](image_size)
    torch.manual_seed(0)
    model = DiT(config)
    with torch.no_grad():
        for block in model.blocks:
            block.adaLN_modulation[-1].weight.normal_(0, 0.02)
    model = model.to(dev, DTYPES[dtype]).eval().requires_grad_(False)
    if compile_blocks:
        # Compile the branch modules, not the cache wrapper: the per-step decisions stay in Python and
        # every block keeps one compiled graph per branch whatever the schedule.
        for block in model.blocks:
            block.attn.compile()
            block.mlp.compile()
    sampler = make_sampler("ddim", steps, Guidance(cfg_scale, config.num_classes))
    ctx = ScheduleContext(steps, config.depth, sampler.times)
    noise = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=dev, dtype=DTYPES[dtype])
    labels = torch.arange(batch, device=dev) % config.num_classes
    schedules: list[Schedule] = [
        no_cache(steps, config.depth) if not params else make_schedule("intervals", ctx, **params) for _, params in CASES
    ]
    fns = [lambda s=s: sampler.sample(model, noise, labels, s) for s in schedules]
    seconds = _interleaved_medians(fns, repeats, warmup, dev)
    return [
        {"schedule": name, "seconds": round(sec, 4), "speedup": round(seconds[0] / sec, 3), "ideal": round(ideal_speedup(config, s), 3)}
        for (name, _), s, sec in zip(CASES, schedules, seconds)
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ebtune.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=sorted(ARCHITECTURES))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile each block's attention and MLP")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    a = p.parse_args(argv)
    rows = run(a.model, a.image_size, a.steps, a.batch, a.dtype, a.device, a.compile, a.repeats, a.warmup, a.cfg_scale)
    dev_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"{a.model} {a.image_size}px, {a.steps} steps DDIM, batch {a.batch}, cfg {a.cfg_scale}, {a.dtype}, {dev_name}"
          f"{', compiled' if a.compile else ''}")
    print(f"{'schedule':<14}{'seconds':>10}{'speedup':>10}{'MAC-ideal':>11}")
    for r in rows:
        print(f"{r['schedule']:<14}{r['seconds']:>10.3f}{r['speedup']:>9.2f}x{r['ideal']:>10.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "device": dev_name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
