"""Exposure-bias diagnostics against closed forms, an independent branch-error reference, and the CLI.

The closed-form case: data x₀ ~ N(μ, s²I) and the exact ε-predictor for it. With x_t = √ᾱ·x₀ + √(1−ᾱ)·ε,
x_t ~ N(√ᾱμ, vI) with v = ᾱs² + 1 − ᾱ and Cov(ε, x_t) = √(1−ᾱ)I, so E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱμ)/v.
The ancestral sampler is then a per-element linear-Gaussian recursion whose moments we propagate here.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from ebtune.cli import main
from ebtune.core.diffusion import GaussianDiffusion, linear_betas
from ebtune.core.dit import DiT, DiTConfig
from ebtune.core.schedule import Schedule
from ebtune.diagnostics import COLUMNS, diagnose, gap_profile, snr_estimate, trace_run
from ebtune.sampling.samplers import Guidance, make_sampler
from ebtune.schedules import ScheduleContext, fora
from tests.conftest import randomised

MU, S, C, HW, K = 0.7, 0.5, 4, 8, 8


class GaussianEps(nn.Module):
    """The exact ε-predictor for N(μ, s²I) data; variance channels −1 (the posterior variance β̃)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("acp", torch.from_numpy(np.cumprod(1 - linear_betas())).float())

    def forward(self, x, t, y):
        ab = self.acp[t].view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * MU) * (1 - ab).sqrt() / (ab * S**2 + 1 - ab)
        return torch.cat([eps, -torch.ones_like(x)], dim=1)


def _closed_form(steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: E‖ε̂‖ on the sampling run, E‖ε‖ on real data (RMS, large-D limit) and the SNR of
    x̂_t against the final sample, from the sampler's moment recursion x ← A·x + B + σz."""
    ab = GaussianDiffusion.respaced(steps).alphas_cumprod
    ab_prev = np.append(1.0, ab[:-1])
    m, v = 0.0, 1.0  # x_T ~ N(0, I)
    sampled, real, moments, gains = [], [], [], []
    for k in range(steps - 1, -1, -1):
        c = math.sqrt(1 - ab[k]) / (ab[k] * S**2 + 1 - ab[k])
        sampled.append(math.sqrt(c**2 * (v + (m - math.sqrt(ab[k]) * MU) ** 2)))
        real.append(math.sqrt(c**2 * (ab[k] * S**2 + 1 - ab[k])))
        beta = 1 - ab[k] / ab_prev[k]

        # x̂₀ = (x − √(1−ᾱ)·ε̂)/√ᾱ and mean = p1·x̂₀ + p2·x (the posterior mean), both linear in x.
        p1 = beta * math.sqrt(ab_prev[k]) / (1 - ab[k])
        p2 = (1 - ab_prev[k]) * math.sqrt(1 - beta) / (1 - ab[k])
        A = p1 * (1 - math.sqrt(1 - ab[k]) * c) / math.sqrt(ab[k]) + p2
        B = p1 * math.sqrt(1 - ab[k]) * c * MU
        var_noise = beta * (1 - ab_prev[k]) / (1 - ab[k]) if k > 0 else 0.0
        moments.append(v)
        gains.append(A)
        m, v = A * m + B, A**2 * v + var_noise
    v_final = v
    snr = []
    for i, v_i in enumerate(moments):
        P = float(np.prod(gains[i:]))  # final = P·x̂_t + (independent of x̂_t)
        gamma = P * v_i / v_final
        residual = v_i - P**2 * v_i**2 / v_final  # 0 at the last step: the final sample is A·x̂_t + B
        snr.append(gamma**2 / residual if residual > 1e-12 else math.inf)
    return np.array(sampled), np.array(real), np.array(snr)  # the last SNR: x̂_t is the final's input


def _gaussian_case(n: int = 512):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(n, C, HW, HW, generator=gen)
    x0 = MU + S * torch.randn(n, C, HW, HW, generator=gen)
    labels = torch.zeros(n, dtype=torch.long)
    return make_sampler("ddpm", K, Guidance(scale=1.0)), GaussianEps(), noise, labels, x0


def test_gap_and_snr_match_the_closed_form_on_gaussian_data():
    sampler, model, noise, labels, x0 = _gaussian_case()
    want_sampled, want_real, want_snr = _closed_form(K)
    gap = gap_profile(sampler, model, None, noise, labels, x0, seed=1)
    assert np.abs(want_sampled - want_real).max() > 0.03  # the case has a gap worth measuring
    np.testing.assert_allclose(gap, want_sampled - want_real, atol=6e-3)
    trace = trace_run(sampler, model, noise, labels, None, seed=1)
    np.testing.assert_allclose(trace.eps_norm, want_sampled, rtol=1e-2)
    root = np.sqrt(want_snr[:-1])  # the last step's x̂_t determines the final sample: SNR = ∞
    se = np.sqrt(1 / (noise.numel() * float(trace.final.var())) + root**2 / (2 * noise.numel()))
    assert np.all(np.abs(np.sqrt(trace.snr[:-1]) - root) <= 4 * se)


def test_snr_estimate_recovers_the_forward_process_snr():
    gen = torch.Generator().manual_seed(3)
    x0 = MU + S * torch.randn(256, 256, generator=gen)
    for ab in (0.02, 0.5, 0.95):
        x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=gen)
        se = math.sqrt(1 / (x0.numel() * S**2) + ab / (1 - ab) / (2 * x0.numel()))  # of √SNR, see snr_estimate
        assert math.sqrt(snr_estimate(x_t, x0)) == pytest.approx(math.sqrt(ab / (1 - ab)), abs=4 * se)


def test_branch_errors_match_a_reference_built_from_the_block():
    """Depth 1, two steps, step 1 reuses both branches: the errors are the step-0 outputs against the
    branches recomputed from the block's parts on step 1's inputs."""
    model = randomised(DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=4,
                                     num_classes=5)))
    sampler = make_sampler("ddpm", 2, Guidance(scale=1.0))
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    inputs = []
    handle = model.register_forward_pre_hook(lambda mod, args: inputs.append((args[0], args[1])))
    try:
        trace = trace_run(sampler, model, noise, labels, Schedule.from_step_masks([True, False], [True, False], 1), seed=0)
    finally:
        handle.remove()
    block = model.blocks[0]

    def branches(x, t, attn_from=None):
        h = model.x_embedder(x) + model.pos_embed
        c = model.t_embedder(t) + model.y_embedder(labels, False)
        sa, ca, ga, sm, cm, _ = block.adaLN_modulation(c).chunk(6, dim=1)
        a = block.attn(block.norm1(h) * (1 + ca[:, None]) + sa[:, None])
        h = h + ga[:, None] * (a if attn_from is None else attn_from)
        return a, block.mlp(block.norm2(h) * (1 + cm[:, None]) + sm[:, None])

    with torch.no_grad():
        a0, m0 = branches(*inputs[0])
        a1, m1 = branches(*inputs[1], attn_from=a0)  # the block adds the reused attention before its MLP

    def rel(u, ref):
        return float((u - ref).norm() / ref.norm())

    assert math.isnan(trace.attn_err[0]) and math.isnan(trace.mlp_err[0])
    assert trace.attn_err[1] == pytest.approx(rel(a0, a1), rel=1e-4)
    assert trace.mlp_err[1] == pytest.approx(rel(m0, m1), rel=1e-4)
    assert trace.eps_err[1] > 0 and math.isnan(trace.eps_err_cos[1])  # step 0 computed: no previous error
    assert "attn_branch" not in vars(block) and "mlp_branch" not in vars(block)  # everything detached


def test_diagnose_is_deterministic_and_tabulates_every_step(small_dit):
    sampler = make_sampler("ddpm", 6, Guidance(scale=1.5, null_label=5))
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    schedule = fora(ScheduleContext(6, 3, sampler.times), interval=3).with_eps_scale([0.97] * 6)
    a = diagnose(sampler, small_dit, schedule, noise, labels, seed=5)
    b = diagnose(sampler, small_dit, schedule, noise, labels, seed=5)
    assert list(a.columns) == list(COLUMNS)
    for name in COLUMNS:
        assert a.columns[name].shape == (6,)
        np.testing.assert_array_equal(a.columns[name], b.columns[name])
    # ε used = factor · ε: runs (b) and (c) share step 0 (nothing differs before any factor applies).
    assert a.columns["eps_norm_scaled"][0] == pytest.approx(0.97 * a.columns["eps_norm_unscaled"][0])
    reuse = [i for i in range(6) if i % 3]
    assert np.isfinite(a.columns["attn_err_unscaled"][reuse]).all()
    assert np.isnan(np.delete(a.columns["attn_err_unscaled"], reuse)).all()
    assert np.isfinite(a.columns["eps_err_cos_unscaled"][[2, 5]]).all()  # second reuse of each run of two
    assert np.isnan(a.columns["gap_scaled"]).all()  # no real data given


def test_cli_writes_table_plots_and_summary(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "n=4", "steps=10", "seed=1", f"out={out}", "schedule=fora", "schedule.interval=3",
                 "eps_scale=ebcache", "threads=1"]) == 0
    printed = capsys.readouterr().out
    with open(out / "diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and list(rows[0]) == list(COLUMNS)
    assert [int(r["step"]) for r in rows] == list(range(10))
    assert all(math.isfinite(float(r["eps_norm_real"])) for r in rows)  # dit-tiny has real data
    for name in ("eps_gap.png", "snr.png", "cache_error.png", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert "mean gap" in printed and "scaled" in printed


@pytest.mark.parametrize("args,message", [
    (["n=0"], "n must be at least 1"),
    (["schedule=fora", "schedule_file=x.json"], "schedule_file= and schedule=/eps_scale= both given"),
    (["n=2000"], "images of class"),
    (["mlflow_run=abc", "tracking.uri=sqlite:///mlflow.db"], "there is no MLflow store at"),
    (["schedule=nope"], "unknown schedule 'nope'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["diagnose", "steps=4", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
