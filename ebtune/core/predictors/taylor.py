"""TaylorSeer's forecast (Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with
TaylorSeers", arXiv 2503.06923), generalised to irregular intervals between computations.

TaylorSeer (its Eq. 5-7) estimates the m-th derivative of a branch output F at the latest computed
step s_0 by the m-th backward difference over computations N steps apart, Δ^m F / N^m, and forecasts
step s_0 + k by the truncated Taylor series Σ_{m≤O} Δ^m F / N^m · k^m / m!.

Irregular spacing (computations at s_0 > s_1 > ... > s_O, e.g. after a warm-up or a cool-down, or
chosen by a search): the derivative estimates become Newton divided differences,
    f[s_0] = F(s_0),   f[s_0..s_m] = (f[s_0..s_{m-1}] − f[s_1..s_m]) / (s_0 − s_m),
and F^(m)(s_0) ≈ m!·f[s_0..s_m] (exact for polynomials of degree m; for equal spacing N,
m!·f[s_0..s_m] = Δ^m F / N^m, TaylorSeer's estimate). The forecast at distance k = s − s_0 is then
    F̂(s) = Σ_{m=0}^{n} F^(m)(s_0) k^m / m! = Σ_{m=0}^{n} f[s_0..s_m] k^m,
with n = min(O, computations − 1), evaluated by Horner's rule (f_0 + k(f_1 + k(f_2 + ...))).

A slot keeps f[s_0..s_m] for m = 0..n (O + 1 tensors at most) and the steps s_0..s_n. A new
computation F at step s updates them without the raw outputs: g_0 = F,
g_{m+1} = (g_m − f[s_0..s_m]) / (s − s_m) = f[s, s_0..s_m].

Multiply-adds per output element, for a history of p = n + 1 computations: an observe costs n (one
subtract-and-divide per new difference), a forecast n (one multiply-add per Horner level).
Order 0 keeps the output itself and returns it: reuse, bit for bit.
"""
from __future__ import annotations

import torch

from ebtune.core.predictors.base import History, Predictor, later_step


class Taylor(Predictor):
    """Order-O Taylor forecast from divided differences at the latest computation (module docstring)."""

    def observe(self, history: History | None, step: int, out: torch.Tensor) -> History:
        if history is None:
            return History((step,), (out,))
        later_step(history, step)
        diffs = [out]
        for m in range(min(self.order, len(history.tensors))):
            diffs.append((diffs[m] - history.tensors[m]) / (step - history.steps[m]))
        return History(((step,) + history.steps)[: self.order + 1], tuple(diffs))

    def predict(self, history: History, step: int) -> torch.Tensor:
        k = later_step(history, step)
        out = history.tensors[-1]
        for diff in reversed(history.tensors[:-1]):
            out = torch.add(diff, out, alpha=k)
        return out

    def macs(self, points: int) -> tuple[int, int]:
        return points - 1, points - 1
