"""Shared fixtures: a small randomised DiT, one torch thread, the CLI run in a scratch folder, and the
overrides of a tiny search."""
from __future__ import annotations

import os

import pytest
import torch

import ebtune.cli as cli
from ebtune.core.dit import DiT, DiTConfig

# Keep every cache a test could touch inside the test run.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SMALL = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=4, num_classes=5)

# A search small enough for the default test run: dit-tiny, 10 steps, 20 images per evaluation, the
# fewer-steps baselines of its own sampler only (tests/test_search.py adds others).
TINY_SEARCH = ["model=dit-tiny", "steps=10", "space=intervals", "metric.n_samples=20", "search.confirm_n=0",
               "search.baseline_samplers=[]"]


def randomised(model: DiT, seed: int = 0) -> DiT:
    """adaLN-Zero starts with zero gates, which would make every cache test pass trivially."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture
def small_dit() -> DiT:
    torch.manual_seed(0)
    return randomised(DiT(SMALL))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run many times slower when intra-op threads contend for the shared cores, and the
    results are bit-identical either way (tests/test_threads.py checks that)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _torch_home(tmp_path, monkeypatch):
    """torch-fidelity and torch.hub write under TORCH_HOME: keep it inside the test's folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def ebtune(monkeypatch, tmp_path):
    """`ebtune ...` in-process, run from tmp_path so outputs/ and the MLflow store stay there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return lambda *argv: cli.main(list(argv))
