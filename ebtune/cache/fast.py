"""The fast path: every DiT block runs as one `torch.compile`d graph per cache state.

Layered on an attached `CachedModel`, as `step_counter` is: `FastPath().attach(cache)` replaces each
block's `forward` with a dispatcher that asks the cache what the block does at this step
(`cache.computes`), runs the compiled step for that state and keeps the branch outputs in the
cache's own `CacheState`. A skipped branch's output comes from the cache's predictor, evaluated
eagerly before the compiled step (a forecast is a few elementwise multiply-adds whose coefficients
depend on the step), and enters the graph as the given tensor, exactly like a reused one. The four
states (compute both, attention only, MLP only, reuse both) are four static-shape graphs; dynamo
tells them apart by which branch outputs are passed in, and all blocks of one shape share them, so
no cache decision breaks a graph or recompiles mid-run. A reused branch is not traced at all: its
norm and modulate are skipped with it. The adaLN projection still runs whole, since its gates are
needed either way and it is 6·D² of a block's ~12·T·D² MACs.

Dynamo keeps at most `torch._dynamo.config.recompile_limit` (8) graphs per function: two input
shapes or dtypes. A process that samples more shapes calls `torch._dynamo.reset()` between them.
Eager (no fast path) stays the default. `FastPath(graphs=CudaGraphs())` (CUDA only) also replays one
CUDA graph per distinct step pattern over static cache buffers (`ebtune.cache.graphs`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ebtune.cache.adapters import adapter_for
from ebtune.cache.engine import CachedModel
from ebtune.cache.graphs import CudaGraphs, StaticCache, require_reuse
from ebtune.core.dit import DiTBlock
from ebtune.core.schedule import BRANCHES

_MARK = "_ebtune_fast_path"
_MISSING = object()

StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def block_step(
    block: DiTBlock, x: torch.Tensor, c: torch.Tensor, attn: torch.Tensor | None, mlp: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`DiTBlock.forward` with either ungated branch output given (reused) instead of computed.

    Calls the class's branch methods, not the instance's, so the cache engine's eager wrappers are
    bypassed and never traced.

    Args:
        x: (N, T, D) tokens; c: (N, D) conditioning; attn, mlp: (N, T, D) cached ungated branch
            outputs, or None to compute that branch.
    Returns:
        The block's output and the two ungated branch outputs (given or computed), (N, T, D) each.
    """
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.adaLN_modulation(c).chunk(6, dim=1)
    if attn is None:
        attn = DiTBlock.attn_branch(block, x, shift_msa, scale_msa)  # (N, T, D), ungated
    x = x + gate_msa.unsqueeze(1) * attn  # (N, T, D)
    if mlp is None:
        mlp = DiTBlock.mlp_branch(block, x, shift_mlp, scale_mlp)  # (N, T, D), ungated
    x = x + gate_mlp.unsqueeze(1) * mlp  # (N, T, D)
    return x, attn, mlp


class _Slots:
    """The cache's slots through its predictors, as the `put`/`get` of a `StaticCache`: `put` observes a
    computed output at the cache's step, `get` predicts the skipped one."""

    def __init__(self, cache: CachedModel):
        self.cache = cache

    def put(self, key: tuple[int, str], value: torch.Tensor) -> None:
        self.cache.observe(*key, value)

    def get(self, key: tuple[int, str]) -> torch.Tensor:
        return self.cache.predict(*key)


@dataclass(frozen=True)
class FastPath:
    """How to compile the blocks: a `torch.compile` backend ("inductor"; "eager" or "aot_eager"
    trace the same graphs without generating code, for tests), and optionally the CUDA graphs each
    step pattern replays (the model must be on a CUDA device; one `CudaGraphs` per model and batch)."""

    backend: str = "inductor"
    graphs: CudaGraphs | None = None

    def attach(self, cache: CachedModel) -> "FastBlocks":
        return FastBlocks(cache, self)


class FastBlocks:
    """Handle of a fast path on `cache.model` (a context manager); `close()` restores every block's
    `forward`. Close it before the cache (nested `with` does).

    Raises:
        RuntimeError: torch.compile is unsupported here, a fast path is already attached, or
            graphs are given and the model is not on a CUDA device (or not theirs).
        TypeError: a block is not ebtune's `DiTBlock` (other families run eager).
    """

    def __init__(self, cache: CachedModel, fast: FastPath):
        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("torch.compile is not supported on this Python/platform; sample without the fast path")
        model = cache.model
        if getattr(model, _MARK, None) is not None:
            raise RuntimeError("a fast path is already attached to this model; close it first")
        blocks = [sites["attn"][0] for sites in adapter_for(model).branch_sites(model)]
        for block in blocks:
            if type(block) is not DiTBlock:
                raise TypeError(f"the fast path compiles ebtune's DiTBlock, not {type(block).__name__}; sample eager")
        if fast.graphs is not None:
            require_reuse(cache.schedule)
            fast.graphs.bind(model)
        self.model = model
        # What each block's (and the model's) instance dict held under "forward" before (usually nothing),
        # to restore exactly.
        self._previous = [(block, vars(block).get("forward", _MISSING)) for block in blocks]
        step: StepFn = torch.compile(block_step, backend=fast.backend, dynamic=False, fullgraph=True)
        store = _Slots(cache) if fast.graphs is None else fast.graphs.cache
        for index, block in enumerate(blocks):
            object.__setattr__(block, "forward", self._dispatcher(cache, store, index, block, step))
        if fast.graphs is not None:  # the whole model call becomes a replay of the step pattern's graph
            self._previous.append((model, vars(model).get("forward", _MISSING)))
            graphs, forward, depth = fast.graphs, model.forward, len(blocks)

            def replay(*args: torch.Tensor) -> torch.Tensor:
                # What a step computes and what it keeps both shape its graph (a kept branch is copied into
                # its static buffer), so a schedule that never reuses a branch does not pay for that copy.
                pattern = tuple((cache.computes(block, branch), cache.keeps(block, branch))
                                for block in range(depth) for branch in BRANCHES)
                return graphs.run(pattern, forward, *args)

            object.__setattr__(model, "forward", replay)
        setattr(model, _MARK, self)

    @staticmethod
    def _dispatcher(cache: CachedModel, store: _Slots | StaticCache, index: int, block: DiTBlock,
                    step: StepFn) -> Callable[..., torch.Tensor]:
        keys = {branch: (index, branch) for branch in ("attn", "mlp")}

        def forward(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            given = {b: None if cache.computes(index, b) else store.get(k) for b, k in keys.items()}
            x, attn, mlp = step(block, x, c, given["attn"], given["mlp"])
            for branch, out in (("attn", attn), ("mlp", mlp)):
                if given[branch] is None and cache.keeps(index, branch):
                    store.put(keys[branch], out)
            return x

        return forward

    def close(self) -> None:
        while self._previous:
            block, previous = self._previous.pop()
            if previous is _MISSING:
                object.__delattr__(block, "forward")
            else:
                object.__setattr__(block, "forward", previous)
        if vars(self.model).get(_MARK) is self:
            delattr(self.model, _MARK)

    def __enter__(self) -> "FastBlocks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
