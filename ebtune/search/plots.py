"""Pareto plots of a search: every trial, the front and the baselines on the same two objective axes.

Each point is a record dict as the search reports it: ``{"number": 7, "name": "trial-0007", "params": {...},
"metrics": {"fid": 12.3, "macs": 1.1e9, ...}}`` (baselines carry a ``name`` such as ``"fora2"`` and no number).
A record lacking a finite value for either axis (a failed trial, an objective not measured) is not drawn.
Both writers are pure functions of their inputs: they read the records, never mutate them, and write one file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

Record = dict[str, Any]


def _points(records: Iterable[Record], x: str, y: str) -> list[tuple[float, float, Record]]:
    """(x, y, record) for the records with finite values on both axes, sorted by x then y."""
    points = []
    for record in records:
        metrics = record.get("metrics") or {}
        xv, yv = metrics.get(x), metrics.get(y)
        if isinstance(xv, (int, float)) and isinstance(yv, (int, float)) and math.isfinite(xv) and math.isfinite(yv):
            points.append((float(xv), float(yv), record))
    return sorted(points, key=lambda p: (p[0], p[1]))


def _noise_bars(ax, pts: list[tuple[float, float, Record]], x: str, y: str, color: str) -> None:
    """± NOISE_Z standard errors on the axes that carry one (the quality metric): points whose bars
    overlap are ties, not wins."""
    from ebtune.search.pareto import NOISE_Z, std_key

    def err(metric: str) -> list[float] | None:
        values = [(p[2].get("metrics") or {}).get(std_key(metric)) for p in pts]
        values = [NOISE_Z * v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values]
        return values if any(values) else None

    xerr, yerr = err(x), err(y)
    if pts and (xerr or yerr):
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=xerr, yerr=yerr, fmt="none", ecolor=color,
                    elinewidth=0.8, alpha=0.6, zorder=1)


def _label(record: Record) -> str:
    return str(record.get("name") or f"trial-{record['number']:04d}")


def _hover(record: Record) -> str:
    """Name, metrics and params, one per line, so a point in the HTML plot identifies its schedule."""
    lines = [f"<b>{_label(record)}</b>"]
    lines += [f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in (record.get("metrics") or {}).items()]
    lines += [f"{k}: {v}" for k, v in (record.get("params") or {}).items()]
    return "<br>".join(lines)


def pareto_figure_png(path: str | Path, trials: Sequence[Record], front: Sequence[Record],
                      baselines: Sequence[Record], x: str, y: str, title: str = "") -> Path:
    """Write a static Pareto plot (PNG) of ``y`` against ``x``.

    Args:
        path: the PNG to write (parent folders are created).
        trials: every trial of the search (grey dots).
        front: the Pareto-optimal trials (red, joined in x order so the trade-off curve reads left to right);
            front points and baselines carry ± NOISE_Z standard-error bars on a measured axis.
        baselines: reference schedules (no cache, FORA(n), fewer steps...), each a labelled black marker.
        x, y: metric names for the axes, normally the first two objectives.
        title: figure title.

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
    for bx, by, record in pts:
        ax.annotate(_label(record), (bx, by), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path)
    return path


def pareto_figure_html(path: str | Path, trials: Sequence[Record], front: Sequence[Record],
                       baselines: Sequence[Record], x: str, y: str, title: str = "") -> Path:
    """Write the same Pareto plot as a self-contained interactive HTML page (plotly).

    plotly.js is embedded in the file (``include_plotlyjs=True``, ~4 MB) because ebtune runs offline: a CDN
    link would leave a blank page. Hovering a point shows its name, metrics and parameters.

    Args:
        path: the HTML file to write (parent folders are created).
        trials, front, baselines, x, y, title: as for :func:`pareto_figure_png`.

    Returns:
        ``path`` as a ``Path``.
    """
    import plotly.graph_objects as go

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = go.Figure()
    for records, name, style in (
        (trials, "trials", dict(mode="markers", marker=dict(color="lightgrey", size=7))),
        (front, "Pareto front", dict(mode="lines+markers", marker=dict(color="crimson", size=9))),
        (baselines, "baselines", dict(mode="markers+text", marker=dict(color="black", symbol="square", size=9),
                                      textposition="top right")),
    ):
        pts = _points(records, x, y)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{name} ({len(pts)})",
            text=[_label(p[2]) for p in pts] if name == "baselines" else None,
            hovertext=[_hover(p[2]) for p in pts], hoverinfo="text", **style,
        ))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
