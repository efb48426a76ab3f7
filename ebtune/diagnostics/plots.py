"""PNG plots of a diagnosis (matplotlib, Agg): ‖ε̂‖ and the gap, SNR against nominal, cache errors."""
from __future__ import annotations

from pathlib import Path

from ebtune.diagnostics.matched import RUNS, Diagnosis

LABELS = {"nocache": "no cache", "unscaled": "cache, ε factors 1", "scaled": "cache, ε scaled"}


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_eps(d: Diagnosis, path: Path, title: str = "") -> None:
    """Left: ‖ε̂‖ per step for the runs (and real data); right: the gap (or ‖ε̂‖ − no cache)."""
    c = d.columns
    plt, fig, ax = _figure(2)
    for r in RUNS:
        ax[0, 0].plot(c["step"], c[f"eps_norm_{r}"], label=LABELS[r])
        diff = c[f"gap_{r}"] if d.has_real else c[f"eps_norm_{r}"] - c["eps_norm_nocache"]
        ax[0, 1].plot(c["step"], diff, label=LABELS[r])
    if d.has_real:
        ax[0, 0].plot(c["step"], c["eps_norm_real"], "k--", label="real data (training)")
    ax[0, 0].set(xlabel="step i (0 = noisiest)", ylabel="‖ε‖ (mean per-image RMS)", title=title)
    ax[0, 1].axhline(0, color="grey", lw=0.5)
    ax[0, 1].set(xlabel="step i", ylabel="gap ‖ε̂‖ − ‖ε‖_real" if d.has_real else "‖ε̂‖ − ‖ε̂‖ no cache")
    ax[0, 0].legend(fontsize=8)
    _save(plt, fig, path)


def plot_snr(d: Diagnosis, path: Path, title: str = "") -> None:
    """Estimated SNR of x̂_t over the nominal ᾱ/(1−ᾱ), log scale."""
    c = d.columns
    plt, fig, ax = _figure(1)
    for r in RUNS:
        ax[0, 0].plot(c["step"], c[f"snr_{r}"] / c["snr_nominal"], label=LABELS[r])
    ax[0, 0].axhline(1, color="grey", lw=0.5)
    ax[0, 0].set(yscale="log", xlabel="step i", ylabel="SNR(x̂_t) / nominal", title=title)
    ax[0, 0].legend(fontsize=8)
    _save(plt, fig, path)


def plot_cache_error(d: Diagnosis, path: Path, title: str = "") -> None:
    """Left: relative errors of the cached branches and of ε on reuse steps; right: the cosine of
    consecutive ε errors (near 1: errors add up rather than cancel)."""
    c = d.columns
    plt, fig, ax = _figure(2)
    for r, style in (("unscaled", "-"), ("scaled", ":")):
        for m in ("attn_err", "mlp_err", "eps_err"):
            ax[0, 0].plot(c["step"], c[f"{m}_{r}"], style, marker=".", label=f"{m} ({LABELS[r]})")
        ax[0, 1].plot(c["step"], c[f"eps_err_cos_{r}"], style, marker="o", label=LABELS[r])
    ax[0, 0].set(xlabel="step i", ylabel="relative RMS error", title=title)
    ax[0, 1].set(xlabel="step i", ylabel="cos(ε error at i−1, at i)", ylim=(-1.05, 1.05))
    for a in ax[0]:
        a.legend(fontsize=7)
    _save(plt, fig, path)


def write_plots(d: Diagnosis, out: Path, title: str = "") -> list[Path]:
    """All three plots into `out`; returns their paths."""
    paths = [out / "eps_gap.png", out / "snr.png", out / "cache_error.png"]
    for plot, path in zip((plot_eps, plot_snr, plot_cache_error), paths):
        plot(d, path, title)
    return paths


__all__ = ["plot_cache_error", "plot_eps", "plot_snr", "write_plots"]
