"""Exposure bias along a sampling run, measured per step i (0 = noisiest).

Exposure bias (Ning et al., "Elucidating the Exposure Bias in Diffusion Models", ICLR 2024): in
training the network sees x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε with real x₀; in sampling it sees its own
x̂_t. The per-step measures here:

- ‖ε̂‖_i: mean over images of the per-image RMS of the ε the sampler used at step i (guided, and
  scaled by the schedule's factor). On forward-noised real data the same statistic ‖ε‖_i is the
  training-distribution value; the exposure-bias gap is ‖ε̂‖_i − ‖ε‖_i (Ning et al. observe it
  positive: sampling predicts larger noise than training).
- SNR of x̂_t against the nominal ᾱ_t/(1−ᾱ_t): see `snr_estimate`.
- with a cache: each reused branch's relative error against computing it on the same input, the
  relative ε error ‖ε̂ − ε̂_full‖/‖ε̂_full‖ (ε̂_full: all branches computed on the same x̂_t) and the
  cosine between the ε errors of consecutive reuse steps (correlated errors accumulate instead of
  averaging out, which is how caching widens the gap).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ebtune.cache.engine import CachedModel
from ebtune.core.schedule import BRANCHES, Schedule
from ebtune.diagnostics.recording import CacheErrorProbe, StepRecorder, image_rms
from ebtune.sampling.samplers import Sampler


def snr_estimate(x_t: torch.Tensor, x0: torch.Tensor) -> float:
    """SNR of x_t as a noisy copy of x₀, in the forward model's units (nominal ᾱ/(1−ᾱ)).

    Regress x_t on the sample its trajectory ended at: with per-element means over the N images
    removed (x̄_t, x̄₀), γ = ⟨x_t − x̄_t, x₀ − x̄₀⟩ / ⟨x₀ − x̄₀, x₀ − x̄₀⟩ is the signal coefficient and
    σ² = ‖(x_t − x̄_t) − γ(x₀ − x̄₀)‖² / ((N − 1)·D) the noise variance (D elements per image), so
    SNR = γ²/σ². This is Ning et al.'s split of var(x_t) into signal and noise power,
    var(x_t) = γ²·var(x₀) + σ², with γ estimated rather than assumed √ᾱ. For x_t = √ᾱ·x₀ + √(1−ᾱ)·ε
    with ε independent of x₀ it is consistent for ᾱ/(1−ᾱ); on an exact reverse process too, since
    (x_t, x₀) then has the forward joint law. Standard error of √SNR = γ/σ:
    √(1/(N·D·var(x₀)) + SNR/(2·N·D)) (from γ's and from σ²'s); at the noisiest steps (nominal SNR
    ~1e-4) the first term dominates and a few hundred images resolve only the order of magnitude.

    Args:
        x_t, x0: (N, ...) with N ≥ 2, row n of both from the same trajectory.
    """
    xt = x_t.double().flatten(1)
    z = x0.double().flatten(1)
    xt, z = xt - xt.mean(0), z - z.mean(0)
    gamma = (xt * z).sum() / (z * z).sum()
    noise = (xt - gamma * z).pow(2).sum() / ((len(xt) - 1) * xt.shape[1])
    return float(gamma**2 / noise)


def nominal_snr(sampler: Sampler) -> np.ndarray:
    """ᾱ_t/(1−ᾱ_t) at each sampling step: (K,)."""
    ab = sampler.diffusion.alphas_cumprod[::-1]  # step i runs chain index K−1−i
    return ab / (1.0 - ab)


@torch.no_grad()
def real_eps_norms(sampler: Sampler, model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> np.ndarray:
    """‖ε‖_i on the training distribution: the guided ε the model predicts for forward-noised real
    data x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε at each step's timestep, mean per-image RMS, (K,).

    Args:
        x0: (N, C, H, W) real (encoded) data, labels: (N,) its classes; ε is drawn from `seed`.
    """
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    out = np.empty(sampler.steps)
    for i in range(sampler.steps):
        k = sampler.steps - 1 - i
        noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x_t = sampler.diffusion.q_sample(x0, torch.full((len(x0),), k, device=x0.device, dtype=torch.long), noise)
        out[i] = image_rms(sampler.model_output(model, x_t, i, labels)[0]).mean()
    return out


@dataclass(frozen=True)
class RunTrace:
    """Per-step measures of one sampling run, each (K,); NaN where a measure does not apply
    (cache errors on steps that reuse nothing, the cosine where the previous step computed all)."""

    eps_norm: np.ndarray  # ‖ε̂‖_i of the ε used (scaled)
    snr: np.ndarray  # snr_estimate(x̂_t, final sample)
    attn_err: np.ndarray  # mean over reused blocks of the attention output's relative RMS error
    mlp_err: np.ndarray  # the same for the MLP
    eps_err: np.ndarray  # ‖ε̂ − ε̂_full‖ / ‖ε̂_full‖ (unscaled ε: the cache's error, not the correction)
    eps_err_cos: np.ndarray  # mean per-image cosine of the ε errors at steps i−1 and i
    final: torch.Tensor  # the final sample, (N, C, H, W)


def _sample(sampler: Sampler, model: nn.Module, noise: torch.Tensor, labels: torch.Tensor, schedule: Schedule | None,
            seed: int, probe_cache: bool) -> tuple[StepRecorder, CacheErrorProbe | None, torch.Tensor]:
    """One matched run: step noise from `seed`, with the recorder (and the cache probe) attached."""
    gen = torch.Generator(device=noise.device).manual_seed(seed)
    with ExitStack() as stack:
        cache = stack.enter_context(CachedModel(model, schedule)) if schedule is not None else None
        recorder = stack.enter_context(StepRecorder(model, sampler, noise.shape[1]))
        probe = stack.enter_context(CacheErrorProbe(cache, sampler, noise.shape[1])) if probe_cache and cache else None
        final = sampler.sample(model, noise, labels, cache, gen)
    if len(recorder.eps) != sampler.steps:
        raise RuntimeError(f"recorded {len(recorder.eps)} model calls for {sampler.steps} steps; a step policy "
                           "or a second forward per step breaks the one-call-per-step record")
    return recorder, probe, final


def _used_eps_norms(recorder: StepRecorder, schedule: Schedule | None) -> np.ndarray:
    scale = schedule.eps_scale if schedule is not None else (1.0,) * len(recorder.eps)
    return np.array([float(image_rms(e).mean()) * s for e, s in zip(recorder.eps, scale)])


@torch.no_grad()
def trace_run(sampler: Sampler, model: nn.Module, noise: torch.Tensor, labels: torch.Tensor,
              schedule: Schedule | None = None, seed: int = 0) -> RunTrace:
    """Sample once under `schedule` (None: no cache) with step noise from `seed`, measuring every step.

    Costs one extra all-compute forward per reuse step and one extra branch call per reused slot.
    """
    recorder, probe, final = _sample(sampler, model, noise, labels, schedule, seed, probe_cache=True)
    K = sampler.steps
    nan = np.full(K, np.nan)
    errs = {b: nan.copy() for b in BRANCHES}
    eps_err, cos = nan.copy(), nan.copy()
    if probe is not None:
        for (i, branch), values in probe.branch_errors.items():
            errs[branch][i] = float(np.mean(values))
        diffs = {i: recorder.eps[i] - full for i, full in probe.eps_full.items()}
        for i, d in diffs.items():
            eps_err[i] = float(d.double().norm() / probe.eps_full[i].double().norm())
            if i - 1 in diffs:
                cos[i] = float(torch.nn.functional.cosine_similarity(d.flatten(1), diffs[i - 1].flatten(1), dim=1).mean())
    snr = np.array([snr_estimate(x, final) for x in recorder.x])
    return RunTrace(_used_eps_norms(recorder, schedule), snr, errs["attn"], errs["mlp"], eps_err, cos, final)


@torch.no_grad()
def gap_profile(sampler: Sampler, model: nn.Module, schedule: Schedule | None, noise: torch.Tensor,
                labels: torch.Tensor, x0: torch.Tensor, x0_labels: torch.Tensor | None = None, seed: int = 0) -> np.ndarray:
    """The exposure-bias gap ‖ε̂‖_i − ‖ε‖_i per step, (K,): one sampling run plus K forwards on
    forward-noised real data, with no cache probes, so a search can afford it per trial.

    Args:
        noise, labels: the run's x_T (N, C, H, W) and classes; step noise comes from `seed`.
        x0, x0_labels: real data (M, C, H, W) and its classes (default: `labels`) for ‖ε‖_i.
    """
    recorder, _, _ = _sample(sampler, model, noise, labels, schedule, seed, probe_cache=False)
    real = real_eps_norms(sampler, model, x0, labels if x0_labels is None else x0_labels, seed)
    return _used_eps_norms(recorder, schedule) - real
