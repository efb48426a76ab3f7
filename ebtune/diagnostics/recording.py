"""Observers of the one sampling loop: what the model saw and predicted at each step, and how far
each cached branch was from what computing it would have given.

Both attach while a loop runs and detach exactly (context managers, `try/finally`). Neither copies
the loop or the block: `StepRecorder` is a forward hook on the model, and `CacheErrorProbe` wraps
the cache engine's branch callables from outside, evaluating the uncached alternative with
`CachedModel.what_if`, which leaves the cache as it was.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ebtune.cache.adapters import adapter_for
from ebtune.cache.engine import CachedModel
from ebtune.core.schedule import BRANCHES
from ebtune.sampling.samplers import Sampler

_ALL = (True, True)


def image_rms(x: torch.Tensor) -> torch.Tensor:
    """Per-image RMS √(mean over C·H·W of x²): (N, ...) → (N,) float64."""
    return x.double().flatten(1).pow(2).mean(dim=1).sqrt()


def _relative_rms(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖ over the whole tensor (0 where both vanish)."""
    ref = reference.double().norm()
    return float((value.double() - reference.double()).norm() / ref) if ref > 0 else 0.0


class StepRecorder:
    """Records, per sampling step i, the model's input x̂_t (N, C, H, W) and the guided, unscaled ε.

    A forward hook: one committed model call per step (the loop runs no other unless a policy
    trials states), so the i-th call is step i. `CacheErrorProbe` evaluates its alternatives with
    `module.forward`, which bypasses hooks and so is never recorded here.
    """

    def __init__(self, model: nn.Module, sampler: Sampler, channels: int):
        self.sampler, self.channels = sampler, channels
        self.x: list[torch.Tensor] = []
        self.eps: list[torch.Tensor] = []
        self._model = model
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        eps, _ = self.sampler.guided(output, self.channels)
        self.x.append(args[0][: len(eps)].detach())  # the cond half of a doubled batch is x̂_t itself
        self.eps.append(eps.detach())

    def __enter__(self) -> "StepRecorder":
        self._handle = self._model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class EpsNormRecorder:
    """Records, per model call, the per-image RMS of the guided ε times the step's ε factor (the ε
    the sampler uses): the cheap part of the exposure-bias gap (`image_rms`), kept on the model's
    device until read.

    A forward hook like `StepRecorder`, but it keeps one number per image and step instead of the
    tensors, so a search can leave it on while it samples. Calls arrive batch by batch, K per batch.

    Args:
        eps_scale: the schedule's factor per step (K,); None = 1.
    """

    def __init__(self, model: nn.Module, sampler: Sampler, channels: int, eps_scale: Sequence[float] | None = None):
        self.sampler, self.channels = sampler, channels
        self.eps_scale = np.asarray(eps_scale if eps_scale is not None else [1.0] * sampler.steps, dtype=np.float64)
        self._norms: list[torch.Tensor] = []
        self._model = model
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        eps, _ = self.sampler.guided(output, self.channels)
        self._norms.append(image_rms(eps.detach()))

    def per_image(self) -> np.ndarray:
        """(N, K): row n is image n's ‖ε̂‖ (scaled) at each of the K steps, for the N images sampled so far.

        Raises:
            RuntimeError: the calls do not form whole K-step runs (a policy or probe added forwards).
        """
        K = self.sampler.steps
        if len(self._norms) % K:
            raise RuntimeError(f"recorded {len(self._norms)} model calls, not whole runs of {K} steps")
        runs = [torch.stack(self._norms[b:b + K], dim=1) for b in range(0, len(self._norms), K)]
        return torch.cat(runs).cpu().numpy() * self.eps_scale if runs else np.empty((0, K))

    def __enter__(self) -> "EpsNormRecorder":
        self._handle = self._model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class CacheErrorProbe:
    """On reuse steps, the error of the cache against computing, on the same inputs.

    Per reused (block, branch) slot: relative RMS of the cached ungated output against the branch
    computed on the very input the block passed it (the error the cache injects there). Per reuse
    step: the guided ε of the committed forward minus the guided ε of an all-compute forward on the
    same x̂_t (the error of the step's prediction). Must be entered after `cache` attaches and
    exited before it closes, since it wraps the engine's wrappers.
    """

    def __init__(self, cache: CachedModel, sampler: Sampler, channels: int):
        self.cache, self.sampler, self.channels = cache, sampler, channels
        self.branch_errors: dict[tuple[int, str], list[float]] = {}  # (step, branch) → per reused block
        self.eps_full: dict[int, torch.Tensor] = {}  # step → all-compute guided ε at the same x̂_t
        self._busy = False  # inside an all-compute evaluation: pass through
        self._restore: list[Callable[[], None]] = []
        self._handle: Any = None

    def _reuses(self, branch: str, block: int) -> bool:
        return not self.cache.schedule.mask(branch)[self.cache.step][block]

    def _step_reuses(self) -> bool:
        return not all(all(self.cache.schedule.mask(b)[self.cache.step]) for b in BRANCHES)

    def _wrap(self, owner: Any, attr: str, block: int, branch: str) -> None:
        inner = getattr(owner, attr)  # the engine's wrapper
        previous = vars(owner)[attr]

        def probed(*args, **kwargs):
            out = inner(*args, **kwargs)
            if not self._busy and self._reuses(branch, block):
                self._busy = True
                try:
                    with self.cache.what_if(_ALL):
                        fresh = inner(*args, **kwargs)
                finally:
                    self._busy = False
                self.branch_errors.setdefault((self.cache.step, branch), []).append(_relative_rms(out, fresh))
            return out

        object.__setattr__(owner, attr, probed)
        self._restore.append(lambda: object.__setattr__(owner, attr, previous))

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._busy or not self._step_reuses():
            return
        self._busy = True
        try:
            with self.cache.what_if(_ALL):
                full = module.forward(*args)  # forward, not __call__: no hook sees this evaluation
        finally:
            self._busy = False
        self.eps_full[self.cache.step] = self.sampler.guided(full, self.channels)[0].detach()

    def __enter__(self) -> "CacheErrorProbe":
        try:
            for block, sites in enumerate(adapter_for(self.cache.model).branch_sites(self.cache.model)):
                for branch in BRANCHES:
                    self._wrap(*sites[branch], block, branch)
            self._handle = self.cache.model.register_forward_hook(self._hook)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
        while self._restore:
            self._restore.pop()()
