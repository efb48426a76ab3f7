"""Exposure-bias diagnostics: per-step ‖ε̂‖ gap, SNR and cache errors along matched sampling runs.

`trace_run` measures one run, `diagnose` three matched ones (no cache, the schedule without and with
its ε scaling), `gap_profile` only the gap (cheap enough for a search); `report` and `plots` write
them out.
"""
from __future__ import annotations

from ebtune.diagnostics.exposure import (
           RunTrace,
           gap_profile,
           image_rms,
           nominal_snr,
           real_eps_norms,
           snr_estimate,
           trace_run,
)
from ebtune.diagnostics.matched import COLUMNS, RUNS, Diagnosis, diagnose

__all__ = ["COLUMNS", "RUNS", "Diagnosis", "RunTrace", "diagnose", "gap_profile", "image_rms", "nominal_snr",
           "real_eps_norms", "snr_estimate", "trace_run"]
