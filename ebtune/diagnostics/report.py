"""A diagnosis as files: `diagnostics.csv` (one row per step, `COLUMNS`), `summary.json`, and the
short text the CLI prints."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ebtune.diagnostics.matched import COLUMNS, RUNS, Diagnosis

NO_REAL_DATA = ("no real data for this model: eps_norm_real and gap_* are NaN; compare eps_norm_* against "
                "eps_norm_nocache instead")


def write_csv(diagnosis: Diagnosis, path: Path) -> None:
    """One row per step; NaN is written `nan` (float('nan') reads it back)."""
    cols = diagnosis.columns
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in range(len(cols["step"])):
            writer.writerow([int(cols[c][i]) if c in ("step", "timestep") else repr(float(cols[c][i])) for c in COLUMNS])


def _mean(values: np.ndarray) -> float | None:
    """Mean over the steps where the measure applies; None (JSON null) where it applies nowhere."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def summary(diagnosis: Diagnosis, info: dict[str, Any]) -> dict[str, Any]:
    """Step means per run: the gap (signed and absolute), ‖ε̂‖ against no cache, log SNR against the
    nominal, the cache errors and the error cosine; `info` (model, schedule, ...) is kept as given.

    The log SNR ratio is averaged over t ≤ 0.5 only: earlier, the nominal SNR is so small that the
    estimate is dominated by its standard error (see `snr_estimate`).
    """
    cols = diagnosis.columns
    late = cols["t"] <= 0.5
    runs = {}
    for r in RUNS:
        runs[r] = {
            "mean_gap": _mean(cols[f"gap_{r}"]),
            "mean_abs_gap": _mean(np.abs(cols[f"gap_{r}"])),
            "mean_eps_norm_vs_nocache": _mean(cols[f"eps_norm_{r}"] - cols["eps_norm_nocache"]),
            "mean_log_snr_ratio_late": _mean(np.log(cols[f"snr_{r}"][late] / cols["snr_nominal"][late])),
            **{f"mean_{m}": _mean(cols[f"{m}_{r}"]) for m in ("attn_err", "mlp_err", "eps_err", "eps_err_cos")},
        }
    notes = [] if diagnosis.has_real else [NO_REAL_DATA]
    return {**info, "real_data": diagnosis.has_real, "notes": notes, "runs": runs}


def _fmt(v: float | None, spec: str = "+.4f") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def summary_lines(s: dict[str, Any]) -> list[str]:
    """A few lines: per run the mean gap, ‖ε̂‖ vs no cache, log SNR ratio and the cache errors."""
    lines = [f"{s['model']} {s['sampler']} {s['steps']} steps, cfg {s['cfg_scale']}, n={s['n']}: {s['schedule']}"]
    for r, m in s["runs"].items():
        lines.append(
            f"  {r:9s} mean gap {_fmt(m['mean_gap'])} (|gap| {_fmt(m['mean_abs_gap'], '.4f')}), "
            f"‖ε̂‖ vs no cache {_fmt(m['mean_eps_norm_vs_nocache'])}, log SNR/nominal (t≤0.5) {_fmt(m['mean_log_snr_ratio_late'], '+.3f')}, "
            f"attn err {_fmt(m['mean_attn_err'], '.3f')}, mlp err {_fmt(m['mean_mlp_err'], '.3f')}, "
            f"ε err {_fmt(m['mean_eps_err'], '.3f')}, err cos {_fmt(m['mean_eps_err_cos'], '+.2f')}"
        )
    return lines + [f"  note: {n}" for n in s["notes"]]


def write_summary(s: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(s, indent=2, default=str))
