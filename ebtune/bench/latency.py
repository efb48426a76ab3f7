"""Latency of cached sampling versus no cache, measured in one run (torch only, CPU or GPU).

Random weights (the cost does not depend on them; adaLN-Zero gates are randomised so nothing is
trivially zero). Each schedule: warm-up runs, then the median of `repeats` timed sampling runs,
interleaved across schedules and synchronised on GPU. Two ideals stand next to each speedup: the MAC
ideal (`ebtune.core.macs.ideal_speedup`) and the time ideal, predicted from measured per-branch costs
(one step uncached, one with every attention reused, one with every MLP reused; see `BranchCosts`).
"""
from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import torch

from ebtune.bench.memory import METHODS, TensorPeak, history_bytes, peak_bytes, reset_peak
from ebtune.bench.settings import FILE_PREFIX, BenchSettings
from ebtune.cache.engine import CachedModel
from ebtune.cache.fast import FastPath
from ebtune.core.dit import DiT, DiTConfig
from ebtune.core.macs import ideal_speedup
from ebtune.core.schedule import Schedule, no_cache
from ebtune.run.apply_file import fit_schedule_file
from ebtune.sampling.samplers import Guidance, Sampler, make_sampler
from ebtune.schedules import ScheduleContext, make_schedule

# tf32 is float32 tensors with TF32 matmuls (`ebtune.bench.command.matmul_precision`).
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}

# Bench schedule name -> (family, params); `file:PATH` entries are exported schedule files.
CASES: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "attn-only": ("intervals", {"attn": 2, "mlp": 1}),
    "mlp-only": ("intervals", {"attn": 1, "mlp": 2}),
    "fora2": ("fora", {"interval": 2}),
    "fora3": ("fora", {"interval": 3}),
    "ebcache-table": ("ebcache-table", {}),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: list[Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> list[list[float]]:
    """Wall times of each fn per round; a round runs every fn once, in order, so drifting machine load
    hits all alike and neighbours in `fns` run back to back."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: list[Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Median wall time of each fn over interleaved rounds (see `interleaved_times`)."""
    return [statistics.median(t) for t in interleaved_times(fns, repeats, warmup, device)]


def random_model(config: DiTConfig, device: torch.device, dtype: torch.dtype) -> DiT:
    """A DiT of `config` with random weights, ready to sample. DiT's init zeroes every adaLN gate and the
    final projection (its output would be exactly 0); here they are random too, so every branch counts
    and a comparison of two samplings (CUDA graphs against eager) can fail."""
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a DiT-XL/2 takes ~20 s to initialise on one CPU thread
        model = DiT(config)
    with torch.no_grad():
        final = model.final_layer
        for weight in (*(block.adaLN_modulation[-1].weight for block in model.blocks),
                       final.adaLN_modulation[-1].weight, final.linear.weight):
            weight.normal_(0, 0.02)
    return model.to(device, dtype).eval().requires_grad_(False)


def bench_schedule(name: str, model_name: str, config: DiTConfig, sampler: Sampler) -> Schedule:
    """The schedule a bench name stands for, built for this sampler and model."""
    if name.startswith(FILE_PREFIX):
        return fit_schedule_file(name[len(FILE_PREFIX):], model_name, config.depth, sampler)[0]
    family, params = CASES[name]
    return make_schedule(family, ScheduleContext(sampler.steps, config.depth, sampler.times), **params)


@dataclass(frozen=True)
class BranchCosts:
    """Seconds of one sampling step: the part no cache skips, and one block's attention and MLP.

    From three measured steps: t_full (all computed), t_attn (every attention reused) and t_mlp
    (every MLP reused): attn = (t_full − t_attn)/depth, mlp = (t_full − t_mlp)/depth,
    fixed = t_full − depth·(attn + mlp).
    """

    fixed: float
    attn: float
    mlp: float

    @classmethod
    def from_steps(cls, t_full: float, t_attn: float, t_mlp: float, depth: int) -> "BranchCosts":
        attn, mlp = (t_full - t_attn) / depth, (t_full - t_mlp) / depth
        return cls(fixed=t_full - depth * (attn + mlp), attn=attn, mlp=mlp)

    def seconds(self, schedule: Schedule) -> float:
        """Predicted sampling time of `schedule`: every step's fixed part plus the branches it computes."""
        computed_attn, computed_mlp = sum(map(sum, schedule.attn)), sum(map(sum, schedule.mlp))
        return schedule.steps * self.fixed + computed_attn * self.attn + computed_mlp * self.mlp


@dataclass(frozen=True)
class Setup:
    """One measured configuration: the model, sampler, inputs and the optional fast path."""

    model: DiT
    sampler: Sampler
    noise: torch.Tensor
    labels: torch.Tensor
    fast: FastPath | None

    @property
    def device(self) -> torch.device:
        return self.noise.device

    def attach(self, stack: ExitStack, schedule: Schedule) -> CachedModel:
        """Attach a cache for `schedule` (and the fast path over it) to `stack`."""
        cache = stack.enter_context(CachedModel(self.model, schedule))
        if self.fast is not None:
            stack.enter_context(self.fast.attach(cache))
        return cache

    def run(self, schedule: Schedule | None) -> torch.Tensor:
        """One sampling run; `None` samples the bare model (eager only: the fast path needs a cache)."""
        with ExitStack() as stack:
            if schedule is None:
                return self.sampler.sample(self.model, self.noise, self.labels)
            return self.sampler.sample(self.model, self.noise, self.labels, self.attach(stack, schedule))

    def branch_costs(self, repeats: int, warmup: int) -> BranchCosts:
        """Time step 0 uncached, with every attention reused, with every MLP reused (see `BranchCosts`)."""
        depth = self.model.config.depth
        with ExitStack() as stack, torch.no_grad():
            cache = self.attach(stack, no_cache(self.sampler.steps, depth))

            def step(state: tuple[bool, bool]) -> Callable[[], object]:
                def fn() -> object:
                    cache.set_step(0, state)
                    return self.sampler.model_output(self.model, self.noise, 0, self.labels)
                return fn

            step((True, True))()  # fills the cache, so the reuse states have tensors to reuse
            step((False, False))()  # the fourth fast-path variant, compiled before any timed run
            t_full, t_attn, t_mlp = interleaved_medians(
                [step((True, True)), step((False, True)), step((True, False))], repeats, warmup, self.device)
        return BranchCosts.from_steps(t_full, t_attn, t_mlp, depth)


def make_setup(config: DiTConfig, steps: int, batch: int, guidance: Guidance, device: torch.device,
               dtype: torch.dtype, fast: FastPath | None, sampler: str = BenchSettings.sampler) -> Setup:
    model = random_model(config, device, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=generator)
    labels = torch.arange(batch) % config.num_classes
    return Setup(model, make_sampler(sampler, steps, guidance), noise.to(device, dtype), labels.to(device), fast)


def _run_arg(setup: Setup, name: str, schedule: Schedule) -> Schedule | None:
    """What `Setup.run` samples for a bench row: eager "none" is the bare model, the true baseline (the
    fast path needs a cache to dispatch on, so there it is the all-compute schedule)."""
    return None if name == "none" and setup.fast is None else schedule


def measure(setup: Setup, names: list[str], schedules: list[Schedule], repeats: int, warmup: int,
            eager: Setup | None = None) -> list[dict]:
    """Rows of seconds, speedups, ideals, efficiencies and peak memory, one per schedule (names[0] is none).

    Args:
        eager: the same model and inputs without the fast path, timed in the same interleaved rounds
            as `setup`, each eager run right after the fast run of its schedule; a row's `vs_eager` is
            the median over rounds of eager seconds / fast seconds of those neighbours.
    """
    config, dev = setup.model.config, setup.device
    runs = [_run_arg(setup, name, s) for name, s in zip(names, schedules)]
    costs = setup.branch_costs(repeats * 5, warmup)
    graphs = setup.fast is not None and setup.fast.graphs is not None
    method = METHODS["cuda-graphs" if graphs else dev.type]
    peaks, tensor_peaks = [], []
    for run in runs:
        setup.run(run)  # warm: compiled graphs and allocator pools exist before the peak is reset
        reset_peak(dev)
        with TensorPeak(dev) as tensors:
            setup.run(run)
        peaks.append(peak_bytes(dev, reserved=graphs))
        tensor_peaks.append(None if graphs else tensors.bytes)  # replays allocate nothing the count could see
    fns = [lambda r=r: setup.run(r) for r in runs]
    if eager is not None:  # each schedule's eager run right after its fast one, so their ratio is of neighbours
        eager_fns = [lambda r=_run_arg(eager, name, s): eager.run(r) for name, s in zip(names, schedules)]
        fns = [fn for pair in zip(fns, eager_fns) for fn in pair]
    times = interleaved_times(fns, repeats, warmup, dev)
    step = 2 if eager is not None else 1
    seconds = [statistics.median(t) for t in times[::step]]
    # vs_eager: median over rounds of eager / fast seconds of the same round's neighbouring runs.
    vs_eager = [statistics.median(e / f for e, f in zip(te, tf)) for tf, te in zip(times[::2], times[1::2])] if eager else []
    eager_seconds = [statistics.median(t) for t in times[1::2]] if eager else []
    model_batch = setup.noise.shape[0] * (2 if setup.sampler.guidance.active else 1)
    base = seconds[names.index("none")]
    rows = []
    uncached_tensors = tensor_peaks[names.index("none")]
    for name, schedule, sec, peak, tensor_peak in zip(names, schedules, seconds, peaks, tensor_peaks):
        speedup, ideal = base / sec, ideal_speedup(config, schedule)
        time_ideal = costs.seconds(no_cache(schedule.steps, config.depth)) / costs.seconds(schedule)
        rows.append({
            "schedule": name, "seconds": round(sec, 4), "speedup": round(speedup, 3), "ideal": round(ideal, 3),
            "time_ideal": round(time_ideal, 3), "efficiency": round(speedup / ideal, 3),
            "time_efficiency": round(speedup / time_ideal, 3), "peak_mem_bytes": peak,
            "peak_tensor_bytes": tensor_peak,
            "tensor_bytes_over_uncached": None if tensor_peak is None else tensor_peak - uncached_tensors,
            "cache_bytes": history_bytes(config, schedule, model_batch, setup.noise.dtype), "memory_method": method,
            "branch_seconds": {"fixed": round(costs.fixed, 6), "attn": round(costs.attn, 6), "mlp": round(costs.mlp, 6)},
        })
        if eager is not None:
            i = names.index(name)
            rows[-1].update(eager_seconds=round(eager_seconds[i], 4), vs_eager=round(vs_eager[i], 3))
    return rows
