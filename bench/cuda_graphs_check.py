"""GPU only: CUDA-graph sampling (compiled fast path, one graph per step pattern) matches eager.

    python bench/cuda_graphs_check.py [--json PATH]

DiT-S/2 shape (random weights, non-zero gates), 12 DDIM steps with guidance, batch 4, fp32 with TF32
off, under a mixed schedule (attention every 2nd step, MLP every 3rd: four step patterns) and FORA(2),
sampled twice through the same `CudaGraphs` (the second run replays only). Exits non-zero when a
sample differs from eager beyond float32 tolerance.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ebtune.bench.latency import make_setup
from ebtune.cache.engine import CachedModel
from ebtune.cache.fast import FastPath
from ebtune.cache.graphs import CudaGraphs
from ebtune.core.dit import dit_config
from ebtune.sampling.samplers import Guidance
from ebtune.schedules import ScheduleContext, make_schedule

STEPS, BATCH = 12, 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check replays CUDA graphs")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config, device = dit_config("DiT-S/2", 256), torch.device("cuda")
    setup = make_setup(config, STEPS, BATCH, Guidance(4.0, config.num_classes, 3), device, torch.float32, None)
    ctx = ScheduleContext(STEPS, config.depth, setup.sampler.times)
    schedules = {"mixed": make_schedule("intervals", ctx, attn=2, mlp=3), "fora2": make_schedule("fora", ctx, interval=2)}
    graphs, results = CudaGraphs(), {}
    for name, schedule in schedules.items():
        eager = setup.sampler.sample(setup.model, setup.noise, setup.labels, schedule)
        for run in ("capture", "replay"):
            with CachedModel(setup.model, schedule) as cache, FastPath(graphs=graphs).attach(cache):
                fast = setup.sampler.sample(setup.model, setup.noise, setup.labels, cache)
            diff = float((fast - eager).abs().max())
            results[f"{name}/{run}"] = {"max_abs_diff": diff, "max_abs_sample": float(eager.abs().max())}
            print(f"{name:>6} {run}: max |graphs - eager| {diff:.3g} (max |x| {float(eager.abs().max()):.3g})")
            torch.testing.assert_close(fast, eager, rtol=1e-3, atol=1e-3)
    print(f"ok: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
