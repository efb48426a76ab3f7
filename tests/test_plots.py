"""Pareto plots: axes with units, labelled front points, baseline labels apart, plotly.js once per folder."""
from __future__ import annotations

import itertools
import json
import re

import pytest
from matplotlib.figure import Figure

from ebtune.search.plots import Quality, _place_labels, _points, axis, write_pareto_plots


def _record(name, fid, macs, number=None):
    return {"name": name, "number": number, "params": {"attn": 2}, "metrics": {"fid": fid, "fid_std": 0.5, "macs": macs}}


TRIALS = [_record(f"trial-{i:04d}", 30 - i, (10 - i) * 1e8, i) for i in range(6)]
FRONT = TRIALS[3:]
# Four baselines within a hair of each other: their labels would print on top of each other.
BASELINES = [_record(n, 20 + 0.01 * k, 9e8 + 1e5 * k) for k, n in enumerate(["nocache", "fora2", "fora3", "steps-25"])]


def test_axes_carry_units_and_macs_are_plotted_in_gmacs():
    assert axis("fid", Quality("fid", "inception", 256)) == ("FID (inception, 256 images)", 1.0)
    assert axis("digits-native", Quality("digits-native", "digits-native", 256)) == (
        "digits-native (digits-native, 256 images)", 1.0)
    assert axis("clip", Quality("clip", "clip-b32", 64, "maximize"))[0] == "clip (clip-b32, 64 images; higher is better)"
    assert axis("macs") == ("GMACs per image", 1e-9)
    assert axis("latency_s")[0] == "latency (s per timed batch)"
    assert axis("something-new") == ("something-new", 1.0)
    assert [p[0] for p in _points(FRONT, "macs", "fid")] == pytest.approx([0.5, 0.6, 0.7])


def test_baseline_and_front_labels_do_not_overlap():
    fig = Figure(figsize=(7, 5), dpi=110)
    ax = fig.add_subplot()
    pts = _points(BASELINES, "macs", "fid")
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    _place_labels(ax, pts, fontsize=8)
    boxes = [t.get_window_extent() for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == ["nocache", "fora2", "fora3", "steps-25"]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_search_folder_gets_png_and_a_light_html(tmp_path):
    png, html = write_pareto_plots(tmp_path, TRIALS, FRONT, BASELINES, ["macs", "fid"], Quality("fid", "inception", 256), "s1")
    assert (png, html) == (tmp_path / "pareto.png", tmp_path / "pareto.html")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    assert 'src="plotly.min.js"' in page and html.stat().st_size < 200_000
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000  # the library, once, beside the page
    assert "GMACs per image" in page and "FID (inception, 256 images)" in page
    traces = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", page, re.S).group(1))
    front = next(t for t in traces if t["name"].startswith("Pareto front"))
    assert front["text"] == ["trial-0005", "trial-0004", "trial-0003"] and front["x"] == pytest.approx([0.5, 0.6, 0.7])
