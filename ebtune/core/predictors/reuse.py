"""Reuse: a skipped step returns the last computed output (FORA, EB-Cache; ebtune's default)."""
from __future__ import annotations

import torch

from ebtune.core.predictors.base import History, Predictor


class Reuse(Predictor):
    """The last computed ungated output, unchanged; one tensor per slot, no arithmetic.

    Raises:
        ValueError: an order other than 0 (reuse has none; choose taylor or lagrange to forecast).
    """

    def __init__(self, order: int = 0) -> None:
        if order != 0:
            raise ValueError(f"reuse has no order (got {order!r}); use order 0, or predictor taylor or lagrange")
        super().__init__(order)

    def observe(self, history: History | None, step: int, out: torch.Tensor) -> History:
        return History((step,), (out,))

    def predict(self, history: History, step: int) -> torch.Tensor:
        return history.tensors[0]

    def macs(self, points: int) -> tuple[int, int]:
        return 0, 0
