"""CUDA graphs over the fast path: one graph per distinct step pattern, replayed on static buffers.

A step pattern is what every block does at a step: per block and branch, computed or reused, and
whether a computed output is kept (`CachedModel.keeps`); FORA(2) has two, a mixed interval schedule up
to four, an all-compute schedule one that keeps nothing. The first step of a pattern (and input shape)
runs the model once on a side stream (compiling, and allocating the static cache buffers), then
captures the whole model call into a `torch.cuda.CUDAGraph`; every step replays its pattern's graph
after copying the step's inputs into the static input buffers, so no Python, guard or launch cost is
paid per block. Cached branch outputs live in `StaticCache`: one persistent buffer per (block,
branch), written in place by the computing step and read by the reusing ones, allocated outside any
graph.

Why it is correct: a graph reads only parameters, the static inputs and the static cache buffers,
none of which any graph's memory pool holds, and writes its own intermediates, the cache buffers of
the branches it computes and its output. The graphs share one pool, so one graph's replay may
overwrite another's output; each output is cloned right after its replay, so none is read later.
Warm-up then replay runs a step twice: its computed branches depend only on the step's inputs and
its reused ones are only read, so the second run writes what the first did.

Reuse only: a forecast (`Schedule.forecasts`) makes a new tensor from a history per step, which the
static buffers do not hold; `FastPath(graphs=...)` refuses such a schedule (`require_reuse`), and the
compiled fast path without graphs forecasts. Static schedules only: a `StepPolicy` (calibration)
evaluates candidates under `what_if`, which restores the cache by swapping tensors, not by rewriting
static buffers. One `CudaGraphs` serves one model at one input shape; the fast path
(`FastPath(graphs=CudaGraphs())`) routes the model call here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ebtune.core.schedule import Schedule


class StaticCache:
    """Ungated branch outputs in persistent buffers keyed by (block, branch), written in place: the
    `put`/`get` of the fast path's reuse slots, at fixed addresses a captured graph can read and write."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def put(self, key: tuple[int, str], value: torch.Tensor) -> None:
        buffer = self._buffers.get(key)
        if buffer is None:
            # Allocated during the uncaptured warm-up run, so no graph's pool owns it.
            assert value.device.type != "cuda" or not torch.cuda.is_current_stream_capturing(), \
                "static cache buffers are allocated before capture"
            self._buffers[key] = value.clone()
        else:
            buffer.copy_(value)

    def get(self, key: tuple[int, str]) -> torch.Tensor:
        try:
            return self._buffers[key]
        except KeyError:
            raise RuntimeError(f"block {key[0]} {key[1]} is scheduled for reuse but nothing is cached; "
                               "the schedule must compute every branch at step 0") from None


def require_reuse(schedule: Schedule) -> None:
    """Raises ValueError, naming the fix, if the schedule forecasts any branch (see the module docstring)."""
    if schedule.forecasts:
        raise ValueError(f"CUDA graphs replay reused outputs from static buffers and cannot forecast (attn "
                         f"{schedule.attn_predictor}, mlp {schedule.mlp_predictor}); sample with cuda_graphs=false")


def require_cuda(model: nn.Module) -> None:
    """Raises RuntimeError, naming the fix, unless the model's parameters are on a CUDA device."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need the model on a CUDA device, and it is on {device.type}; "
                           "sample with cuda_graphs=false (the compiled fast path still applies)")


class CudaGraphs:
    """The captured graphs of one model at one input shape, with their static inputs and cache buffers.

    Made once and passed to `FastPath(graphs=...)`; it outlives each attachment, so later sampling
    runs, whatever their schedule, replay the patterns captured before (a pattern's graph does not
    depend on the schedule, and every loop's step 0 computes, refilling the buffers).
    """

    def __init__(self) -> None:
        self.cache = StaticCache()
        self._model: nn.Module | None = None
        self._shapes: tuple | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._graphs: dict[tuple[tuple[bool, bool], ...], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool: tuple[int, int] | None = None

    def bind(self, model: nn.Module) -> None:
        """Check that `model` can use these graphs (on CUDA, the model they were captured for).

        Raises:
            RuntimeError: the model is not on CUDA, or these graphs belong to another model.
        """
        require_cuda(model)
        if self._model is None:
            self._model, self._pool = model, torch.cuda.graph_pool_handle()
        elif self._model is not model:
            raise RuntimeError("these CUDA graphs were captured for another model; make a CudaGraphs per model")

    def run(self, pattern: tuple[tuple[bool, bool], ...], forward: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        """`forward(*args)` for a step of `pattern` (per block and branch: computed, kept), as a replay
        of that pattern's graph, captured on its first step.

        Raises:
            RuntimeError: the inputs' shapes differ from those the graphs were captured for.
        """
        shapes = tuple((tuple(a.shape), a.dtype) for a in args)
        if self._shapes is None:
            self._shapes, self._inputs = shapes, tuple(a.clone() for a in args)
        elif shapes != self._shapes:
            raise RuntimeError(f"these CUDA graphs were captured for inputs {self._shapes}, not {shapes}; "
                               "make a CudaGraphs per batch size")
        else:
            for buffer, a in zip(self._inputs, args):
                buffer.copy_(a)
        if pattern not in self._graphs:
            self._graphs[pattern] = self._capture(forward)
        graph, out = self._graphs[pattern]
        graph.replay()
        return out.clone()

    def _capture(self, forward: Callable[..., torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: compiles and allocates the cache buffers
            forward(*self._inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = forward(*self._inputs)
        return graph, out
