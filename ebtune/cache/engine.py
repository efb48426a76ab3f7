"""The cache engine: wraps a model's residual branches so a `Schedule` decides compute or skip.

Attaching replaces, per block, the attention and MLP branch callables named by the model's adapter
with a wrapper. At a compute slot the wrapper calls the original and, if the schedule ever skips that
branch of that block (`keeps`), lets the branch's predictor observe its (ungated) output into the
slot's history; at a skipped slot it returns the predictor's output for this step without running the
branch (the last computed tensor for the default `reuse`, a forecast for `taylor` and the like), and
the block applies the current step's gate to it. The sampler owns the lifecycle: `reset()` before a
sampling loop and `set_step(i)` before step i. `close()` (or leaving the `with`) restores the model
exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ebtune.cache.adapters import Adapter, BranchSite, adapter_for
from ebtune.core.predictors import History
from ebtune.core.schedule import BRANCHES, Schedule

_MARK = "_ebtune_cache"


class CacheState:
    """The slots' histories of ungated branch outputs, keyed by (block, branch); one owner, reset per
    sampling loop. A `History` is immutable, so a shallow copy is an exact snapshot."""

    def __init__(self) -> None:
        self._slots: dict[tuple[int, str], History] = {}

    def put(self, key: tuple[int, str], value: History) -> None:
        self._slots[key] = value

    def find(self, key: tuple[int, str]) -> History | None:
        """The slot's history, or None before its first computation."""
        return self._slots.get(key)

    def get(self, key: tuple[int, str]) -> History:
        try:
            return self._slots[key]
        except KeyError:
            raise RuntimeError(
                f"block {key[0]} {key[1]} is scheduled for reuse but nothing is cached; call reset() "
                "only before a sampling loop and start the loop at step 0"
            ) from None

    def copy(self) -> dict[tuple[int, str], History]:
        """A shallow copy (histories are replaced, never changed in place, so this is enough)."""
        return dict(self._slots)

    def replace(self, slots: dict[tuple[int, str], History]) -> None:
        self._slots = dict(slots)

    def reset(self) -> None:
        self._slots.clear()


class CachedModel:
    """Handle of an attached cache (a context manager); see the module docstring for the contract.

    Args:
        model: the network; left untouched apart from the wrapped branch callables.
        schedule: decides every (step, block, branch); its depth must equal the adapter's block count.
        adapter: how to find the branches; picked from the model's type when omitted.

    Raises:
        ValueError: the schedule's depth does not match, or the adapter finds no blocks.
        RuntimeError: a cache is already attached to this model.
    """

    def __init__(self, model: nn.Module, schedule: Schedule, adapter: Adapter | None = None):
        if getattr(model, _MARK, None) is not None:
            raise RuntimeError("a cache is already attached to this model; close it before attaching another")
        adapter = adapter or adapter_for(model)
        sites = adapter.branch_sites(model)
        if not sites:
            raise ValueError(f"{type(adapter).__name__} found no blocks in {type(model).__name__}; nothing to cache")
        if len(sites) != schedule.depth:
            raise ValueError(
                f"schedule has {schedule.depth} blocks but the model has {len(sites)}; "
                "build or retarget the schedule for this model's depth"
            )
        self.model = model
        self.schedule = schedule
        self.state = CacheState()
        self.step = 0
        self._restore: list[Callable[[], None]] = []
        self._override: dict[str, bool] | None = None  # one (attn, mlp) state for every block this step
        # Keep every computed output, reused by the schedule or not: set by a loop whose steps may be
        # overridden (a step policy), since an override may reuse what a plain step computed.
        self.keep_all = False
        # Python bools per (branch, step, block): decided before the loop, no tensor logic in forwards.
        self._compute = {branch: schedule.mask(branch) for branch in BRANCHES}
        # Per (branch, block): whether the schedule reuses it at any step, i.e. whether its outputs are worth keeping.
        self._reused = {branch: [not all(row[block] for row in mask) for block in range(schedule.depth)]
                        for branch, mask in self._compute.items()}
        # What a skipped slot returns, per branch; stateless strategies over the histories in `state`.
        self.predictors = {branch: schedule.predictor(branch).build() for branch in BRANCHES}
        try:
            for block, branch_sites in enumerate(sites):
                for branch in BRANCHES:
                    self._wrap(block, branch, branch_sites[branch])
        except BaseException:
            self.close()
            raise
        setattr(model, _MARK, self)

    def _wrap(self, block: int, branch: str, site: BranchSite) -> None:
        owner, attr = site
        had_own = attr in vars(owner)
        previous = vars(owner).get(attr)
        original = getattr(owner, attr)

        def cached_branch(*args, **kwargs):
            if self.computes(block, branch):
                out = original(*args, **kwargs)
                if self.keeps(block, branch):
                    self.observe(block, branch, out)
                return out
            return self.predict(block, branch)

        # Instance attribute shadows the class method; restoring removes it (or puts back the old one).
        object.__setattr__(owner, attr, cached_branch)
        self._restore.append(lambda: object.__setattr__(owner, attr, previous) if had_own else object.__delattr__(owner, attr))

    def computes(self, block: int, branch: str) -> bool:
        """Whether `branch` of `block` runs (True) or reuses its cached output (False) at this step:
        the step's override when one is set, else the schedule."""
        override = self._override
        return override[branch] if override is not None else self._compute[branch][self.step][block]

    def keeps(self, block: int, branch: str) -> bool:
        """Whether a computed output of `branch` of `block` is kept for later steps: the schedule reuses
        that branch at some step, or `keep_all` is set, or this step has an override (it may reuse
        anything later). An all-compute schedule thus keeps nothing, and attention-only caching keeps no
        MLP output. A loop that overrides some steps and not others sets `keep_all`."""
        return self.keep_all or self._override is not None or self._reused[branch][block]

    def observe(self, block: int, branch: str, out: torch.Tensor) -> None:
        """Record `out`, the ungated output `branch` of `block` computed at this step, in its slot."""
        key = (block, branch)
        self.state.put(key, self.predictors[branch].observe(self.state.find(key), self.step, out))

    def predict(self, block: int, branch: str) -> torch.Tensor:
        """The ungated output of `branch` of `block` at this step from its slot's history (the last
        computed tensor itself for reuse, a new tensor for a forecast).

        Raises:
            RuntimeError: nothing was computed in this slot since the last reset.
        """
        return self.predictors[branch].predict(self.state.get((block, branch)), self.step)

    def reset(self) -> None:
        """Forget all cached tensors and go back to step 0 (the sampler calls this per loop)."""
        self.state.reset()
        self.step = 0

    def set_step(self, step: int, state: tuple[bool, bool] | None = None) -> None:
        """Go to `step`. `state` = (compute attention, compute MLP) overrides the schedule for every
        block at this step (a step policy's choice, e.g. calibration); None follows the schedule."""
        if not 0 <= step < self.schedule.steps:
            raise IndexError(f"step {step} is outside the schedule's {self.schedule.steps} steps")
        self.step = step
        self._override = None if state is None else {"attn": bool(state[0]), "mlp": bool(state[1])}

    @contextmanager
    def what_if(self, state: tuple[bool, bool]) -> Iterator[None]:
        """Within the block, every block computes (True) or skips (False) each branch as `state`
        says, and on exit the slots' histories (reuse's tensor, a forecast's differences) and the
        step's state are as before: evaluating a candidate without committing it."""
        slots, override = self.state.copy(), self._override
        self._override = {"attn": bool(state[0]), "mlp": bool(state[1])}
        try:
            yield
        finally:
            self.state.replace(slots)
            self._override = override

    def close(self) -> None:
        while self._restore:
            self._restore.pop()()
        if vars(self.model).get(_MARK) is self:
            delattr(self.model, _MARK)
        self.state.reset()

    def __enter__(self) -> "CachedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cached(model: nn.Module, schedule: Schedule, adapter: Adapter | None = None) -> CachedModel:
    """`with ebtune.cached(model, schedule) as cache:` — attach for the block, restore on exit."""
    return CachedModel(model, schedule, adapter)
