"""Pareto plots of a search: every trial, the front and the baselines on the same two objective axes.

Each point is a record dict as the search reports it: ``{"number": 7, "name": "trial-0007", "params": {...},
"metrics": {"digits-native": 12.3, "macs": 1.1e9, ...}}`` (baselines carry a ``name`` such as ``"fora2"`` and
no number). A record lacking a finite value for either axis (a failed trial, an objective not measured) is not
drawn. Both writers are pure functions of their inputs: they read the records, never mutate them, and write one
file. Axes carry their units (`axis`): MACs are shown in GMACs per image; the quality metric (`Quality`) names
its evaluator and image count, and says "higher is better" when it is maximised. `write_pareto_plots` writes both files into a
search folder, the HTML loading plotly.js from one `plotly.min.js` beside it instead of embedding 4.8 MB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

Record = dict[str, Any]

# metric → (axis label, factor from the stored value to the plotted one); a metric not listed is labelled by its
# name; the quality metric's measurement is added by `axis`.
UNITS: dict[str, tuple[str, float]] = {
    "fid": ("FID", 1.0),
    "quality_proxy": ("quality metric on the proxy images", 1.0),
    "macs": ("GMACs per image", 1e-9),
    "latency_s": ("latency (s per timed batch)", 1.0),
    "speedup": ("MAC-ideal speedup vs no cache (x)", 1.0),
    "latency_speedup": ("latency speedup vs no cache (x)", 1.0),
    "distance": ("RMS distance to the uncached latents", 1.0),
    "accuracy": ("digits classifier accuracy", 1.0),
    "images": ("images sampled", 1.0),
}
# Offsets (points) tried in turn for a text label, nearest first, until it overlaps no label placed before.
_OFFSETS = [(5, 4), (5, -10), (-5, 4), (-5, -10), (5, 14), (5, -20), (-5, 14), (-5, -20), (12, 24), (12, -30),
            (-12, 24), (-12, -30)]


@dataclass(frozen=True)
class Quality:
    """What the quality axis measures: the metric's key, its evaluator (`model.fid`), the image count
    and the metric's direction."""

    metric: str
    evaluator: str
    n_samples: int
    direction: str = "minimize"

    def __str__(self) -> str:
        better = "; higher is better" if self.direction == "maximize" else ""
        return f"{self.evaluator}, {self.n_samples} images{better}"


def axis(metric: str, quality: Quality | None = None) -> tuple[str, float]:
    """(axis label with units, factor applied to the stored values) of `metric`.

    Args:
        quality: what the quality metric is and how it was measured; added to the labels of that metric
            and of its proxy, e.g. "FID (inception, 256 images)".
    """
    label, factor = UNITS.get(metric, (metric, 1.0))
    if quality is not None and metric in (quality.metric, "quality_proxy"):
        label = f"{label} ({quality})"
    return label, factor


def _points(records: Iterable[Record], x: str, y: str) -> list[tuple[float, float, Record]]:
    """(x, y, record) for the records with finite values on both axes, in plotted units, sorted by x then y."""
    points = []
    for record in records:
        metrics = record.get("metrics") or {}
        xv, yv = metrics.get(x), metrics.get(y)
        if isinstance(xv, (int, float)) and isinstance(yv, (int, float)) and math.isfinite(xv) and math.isfinite(yv):
            points.append((float(xv) * axis(x)[1], float(yv) * axis(y)[1], record))
    return sorted(points, key=lambda p: (p[0], p[1]))


def _noise_bars(ax, pts: list[tuple[float, float, Record]], x: str, y: str, color: str) -> None:
    """± NOISE_Z standard errors on the axes that carry one (the quality metric): points whose bars
    overlap are ties, not wins."""
    from ebtune.search.pareto import NOISE_Z, std_key

    def err(metric: str) -> list[float] | None:
        values = [(p[2].get("metrics") or {}).get(std_key(metric)) for p in pts]
        values = [NOISE_Z * v * axis(metric)[1] if isinstance(v, (int, float)) and math.isfinite(v) else 0.0
                  for v in values]
        return values if any(values) else None

    xerr, yerr = err(x), err(y)
    if pts and (xerr or yerr):
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=xerr, yerr=yerr, fmt="none", ecolor=color,
                    elinewidth=0.8, alpha=0.6, zorder=1)


def _label(record: Record) -> str:
    return str(record.get("name") or f"trial-{record['number']:04d}")


def _place_labels(ax, pts: list[tuple[float, float, Record]], fontsize: int) -> None:
    """Annotate each point with its name at the first offset where the text overlaps no label placed
    before (and, failing all, at the first offset), so neighbouring baselines stay readable."""
    ax.figure.draw_without_rendering()  # run the layout first, so the boxes measured are where they will print
    placed: list[Any] = [t.get_window_extent() for t in ax.texts]
    for px, py, record in pts:
        for dx, dy in _OFFSETS:
            text = ax.annotate(_label(record), (px, py), textcoords="offset points", xytext=(dx, dy),
                               fontsize=fontsize, ha="left" if dx > 0 else "right")
            box = text.get_window_extent()
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:
            text = ax.annotate(_label(record), (px, py), textcoords="offset points", xytext=_OFFSETS[0],
                               fontsize=fontsize)
            box = text.get_window_extent()
        placed.append(box)


def _hover(record: Record) -> str:
    """Name, metrics and params, one per line, so a point in the HTML plot identifies its schedule."""
    lines = [f"<b>{_label(record)}</b>"]
    lines += [f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in (record.get("metrics") or {}).items()]
    lines += [f"{k}: {v}" for k, v in (record.get("params") or {}).items()]
    return "<br>".join(lines)


def pareto_figure_png(path: str | Path, trials: Sequence[Record], front: Sequence[Record],
                      baselines: Sequence[Record], x: str, y: str, title: str = "", quality: Quality | None = None) -> Path:
    """Write a static Pareto plot (PNG) of ``y`` against ``x``.

    Args:
        path: the PNG to write (parent folders are created).
        trials: every trial of the search (grey dots).
        front: the Pareto-optimal trials (red, joined in x order so the trade-off curve reads left to right);
            front points and baselines carry ± NOISE_Z standard-error bars on a measured axis.
        baselines: reference schedules (no cache, FORA(n), fewer steps...), each a labelled black marker.
        x, y: metric names for the axes, normally the first two objectives.
        title: figure title.
        quality: the quality metric and how it was measured (see `axis`).

    Returns:
        ``path`` as a ``Path``.
    """
    # The object-oriented Figure with the Agg canvas needs no display and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    pts = _points(trials, x, y)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, c="0.6", label=f"trials ({len(pts)})", zorder=1)
    pts = _points(front, x, y)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", ms=6, lw=1.2,
            label=f"Pareto front ({len(pts)})", zorder=2)
    _noise_bars(ax, pts, x, y, "tab:red")
    pts = _points(baselines, x, y)
    _noise_bars(ax, pts, x, y, "k")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="s", s=36, c="k", label="baselines", zorder=3)
    _place_labels(ax, pts, fontsize=8)
    _place_labels(ax, _points(front, x, y), fontsize=7)
    ax.set_xlabel(axis(x, quality)[0])
    ax.set_ylabel(axis(y, quality)[0])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path)
    return path


def pareto_figure_html(path: str | Path, trials: Sequence[Record], front: Sequence[Record],
                       baselines: Sequence[Record], x: str, y: str, title: str = "", quality: Quality | None = None,
                       plotlyjs: bool | str = True) -> Path:
    """Write the same Pareto plot as an interactive HTML page (plotly).

    ebtune runs offline, so plotly.js never comes from a CDN (a blank page offline): by default it is embedded
    (``plotlyjs=True``, ~4.8 MB, one self-contained file, as an MLflow artifact needs); ``plotlyjs="directory"``
    loads it from ``plotly.min.js`` beside the page, written once for every page in that folder. Hovering a point
    shows its name, metrics and parameters.

    Args:
        path: the HTML file to write (parent folders are created).
        trials, front, baselines, x, y, title, quality: as for :func:`pareto_figure_png`.
        plotlyjs: True (embed) or "directory" (a shared plotly.min.js beside the page).

    Returns:
        ``path`` as a ``Path``.
    """
    import plotly.graph_objects as go

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = go.Figure()
    for records, name, style in (
        (trials, "trials", dict(mode="markers", marker=dict(color="lightgrey", size=7))),
        (front, "Pareto front", dict(mode="lines+markers+text", marker=dict(color="crimson", size=9),
                                     textposition="bottom left", textfont=dict(size=9))),
        (baselines, "baselines", dict(mode="markers+text", marker=dict(color="black", symbol="square", size=9),
                                      textposition="top right")),
    ):
        pts = _points(records, x, y)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{name} ({len(pts)})",
            text=[_label(p[2]) for p in pts] if name != "trials" else None,
            hovertext=[_hover(p[2]) for p in pts], hoverinfo="text", **style,
        ))
    fig.update_layout(title=title, xaxis_title=axis(x, quality)[0], yaxis_title=axis(y, quality)[0],
                      template="plotly_white")
    if plotlyjs not in (True, "directory"):
        raise ValueError(f"plotlyjs={plotlyjs!r}; use True (embed) or 'directory' (plotly.min.js beside the page)")
    fig.write_html(path, include_plotlyjs=plotlyjs, full_html=True)
    return path


def write_pareto_plots(folder: str | Path, trials: Sequence[Record], front: Sequence[Record],
                       baselines: Sequence[Record], objectives: Sequence[str], quality: Quality | None,
                       title: str = "") -> tuple[Path, Path]:
    """Write ``pareto.png`` and ``pareto.html`` (with ``plotly.min.js`` beside it) into a search folder.

    Args:
        folder: the search folder (next to pareto.json).
        trials, front, baselines, title: as for :func:`pareto_figure_png`.
        objectives: the search's objectives; the first two are the axes.
        quality: the quality metric and how it was measured, shown on its axis.

    Returns:
        (the PNG, the HTML page).
    """
    if len(objectives) < 2:
        raise ValueError(f"a Pareto plot needs two objectives, got {list(objectives)}; search with at least two")
    x, y = objectives[:2]
    folder = Path(folder)
    return (pareto_figure_png(folder / "pareto.png", trials, front, baselines, x, y, title, quality),
            pareto_figure_html(folder / "pareto.html", trials, front, baselines, x, y, title, quality, "directory"))
