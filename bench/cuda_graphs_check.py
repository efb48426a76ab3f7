"""GPU only: CUDA-graph sampling (compiled fast path, one graph per step pattern) matches eager.

    python bench/cuda_graphs_check.py [--json PATH]

DiT-S/2 shape (random weights, non-zero gates), 12 DDIM steps with guidance, batch 4, fp32 with TF32
off, under a mixed schedule (attention every 2nd step, MLP every 3rd: four step patterns) and FORA(2),
each sampled twice through its own `CudaGraphs` (the second run replays only), then no cache and both
schedules through one shared `CudaGraphs`, as the bench does. Exits non-zero when a
sample differs from eager beyond float32 tolerance; the JSON also says how far caching itself moves
the samples, which a match must be well inside.
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
from ebtune.core.schedule import no_cache
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
    results, failures = {}, []

    def compare(label: str, schedule, graphs: CudaGraphs, eager: torch.Tensor) -> None:
        with CachedModel(setup.model, schedule) as cache, FastPath(graphs=graphs).attach(cache):
            fast = setup.sampler.sample(setup.model, setup.noise, setup.labels, cache)
        diff, size = float((fast - eager).abs().max()), float(eager.abs().max())
        ok = torch.allclose(fast, eager, rtol=1e-3, atol=1e-3)
        results[label] = {"max_abs_diff": diff, "max_abs_sample": size, "ok": ok}
        print(f"{label:>14}: max |graphs - eager| {diff:.3g} (max |x| {size:.3g}){'' if ok else '  MISMATCH'}")
        failures.extend([] if ok else [label])

    uncached = setup.sampler.sample(setup.model, setup.noise, setup.labels)
    eager = {name: setup.sampler.sample(setup.model, setup.noise, setup.labels, s) for name, s in schedules.items()}
    for name, schedule in schedules.items():
        # How far caching itself moves the samples: a match within tolerance means something only if this is larger.
        results[f"{name}/caching_moves"] = float((eager[name] - uncached).abs().max())
        graphs = CudaGraphs()  # each schedule captures its own patterns, then replays them
        for run in ("capture", "replay"):
            compare(f"{name}/{run}", schedule, graphs, eager[name])
    # As the bench does: one CudaGraphs for every schedule in turn, the all-compute one (which keeps nothing) first.
    shared = CudaGraphs()
    compare("none/shared", no_cache(STEPS, config.depth), shared, uncached)
    for name, schedule in schedules.items():
        compare(f"{name}/shared", schedule, shared, eager[name])
    if a.json:  # written before the verdict, so a mismatch's numbers come back too
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                            "results": results}, indent=2) + "\n")
    if failures:
        raise SystemExit(f"CUDA graphs differ from eager beyond float32 tolerance in: {', '.join(failures)}")
    print(f"ok: {torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
