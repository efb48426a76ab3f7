"""`ebtune bench` (and its alias `python -m ebtune.bench`): latency, efficiency and memory of the
schedules on one model, every batch × precision, eager or on the fast path; a table and a JSON file.

    ebtune bench model=dit-xl steps=50 batch=[1,8,32] precision=bf16 'schedules=[none,fora2]' compile=true out=DIR

Torch only: no Hydra, Optuna, Ray, MLflow or torch-fidelity is imported.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ebtune.bench.latency import (
    DTYPES,
    bench_schedule,
    make_setup,
    measure,
    random_model,
)
from ebtune.bench.settings import BenchSettings, model_spec, parse_settings
from ebtune.cache.engine import CachedModel
from ebtune.cache.fast import FastPath
from ebtune.cache.graphs import CudaGraphs
from ebtune.core.dit import DiT
from ebtune.errors import ConfigError
from ebtune.io.atomic import write_json
from ebtune.run.loading import ModelSpec
from ebtune.sampling.samplers import SAMPLER_STEPS, Guidance, make_sampler
from ebtune.schedules import ScheduleContext, make_schedule

MAX_BATCH_CAP = 1 << 14

HELP = (
    "Time sampling under each schedule against no cache; print a table and write a JSON list of rows to out=DIR. "
    "Settings: model=<config name, e.g. dit-tiny, dit-xl; random weights> steps=50 "
    f"sampler={'|'.join(SAMPLER_STEPS.choices())} (default {BenchSettings.sampler}) batch=N or [1,8,32] "
    "precision=fp32|tf32|bf16 (or a list; tf32: float32 weights, TF32 matmuls) 'schedules=[none,attn-only,mlp-only,fora2,fora3,ebcache-table,file:PATH]' "
    "schedule_file=PATH compile=true|false (torch.compile each block per cache state) cuda_graphs=true|false "
    "(with compile=true, CUDA only: one CUDA graph per step pattern) versus_eager=true|false (with compile=true: "
    "eager timed in the same interleaved rounds, rows get eager_seconds and vs_eager) out=bench/results/ "
    "device=auto|cpu|cuda threads=N repeats=3 warmup=1 max_batch=true|false (largest batch whose cached sampling fits, GPU only) "
    "memory_gib=79 (the GiB max_batch may use; 79: an 80 GB H100 less its CUDA context)."
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


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """float32 matmuls in TF32 under "tf32" (what the official DiT sampling script enables on GPU), in full
    float32 otherwise; restored after. cuDNN convolutions (only the patch embedding) keep torch's default."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def bench_rows(settings: BenchSettings, device: torch.device) -> Iterator[list[dict]]:
    """The rows of each batch × precision in turn (so a caller can save what is done before a run is cut
    short); rows carry their configuration."""
    spec = model_spec(settings.model)
    for precision in settings.precision:
        for batch in settings.batch:
            # CUDA graphs are captured per model and batch shape, so each configuration gets its own.
            fast = FastPath(graphs=CudaGraphs() if settings.cuda_graphs else None) if settings.compile else None
            if fast is not None:
                torch._dynamo.reset()  # 4 graphs per shape; a fresh shape must not meet the recompile limit
            with matmul_precision(precision):
                setup = make_setup(spec.config, settings.steps, batch, _guidance(spec), device, DTYPES[precision], fast,
                                   settings.sampler)
                eager = (make_setup(spec.config, settings.steps, batch, _guidance(spec), device, DTYPES[precision], None,
                                    settings.sampler)
                         if settings.versus_eager else None)
                names = list(settings.schedules)
                schedules = [bench_schedule(n, spec.name, spec.config, setup.sampler) for n in names]
                rows = measure(setup, names, schedules, settings.repeats, settings.warmup, eager)
            yield [{**row, "model": spec.name, "sampler": settings.sampler, "steps": settings.steps, "batch": batch, "precision": precision,
                    "device": _device_name(device), "compiled": settings.compile, "cuda_graphs": settings.cuda_graphs,
                    "torch": torch.__version__} for row in rows]
            del setup, eager, fast, schedules  # the CUDA graphs (pool, static buffers) go with `fast`
            if device.type == "cuda":
                torch.cuda.empty_cache()


def _fits(model: DiT, batch: int, guidance: Guidance) -> bool:
    """Whether a 2-step FORA(2) run (step 0 fills the cache, step 1 reuses it) of `batch` fits in GPU memory."""
    config, param = model.config, next(model.parameters())
    sampler = make_sampler("ddim", 2, guidance)
    schedule = make_schedule("fora", ScheduleContext(2, config.depth, sampler.times), interval=2)
    try:
        noise = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=param.device,
                            dtype=param.dtype)
        labels = torch.arange(batch, device=param.device) % config.num_classes
        with CachedModel(model, schedule) as cache:
            sampler.sample(model, noise, labels, cache)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        noise = labels = None  # dropped before emptying the cache, so the next probe starts from a bare pool
        torch.cuda.empty_cache()


def largest_fitting(fits: Callable[[int], bool], cap: int = MAX_BATCH_CAP) -> int:
    """The largest batch ≤ `cap` for which `fits(batch)` (assumed monotone), 0 if none: doubling, then
    bisection, so about 2·log2 of the answer probes."""
    good, bad = 0, 1
    while bad <= cap and fits(bad):
        good, bad = bad, bad * 2
    bad = min(bad, cap + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def max_batch(spec: ModelSpec, precision: str, device: torch.device, memory_gib: float) -> dict:
    """The largest batch whose cached sampling fits in `memory_gib` GiB of this GPU (or all of it, if smaller).

    The cap is the caching allocator's (`torch.cuda.set_per_process_memory_fraction`), so the answer
    under the default 79 GiB, measured on a larger GPU, is what an 80 GB H100 holds.
    """
    guidance = _guidance(spec)
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    total = torch.cuda.get_device_properties(device).total_memory
    cap_bytes = min(total, int(memory_gib * 2**30))
    model = random_model(spec.config, device, DTYPES[precision])  # built once: a DiT-XL/2 takes seconds
    torch.cuda.set_per_process_memory_fraction(cap_bytes / total, device)
    try:
        with matmul_precision(precision):
            found = largest_fitting(lambda batch: _fits(model, batch, guidance))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"model": spec.name, "precision": precision, "max_batch": found, "schedule": "fora2",
            "memory_cap_bytes": cap_bytes, "device_memory_bytes": total, "device": _device_name(device),
            "torch": torch.__version__}


def _print_table(rows: list[dict], header: bool = True) -> None:
    versus = "vs_eager" in rows[0]
    if header:
        print(f"{'batch':>6} {'prec':>5} {'schedule':<16}{'seconds':>9}{'speedup':>9}{'MAC-ideal':>10}{'time-ideal':>11}"
              f"{'eff':>7}{'time-eff':>9}{'peak MiB':>10}{'tensor MiB':>11}" + (f"{'eager s':>9}{'vs eager':>9}" if versus else ""))
    for r in rows:
        print(f"{r['batch']:>6} {r['precision']:>5} {r['schedule']:<16}{r['seconds']:>9.3f}{r['speedup']:>8.2f}x"
              f"{r['ideal']:>9.2f}x{r['time_ideal']:>10.2f}x{r['efficiency']:>7.2f}{r['time_efficiency']:>9.2f}"
              f"{r['peak_mem_bytes'] / 2**20:>10.1f}"
              + (f"{r['peak_tensor_bytes'] / 2**20:>11.1f}" if r["peak_tensor_bytes"] is not None else f"{'-':>11}")
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
    mode = (("compiled-graphs" if settings.cuda_graphs else "compiled") + ("-vs-eager" if settings.versus_eager else "")
            if settings.compile else "eager")
    tag = f"{settings.model}-{device.type}-{'_'.join(settings.precision)}-b{'_'.join(map(str, settings.batch))}-{mode}"
    print(f"{settings.model}, {settings.steps} steps {settings.sampler}, {_device_name(device)}, {mode}, torch {torch.__version__}")
    path, rows = out / f"bench-{tag}.json", []
    for configuration in bench_rows(settings, device):
        _print_table(configuration, header=not rows)
        rows += configuration
        write_json(path, rows)  # whole, after each configuration: a run cut short keeps the finished ones
    print(f"written: {path}")
    if settings.max_batch:
        if device.type != "cuda":
            print("max_batch: skipped (it measures GPU memory; this run is on the CPU)")
            return 0
        spec = model_spec(settings.model)
        batch_path, found = out / f"max-batch-{settings.model}-{'_'.join(settings.precision)}.json", []
        for precision in settings.precision:
            found.append(max_batch(spec, precision, device, settings.memory_gib))
            print(f"max_batch {precision}: {found[-1]['max_batch']} (in {found[-1]['memory_cap_bytes'] / 2**30:.0f} GiB)")
            write_json(batch_path, found)
        print(f"written: {batch_path}")
    return 0
