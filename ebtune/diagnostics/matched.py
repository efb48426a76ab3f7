"""Three matched runs and their per-step table: no cache, the schedule without its ε scaling, and
the schedule with it, from the same x_T, labels and step-noise seed, so differences are the cache's
and the correction's alone."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ebtune.core.schedule import BRANCHES, Schedule
from ebtune.diagnostics.exposure import RunTrace, nominal_snr, real_eps_norms, trace_run
from ebtune.sampling.samplers import Sampler

RUNS = ("nocache", "unscaled", "scaled")  # (a) no cache, (b) ε factors all 1, (c) the schedule as given
PER_RUN = ("eps_norm", "gap", "snr", "attn_err", "mlp_err", "eps_err", "eps_err_cos")

# The CSV's columns, in order, with their meaning; per-run columns are `<measure>_<run>`.
COLUMNS: dict[str, str] = {
    "step": "sampling step i (0 = noisiest)",
    "t": "normalised time (1 at step 0)",
    "timestep": "the model's timestep at step i",
    "alpha_bar": "ᾱ_t at step i",
    "snr_nominal": "ᾱ/(1−ᾱ)",
    "eps_scale": "the schedule's ε factor b(t) at step i",
    "reuse_attn": "share of blocks reusing attention at step i",
    "reuse_mlp": "share of blocks reusing the MLP at step i",
    "eps_norm_real": "‖ε‖ on forward-noised real data (NaN: no real data for this model)",
    **{f"{m}_{r}": d for r in RUNS for m, d in {
        "eps_norm": "‖ε̂‖: mean per-image RMS of the ε used",
        "gap": "‖ε̂‖ − ‖ε‖_real, the exposure-bias gap",
        "snr": "estimated SNR of x̂_t (snr_estimate)",
        "attn_err": "relative RMS error of cached attention outputs (reuse steps)",
        "mlp_err": "relative RMS error of cached MLP outputs (reuse steps)",
        "eps_err": "relative RMS of ε̂ − ε̂_full on the same x̂_t (reuse steps)",
        "eps_err_cos": "cosine of the ε errors at this and the previous reuse step",
    }.items()},
}


@dataclass(frozen=True)
class Diagnosis:
    """The per-step table (column → (K,) array, in `COLUMNS` order) and the three traces."""

    columns: dict[str, np.ndarray]
    traces: dict[str, RunTrace]
    has_real: bool


@torch.no_grad()
def diagnose(sampler: Sampler, model: nn.Module, schedule: Schedule, noise: torch.Tensor, labels: torch.Tensor,
             seed: int = 0, x0: torch.Tensor | None = None, x0_labels: torch.Tensor | None = None) -> Diagnosis:
    """Run (a) no cache, (b) `schedule` with ε factors 1, (c) `schedule`, all with step noise from
    `seed`, and tabulate them per step.

    Args:
        noise, labels: x_T (N, C, H, W) and classes shared by the three runs.
        x0, x0_labels: real data for the training-distribution ‖ε‖ (None: the gap columns are NaN).
    """
    K = sampler.steps
    unscaled = schedule.with_eps_scale((1.0,) * K)
    traces = {"nocache": trace_run(sampler, model, noise, labels, None, seed),
              "unscaled": trace_run(sampler, model, noise, labels, unscaled, seed)}
    # Same schedule, same seed: the same run; no need to sample it twice.
    traces["scaled"] = traces["unscaled"] if schedule == unscaled else trace_run(sampler, model, noise, labels, schedule, seed)
    real = (real_eps_norms(sampler, model, x0, labels if x0_labels is None else x0_labels, seed)
            if x0 is not None else np.full(K, np.nan))
    cols: dict[str, np.ndarray] = {
        "step": np.arange(K),
        "t": np.asarray(sampler.times),
        "timestep": np.array([sampler.model_timestep(i) for i in range(K)]),
        "alpha_bar": sampler.diffusion.alphas_cumprod[::-1].copy(),
        "snr_nominal": nominal_snr(sampler),
        "eps_scale": np.asarray(schedule.eps_scale),
        **{f"reuse_{b}": 1.0 - np.array([np.mean(row) for row in schedule.mask(b)]) for b in BRANCHES},
        "eps_norm_real": real,
    }
    for r, tr in traces.items():
        per_run = {"eps_norm": tr.eps_norm, "gap": tr.eps_norm - real, "snr": tr.snr, "attn_err": tr.attn_err,
                   "mlp_err": tr.mlp_err, "eps_err": tr.eps_err, "eps_err_cos": tr.eps_err_cos}
        cols.update({f"{m}_{r}": per_run[m] for m in PER_RUN})
    assert list(cols) == list(COLUMNS)
    return Diagnosis(cols, traces, x0 is not None)
