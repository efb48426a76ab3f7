"""The predictor interface: what a cached (block, branch) slot returns at a step it does not compute.

The cache engine (`ebtune.cache.engine.CachedModel`) owns one predictor per branch, built from the
schedule's `PredictorSpec`s, and one `History` per slot in its `CacheState`. When the slot computes,
the engine calls `observe` with the ungated branch output; when it does not, `predict` gives the
ungated output for this step, which the block multiplies by the current step's adaLN gate. A
predictor is a stateless strategy: the history is an immutable value returned by `observe` (no tensor
is written in place), so a shallow copy of the cache's slots is an exact snapshot (`what_if`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class History:
    """What one slot keeps: the steps of the computations it summarises (latest first) and its tensors,
    each shaped like the branch output (N, T, D). How the tensors encode the computations is the
    predictor's business (raw outputs, divided differences)."""

    steps: tuple[int, ...]
    tensors: tuple[torch.Tensor, ...]


class Predictor(abc.ABC):
    """A forecast of a skipped branch output from the slot's computed ones.

    Contract (tested for every registered predictor): order 0 returns the last computed tensor itself
    (reuse, bit for bit); a slot holds at most `tensors` tensors; coefficients depend only on step
    indices (Python numbers known before the loop), never on tensor values.

    Args:
        order: polynomial order O >= 0 of the forecast; while fewer than O + 1 computations exist, the
            predictor uses the orders they support.

    Raises:
        ValueError: order is not an integer >= 0.
    """

    def __init__(self, order: int = 0) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"predictor order must be an integer >= 0, got {order!r}; use 0 (reuse), 1, 2, ...")
        self.order = order

    @property
    def tensors(self) -> int:
        """The most tensors a slot holds: O + 1 (memory per slot = this x the branch output's bytes)."""
        return self.order + 1

    @abc.abstractmethod
    def observe(self, history: History | None, step: int, out: torch.Tensor) -> History:
        """The slot's history after `out` (ungated, (N, T, D)) was computed at `step`; None = empty slot."""

    @abc.abstractmethod
    def predict(self, history: History, step: int) -> torch.Tensor:
        """The ungated branch output forecast for `step` (after the history's latest step)."""

    @abc.abstractmethod
    def macs(self, points: int) -> tuple[int, int]:
        """Multiply-adds per output element of (an observe that leaves `points` computations in the
        history, a predict from a history of `points` computations); `points` <= O + 1."""


def later_step(history: History, step: int) -> int:
    """The distance from the history's latest computation to `step`, which must come after it.

    Raises:
        RuntimeError: `step` is not after the latest computation (a loop that did not reset its cache).
    """
    if step <= history.steps[0]:
        raise RuntimeError(f"a computation at step {step} follows one at step {history.steps[0]}; "
                           "reset the cache before each sampling loop and give each step once")
    return step - history.steps[0]
