"""Lagrange extrapolation: the polynomial through the last O + 1 computed outputs, evaluated ahead.

The classic interpolating polynomial (Lagrange form; e.g. Süli & Mayers, "An Introduction to
Numerical Analysis", §6.2) through the computations (s_i, F_i), i = 0..n, n = min(O, computations − 1):
    F̂(s) = Σ_i w_i F_i,   w_i = Π_{l≠i} (s − s_l) / (s_i − s_l).
Unlike `taylor` (derivatives estimated at the latest step), it passes through every kept point, so
for n ≥ 2 the two differ; for n = 1 both are the line through the last two computations. The weights
depend only on step indices and are computed in Python (float64) before they touch a tensor.

A slot keeps the raw outputs F_0..F_n (O + 1 tensors at most). Multiply-adds per output element:
an observe costs 0, a forecast from p = n + 1 ≥ 2 points costs p (one per weighted term); a single
point is returned as it is (reuse, bit for bit, so order 0 is reuse).
"""
from __future__ import annotations

import math

import torch

from ebtune.core.predictors.base import History, Predictor, later_step


def lagrange_weights(points: tuple[int, ...], step: int) -> list[float]:
    """w_i = Π_{l≠i} (step − s_l)/(s_i − s_l) for the distinct steps `points`."""
    return [math.prod((step - sl) / (si - sl) for l, sl in enumerate(points) if l != i) for i, si in enumerate(points)]


class Lagrange(Predictor):
    """Order-O polynomial extrapolation through the last O + 1 computations (module docstring)."""

    def observe(self, history: History | None, step: int, out: torch.Tensor) -> History:
        if history is None:
            return History((step,), (out,))
        later_step(history, step)
        keep = self.order + 1
        return History(((step,) + history.steps)[:keep], ((out,) + history.tensors)[:keep])

    def predict(self, history: History, step: int) -> torch.Tensor:
        later_step(history, step)
        if len(history.steps) == 1:
            return history.tensors[0]
        weights = lagrange_weights(history.steps, step)
        out = history.tensors[0] * weights[0]
        for weight, value in zip(weights[1:], history.tensors[1:]):
            out = torch.add(out, value, alpha=weight)
        return out

    def macs(self, points: int) -> tuple[int, int]:
        return 0, (points if points > 1 else 0)
