"""`ebtune bench` (and its alias `python -m ebtune.bench`): latency, efficiency and memory of the
schedules on one model, every batch × precision, eager or on the fast path; a table and a JSON file.

    ebtune bench model=dit-xl steps=50 batch=[1,8,32] precision=bf16 'schedules=[none,fora2]' compile=true out=DIR

Torch only: no Hydra, Optuna, Ray, MLflow or torch-fidelity is imported.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ebtune.bench.latency import DTYPES, bench_schedule, make_setup, measure
from ebtune.bench.settings import BenchSettings, model_spec, parse_settings
from ebtune.cache.engine import CachedModel
from ebtune.cache.fast import FastPath
from ebtune.cache.graphs import CudaGraphs
from ebtune.core.dit import DiTConfig
from ebtune.errors import ConfigError
from ebtune.run.loading import ModelSpec
from ebtune.sampling.samplers import Guidance
from ebtune.schedules import ScheduleContext, make_schedule

MAX_BATCH_CAP = 1 << 14

HELP = (
    "Time sampling under each schedule against no cache; print a table and write a JSON list of rows to out=DIR. "
    "Settings: model=<config name, e.g. dit-tiny, dit-xl; random weights> steps=50 batch=N or [1,8,32] "
    "precision=fp32|bf16 (or a list) 'schedules=[none,attn-only,mlp-only,fora2,fora3,ebcache-table,file:PATH]' "
    "schedule_file=PATH compile=true|false (torch.compile each block per cache state) cuda_graphs=true|false "
    "(with compile=true, CUDA only: one CUDA graph per step pattern) versus_eager=true|false (with compile=true: "
    "eager timed in the same interleaved rounds, rows get eager_seconds and vs_eager) out=bench/results/ "
    "device=auto|cpu|cuda threads=N repeats=3 warmup=1 max_batch=true|false (largest batch that fits, GPU only)."
)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible; use device=cpu")
    return torch.device(name)


def _guidance(spec: ModelSpec) -> Guidance:
    return Guidance(spec.cfg_scale, spec.config.num_classes, spec.guidance_channels)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def bench_rows(settings: BenchSettings, device: torch.device) -> list[dict]:
    """Every batch × precision measured; rows carry their configuration."""
    spec = model_spec(settings.model)
    rows = []
    for precision in settings.precision:
        for batch in settings.batch:
            # CUDA graphs are captured per model and batch shape, so each configuration gets its own.
            fast = FastPath(graphs=CudaGraphs() if settings.cuda_graphs else None) if settings.compile else None
            if fast is not None:
                torch._dynamo.reset()  # 4 graphs per shape; a fresh shape must not meet the recompile limit
            setup = make_setup(spec.config, settings.steps, batch, _guidance(spec), device, DTYPES[precision], fast)
            eager = (make_setup(spec.config, settings.steps, batch, _guidance(spec), device, DTYPES[precision], None)
                     if settings.versus_eager else None)
            names = list(settings.schedules)
            schedules = [bench_schedule(n, spec.name, spec.config, setup.sampler) for n in names]
            for row in measure(setup, names, schedules, settings.repeats, settings.warmup, eager):
                rows.append({**row, "model": spec.name, "steps": settings.steps, "batch": batch, "precision": precision,
                             "device": _device_name(device), "compiled": settings.compile,
                             "cuda_graphs": settings.cuda_graphs, "torch": torch.__version__})
    return rows


def _fits(config: DiTConfig, batch: int, guidance: Guidance, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a 2-step FORA(2) run (step 0 fills the cache, step 1 reuses it) fits in GPU memory."""
    setup = make_setup(config, 2, batch, guidance, device, dtype, None)
    schedule = make_schedule("fora", ScheduleContext(2, config.depth, setup.sampler.times), interval=2)
    try:
        with CachedModel(setup.model, schedule) as cache:
            setup.sampler.sample(setup.model, setup.noise, setup.labels, cache)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del setup
        torch.cuda.empty_cache()


def max_batch(spec: ModelSpec, precision: str, device: torch.device) -> int:
    """The largest batch (≤ MAX_BATCH_CAP) whose cached sampling fits: doubling, then bisection."""
    guidance, dtype = _guidance(spec), DTYPES[precision]
    good, bad = 0, 1
    while bad <= MAX_BATCH_CAP and _fits(spec.config, bad, guidance, device, dtype):
        good, bad = bad, bad * 2
    while bad - good > 1 and good < MAX_BATCH_CAP:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if _fits(spec.config, mid, guidance, device, dtype) else (good, mid)
    return good


def _print_table(rows: list[dict]) -> None:
    versus = "vs_eager" in rows[0]
    print(f"{'batch':>6} {'prec':>5} {'schedule':<16}{'seconds':>9}{'speedup':>9}{'MAC-ideal':>10}{'time-ideal':>11}"
          f"{'eff':>7}{'time-eff':>9}{'peak MiB':>10}{'tensor MiB':>11}" + (f"{'eager s':>9}{'vs eager':>9}" if versus else ""))
    for r in rows:
        print(f"{r['batch']:>6} {r['precision']:>5} {r['schedule']:<16}{r['seconds']:>9.3f}{r['speedup']:>8.2f}x"
              f"{r['ideal']:>9.2f}x{r['time_ideal']:>10.2f}x{r['efficiency']:>7.2f}{r['time_efficiency']:>9.2f}"
              f"{r['peak_mem_bytes'] / 2**20:>10.1f}{r['peak_tensor_bytes'] / 2**20:>11.1f}"
              + (f"{r['eager_seconds']:>9.3f}{r['vs_eager']:>8.2f}x" if versus else ""))


def main(tokens: Sequence[str]) -> int:
    """Run the bench for `key=value` tokens; 0 on success.

    Raises:
        ConfigError: bad settings, or compile=true where torch.compile is unsupported.
    """
    settings = parse_settings(tokens)
    if settings.threads is not None:
        # On a shared CPU, threads that wait at OpenMP barriers for a descheduled peer can cost more than they add.
        torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    if settings.compile and not torch._dynamo.is_dynamo_supported():
        raise ConfigError("compile=true but torch.compile is not supported on this Python/platform; use compile=false")
    if settings.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"cuda_graphs=true needs a CUDA device, and this run is on {device.type}; use cuda_graphs=false")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = (("compiled+graphs" if settings.cuda_graphs else "compiled") + ("-vs-eager" if settings.versus_eager else "")
            if settings.compile else "eager")
    tag = f"{settings.model}-{device.type}-{'_'.join(settings.precision)}-b{'_'.join(map(str, settings.batch))}-{mode}"
    print(f"{settings.model}, {settings.steps} steps DDIM, {_device_name(device)}, {mode}, torch {torch.__version__}")
    rows = bench_rows(settings, device)
    _print_table(rows)
    path = out / f"bench-{tag}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {path}")
    if settings.max_batch:
        if device.type != "cuda":
            print("max_batch: skipped (it measures GPU memory; this run is on the CPU)")
            return 0
        spec = model_spec(settings.model)
        found = [{"model": spec.name, "precision": p, "max_batch": max_batch(spec, p, device), "schedule": "fora2",
                  "device": _device_name(device), "torch": torch.__version__} for p in settings.precision]
        for r in found:
            print(f"max_batch {r['precision']}: {r['max_batch']}")
        batch_path = out / f"max-batch-{settings.model}-{'_'.join(settings.precision)}.json"
        batch_path.write_text(json.dumps(found, indent=2) + "\n")
        print(f"written: {batch_path}")
    return 0
