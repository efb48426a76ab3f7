"""Peak memory of one measured run: GPU allocator peak on CUDA, process peak RSS on CPU, and on
either the peak of live tensor bytes above the run's start (`TensorPeak`).

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (tensor bytes; the
allocator's cached free blocks are not counted). CPU: the kernel's peak resident set size (VmHWM of
/proc/self/status, the figure `getrusage` reports as ru_maxrss), reset before the run by writing 5 to
/proc/self/clear_refs (Linux ≥ 4.0) after glibc's `malloc_trim` hands freed heap back, so the peak
is the run's own and not an earlier one's. `getrusage` alone cannot be reset, and tracemalloc does
not see torch's allocations.

`TensorPeak` counts tensor memory only: the torch profiler's allocator records (`profile_memory`:
every CPU allocation and free by any op, compiled kernels included, in time order), summed into the
live bytes over time. Its peak above the start is what a run adds to the model and its inputs,
without the allocator's or the kernel's slack that RSS carries, so cached and uncached runs can be
compared to the byte with the cache's own size.

`history_bytes` is that size as the schedule implies it: per (block, branch) slot the schedule skips
somewhere, the tensors its predictor keeps (`Predictor.tensors`: 1 for reuse, O + 1 for an order-O
forecast) times one ungated branch output (model batch × tokens × hidden × element size).
"""
from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ebtune.core.dit import DiTConfig
from ebtune.core.schedule import BRANCHES, Schedule

METHODS = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "peak RSS (VmHWM, reset via /proc/self/clear_refs)",
           # A CUDA graph's replay allocates nothing (its intermediates live in the graph's pool, reserved at
           # capture), so allocated bytes miss them; reserved bytes count the pools.
           "cuda-graphs": "torch.cuda.max_memory_reserved (graph pools included)"}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def history_bytes(config: DiTConfig, schedule: Schedule, model_batch: int, dtype: torch.dtype) -> int:
    """Bytes the cache's slot histories hold at most under `schedule` (see the module docstring); a
    slot never skipped keeps nothing, as the engine keeps only what a skipped step may read."""
    output = model_batch * config.num_patches * config.hidden_size * torch.empty((), dtype=dtype).element_size()
    slots = 0
    for branch in BRANCHES:
        kept = sum(not all(row[block] for row in schedule.mask(branch)) for block in range(schedule.depth))
        slots += kept * schedule.predictor(branch).build().tensors
    return slots * output


def reset_peak(device: torch.device) -> None:
    """Start a new peak at the current usage.

    Raises:
        RuntimeError: on CPU, the kernel does not let this process reset its peak RSS.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:
        raise RuntimeError(f"cannot reset the peak RSS ({e}); CPU peak memory needs Linux >= 4.0") from None


def peak_bytes(device: torch.device, reserved: bool = False) -> int:
    """Peak since the last `reset_peak`, in bytes; on CUDA allocated bytes, or reserved ones if `reserved`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int((torch.cuda.max_memory_reserved if reserved else torch.cuda.max_memory_allocated)(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status; CPU peak memory needs Linux")


class TensorPeak:
    """`with TensorPeak(device) as peak: run()`, then `peak.bytes`: the most tensor bytes alive at once
    during the block beyond those alive at its start. CUDA: the allocator's peak over its start; CPU:
    the profiler's allocation and free records summed in time order."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = 0

    def __enter__(self) -> "TensorPeak":
        if self.device.type == "cuda":
            reset_peak(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes = peak_bytes(self.device) - self._start
            return
        self._prof.__exit__(*exc)
        records = sorted((e.start_ns(), e.nbytes()) for e in self._prof.profiler.kineto_results.events()
                         if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
        live = 0
        for _, nbytes in records:
            live += nbytes
            self.bytes = max(self.bytes, live)
