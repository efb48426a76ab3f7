"""The quality objective and how results are judged: digits-native sees noise, differences count
only beyond noise, ties never chain into dominance, and the first fidelity can stop a trial."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from ebtune.core.uint8 import to_uint8
from ebtune.default import data
from ebtune.metrics.digits_native import off_range_energy
from ebtune.metrics.registry import make_metric
from ebtune.search.pareto import dominates, feasible_front, relation
from ebtune.search.records import SearchRecord
from ebtune.search.study import load_folder_study

from .conftest import TINY_SEARCH


@pytest.fixture(scope="module")
def real_test():
    return to_uint8(data.load_digits_split()[2])


def _noised(images: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, sigma, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def test_digits_native_gets_worse_with_every_step_of_added_noise(real_test):
    evaluator = make_metric("digits-native")
    scores = [evaluator.distance(_noised(real_test, s)) for s in (0, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_real_digits_lie_in_the_upsampling_range(real_test):
    assert off_range_energy(real_test).mean() < 0.01 * off_range_energy(_noised(real_test, 8)).mean()


def test_bootstrap_error_shrinks_with_more_images(real_test):
    evaluator = make_metric("digits-native")
    _, small = evaluator.score(real_test[:90], bootstrap=30)
    _, large = evaluator.score(real_test, bootstrap=30)
    assert 0 < large < small


def test_differences_within_noise_are_inconclusive_not_dominance():
    a = {"fid": 10.0, "fid_std": 1.0, "macs": 1.0}
    b = {"fid": 11.0, "fid_std": 1.0, "macs": 2.0}
    assert dominates(a, b, ["fid", "macs"])  # the classic rule on point estimates
    assert relation(a, b, ["fid", "macs"], margin=1.0) == "inconclusive"  # nor shown equivalent within 1.0
    c = {"fid": 20.0, "fid_std": 1.0, "macs": 2.0}
    assert relation(a, c, ["fid", "macs"], margin=1.0) == "dominates"
    assert relation(c, a, ["fid", "macs"], margin=1.0) == "worse"


def test_a_chain_of_unresolved_differences_does_not_collapse_the_front():
    # Each point is inconclusive against its cheaper neighbour, but the first and the last differ beyond noise.
    points = [{"fid": 10.0 + 2 * i, "fid_std": 1.0, "macs": 10.0 - i} for i in range(5)]
    assert relation(points[1], points[0], ["fid", "macs"], 1.0) == "inconclusive"
    assert relation(points[4], points[0], ["fid", "macs"], 1.0) == "trade-off"
    assert feasible_front(points, ["fid", "macs"], margin=1.0) == [0, 1, 2, 3, 4]


def test_search_confirms_on_fresh_images_and_judges_eps_fair_baselines(ebtune, tmp_path):
    run = tmp_path / "run"
    assert ebtune("search", *TINY_SEARCH, "launcher=local", "trials=2", "search.confirm_n=30", f"out={run}", "name=c") == 0
    pareto = json.loads((run / "pareto.json").read_text())
    searched = [b["name"] for b in SearchRecord(load_folder_study(run)).baselines]
    # The uncached baselines with the space's ε rule run beside those without it (those the front reaches:
    # nocache+constant costs more than every point here, so it judges nothing and is not sampled).
    assert any(n.startswith("ddpm-") and n.endswith("+constant") for n in searched) and "nocache+constant" not in searched
    # The confirmation re-scores what the verdict judges: its points, the baselines they face, and no cache.
    names = [b["name"] for b in pareto["baselines"]]
    verdict = pareto["verdict"]
    assert set(names) == {"nocache"} | {level["baseline"] for level in verdict["levels"] if level["baseline"]}
    assert {p["name"] for p in pareto["points"]} <= {verdict["recommended"]} | {v["point"] for v in verdict["levels"]}
    assert pareto["confirmed"]["n_samples"] == 30 and pareto["confirmed"]["seed"] != 0
    for entry in pareto["baselines"] + pareto["points"]:
        assert entry["metrics"]["images"] == 30 and entry["search_metrics"]["images"] == 20
        assert entry["metrics"]["macs"] == entry["search_metrics"]["macs"]
        assert entry["metrics"]["digits-native_std"] > 0
    for point in pareto["points"]:
        assert set(point["relations"]) == set(names)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0].experiment_id, "tags.pareto_optimal = 'true'")
    assert {int(r.data.tags["ebtune.trial"]) for r in runs} == {p["number"] for p in pareto["points"]}
    assert all("nocache" in r.data.tags["ebtune.relations"] for r in runs)
    assert all(r.data.metrics["confirmed.digits-native"] == pytest.approx(
        next(p for p in pareto["points"] if p["number"] == int(r.data.tags["ebtune.trial"]))["metrics"]["digits-native"])
        for r in runs)
