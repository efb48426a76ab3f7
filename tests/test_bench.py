"""`ebtune bench`: its own key=value settings, the per-branch time model, and a torch-only end-to-end run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ebtune.bench.latency import BranchCosts
from ebtune.bench.settings import (
    MODEL_CONF,
    SCHEDULE_NAMES,
    model_names,
    model_spec,
    parse_settings,
)
from ebtune.core.schedule import no_cache
from ebtune.errors import ConfigError
from ebtune.run.loading import ModelSpec
from ebtune.schedules import ScheduleContext, make_schedule

from .conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("hydra", "omegaconf", "optuna", "ray", "mlflow", "torch_fidelity")


def test_settings_parse_lists_quotes_and_schedule_files():
    s = parse_settings(["model=dit-xl", "batch=[1, 8,32]", "precision=bf16", "'schedules=[none,fora2]'"[1:-1],
                        "schedule_file=tuned.json", "compile=true"])
    assert (s.model, s.batch, s.precision, s.compile) == ("dit-xl", (1, 8, 32), ("bf16",), True)
    assert s.schedules == ("none", "fora2", "file:tuned.json")
    assert parse_settings([]).schedules == SCHEDULE_NAMES
    assert (parse_settings([]).sampler, parse_settings(["sampler=dpmpp-2m"]).sampler) == ("ddim", "dpmpp-2m")


@pytest.mark.parametrize("token, message", [
    ("steps", "key=value"), ("color=red", "unknown override"), ("precision=fp8", "unknown precision"),
    ("schedules=[fora2]", "must include none"), ("batch=[0]", "not a valid"), ("model=dit-q", "unknown model"),
    ("compile=yes", "not a valid"), ("schedules=[none,fora4]", "unknown schedule"), ("memory_gib=0", "not a valid"),
    ("memory_gib=inf", "not a valid"), ("sampler=euler", "unknown sampler 'euler'; choose one of: ddpm, ddim"),
])
def test_bad_settings_are_one_line_errors(token, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings([token])


@pytest.mark.parametrize("name", model_names())
def test_flat_model_reader_agrees_with_yaml(name):
    assert model_spec(name) == ModelSpec(**yaml.safe_load((MODEL_CONF / f"{name}.yaml").read_text()))


def test_branch_costs_recover_a_linear_cost_model():
    truth = BranchCosts(fixed=0.5, attn=0.03, mlp=0.02)
    t_full = truth.fixed + SMALL.depth * (truth.attn + truth.mlp)
    got = BranchCosts.from_steps(t_full, t_full - SMALL.depth * truth.attn, t_full - SMALL.depth * truth.mlp, SMALL.depth)
    assert (got.fixed, got.attn, got.mlp) == pytest.approx((truth.fixed, truth.attn, truth.mlp))
    fora2 = make_schedule("fora", ScheduleContext(4, SMALL.depth, (1.0, 0.6, 0.3, 0.0)), interval=2)
    # Half the branch work remains: 4 fixed parts plus 2 computing steps of every block.
    assert got.seconds(fora2) == pytest.approx(4 * 0.5 + 2 * SMALL.depth * 0.05)
    assert got.seconds(no_cache(4, SMALL.depth)) == pytest.approx(4 * t_full)


def test_bench_runs_with_only_torch(tmp_path):
    """`ebtune bench` end to end with Hydra, Optuna, Ray, MLflow and torch-fidelity made unimportable."""
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import ebtune.cli
sys.exit(ebtune.cli.main(["bench", "model=dit-tiny", "steps=3", "sampler=dpmpp-2m", "batch=[1,2]", "precision=[fp32,tf32]", "repeats=1", "warmup=0",
                          "schedules=[none,fora2,ebcache-table]", "out={tmp_path}"]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    (written,) = tmp_path.glob("bench-*.json")
    rows = json.loads(written.read_text())
    # Every configuration's rows, in order, each set measured against its own no-cache row.
    assert [(r["precision"], r["batch"], r["schedule"]) for r in rows] == [
        (p, b, s) for p in ("fp32", "tf32") for b in (1, 2) for s in ("none", "fora2", "ebcache-table")]
    for key in ("seconds", "speedup", "ideal", "time_ideal", "efficiency", "time_efficiency", "device", "precision",
                "batch", "peak_mem_bytes", "torch", "compiled", "sampler"):
        assert all(key in r for r in rows), key
    assert all(r["speedup"] == 1.0 for r in rows[::3]) and rows[1]["ideal"] > 1.2


@pytest.mark.parametrize("limit, cap", [(37, 1 << 14), (1, 64), (64, 64), (1000, 64), (0, 64), (1 << 20, 1 << 14)])
def test_largest_fitting_batch_is_found_in_logarithmic_probes(limit, cap):
    from ebtune.bench.command import largest_fitting

    probes = []

    def fits(batch):
        probes.append(batch)
        return batch <= limit

    assert largest_fitting(fits, cap) == min(limit, cap)
    assert max(probes) <= cap and len(probes) <= 2 * cap.bit_length() + 1


def test_cuda_graphs_need_compile_and_a_gpu():
    from ebtune.bench.command import main

    with pytest.raises(ConfigError, match="cuda_graphs=true captures the compiled fast path; set compile=true"):
        parse_settings(["cuda_graphs=true"])
    with pytest.raises(ConfigError, match="cuda_graphs=true needs a CUDA device, and this run is on cpu"):
        main(["cuda_graphs=true", "compile=true", "device=cpu", "out=/nonexistent/never-written"])


def test_tensor_peak_counts_live_tensor_bytes():
    import torch

    from ebtune.bench.memory import TensorPeak

    kept = torch.zeros(10)
    with TensorPeak(torch.device("cpu")) as peak:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 8 MB alive at once
        del a
        c = b + 1  # 8 MB again: a was freed first
        del b, c
        d = torch.ones(500, 1000)  # 2 MB, below the peak
        del kept, d  # frees of earlier tensors only lower the live count
    assert peak.bytes == pytest.approx(8_000_000, abs=4096)


def test_tf32_is_scoped_to_its_configuration():
    import torch

    from ebtune.bench.command import matmul_precision

    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
        with matmul_precision("fp32"):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
