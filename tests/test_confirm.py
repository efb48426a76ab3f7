"""`ebtune confirm`: the front re-scored with more images under the search's own settings."""
from __future__ import annotations

import json

import pytest

from ebtune.cli import main

from .conftest import TINY_SEARCH

TINY = [*TINY_SEARCH, "launcher=local", "trials=2"]


@pytest.fixture
def search_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", *TINY, f"out={tmp_path / 'run'}", "name=c"]) == 0
    return tmp_path / "run"


def test_confirm_at_the_search_size_and_seed_reproduces_its_metrics(search_folder, capsys):
    assert main(["confirm", str(search_folder), "n=20", "seed=0"]) == 0
    result = json.loads((search_folder / "confirmed.json").read_text())
    pareto = json.loads((search_folder / "pareto.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names[0] == "nocache"
    assert set(names) == {b["name"] for b in pareto["baselines"]} | {f"trial-{p['number']:04d}" for p in pareto["points"]}
    for row in result["rows"]:  # same seeds, labels and images: the same numbers
        for metric in ("digits-native", "macs", "speedup", "distance", "accuracy"):
            assert row["metrics"][metric] == pytest.approx(row["search_metrics"][metric], rel=1e-9, abs=1e-12), (row["name"], metric)
    assert set(result["dominates"]) == {f"trial-{p['number']:04d}" for p in pareto["points"]}
    assert "confirmed.json" in capsys.readouterr().out


def test_confirm_with_more_images_changes_quality_not_macs(search_folder, capsys):
    with pytest.raises(SystemExit) as removed:  # the old spelling of n= had its release
        main(["confirm", str(search_folder), "--n", "40"])
    assert removed.value.code == 2 and "unrecognized arguments: --n" in capsys.readouterr().err
    assert main(["confirm", str(search_folder), "n=40"]) == 0
    rows = json.loads((search_folder / "confirmed.json").read_text())["rows"]
    assert all(r["metrics"]["macs"] == r["search_metrics"]["macs"] for r in rows)
    assert any(r["metrics"]["digits-native"] != pytest.approx(r["search_metrics"]["digits-native"]) for r in rows)


def test_confirm_needs_a_search_folder(tmp_path, capsys):
    assert main(["confirm", str(tmp_path)]) == 2
    assert "no study.db or storage.json in" in capsys.readouterr().err


def test_confirm_defaults_to_fresh_seeds(search_folder):
    assert main(["confirm", str(search_folder), "n=20"]) == 0
    result = json.loads((search_folder / "confirmed.json").read_text())
    assert result["seed"] != 0
    nocache = next(r for r in result["rows"] if r["name"] == "nocache")
    assert nocache["metrics"]["digits-native"] != pytest.approx(nocache["search_metrics"]["digits-native"])  # other images
    assert nocache["metrics"]["macs"] == nocache["search_metrics"]["macs"]
