"""Multistep solvers against an independent reference: diffusers' schedulers fed the same ε sequence on
DiT's respaced chain (diffusers is a dev dependency; the core never imports it). The all-compute-cache
bit-identity of every sampler is in tests/test_registries.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebtune import make_sampler
from ebtune.core.diffusion import linear_betas
from ebtune.core.dit import DiT
from ebtune.core.schedule import Schedule, no_cache
from ebtune.sampling.samplers import Guidance, Sampler, SamplerStep, StepPolicy
from ebtune.schedules import ScheduleContext, fora

from .conftest import SMALL, randomised

STEPS = 8
C = 4
# diffusers' solver order per solver; `lower_order_final` lowers 3M's second-to-last step to second
# order as ebtune does, but only below 15 steps, so from 15 steps on 3M's last two steps have no reference.
ORDER = {"dpmpp-2m": 2, "dpmpp-3m": 3}
SOLVERS = sorted(ORDER)


def referenced_steps(name: str, steps: int) -> int:
    return steps - 2 if ORDER[name] == 3 and steps >= 15 else steps


def reference(name: str, steps: int):
    """The diffusers scheduler that solves `name` on DiT's chain: 1000 linear betas 1e-4..0.02, ε
    prediction, the K timesteps DiT's respacing keeps, and the last step landing on σ = 0 (x₀).

    diffusers keeps its σ = sqrt((1−ᾱ)/ᾱ) table in float32 (float32 betas and cumprod, then a float32
    cast), which alone moves x by up to ~2e-4 on these trajectories (1 − ᾱ = 1e-4 at t = 0 keeps only
    four digits). So its table is checked against the chain's to 1e-3, then replaced by the chain's
    float64 σ's, and the trajectories compare the solvers' arithmetic.
    """
    schedulers = pytest.importorskip("diffusers.schedulers")  # only the reference tests need diffusers
    scheduler = schedulers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
        algorithm_type="dpmsolver++", solver_type="midpoint", final_sigmas_type="zero", solver_order=ORDER[name],
        lower_order_final=True)
    diffusion = make_sampler(name, steps).diffusion
    timesteps = list(reversed(diffusion.timestep_map))
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.timesteps.tolist() == timesteps
    ab = diffusion.alphas_cumprod[::-1]
    sigmas = torch.from_numpy(np.append(np.sqrt((1 - ab) / ab), 0.0))
    torch.testing.assert_close(scheduler.sigmas.double(), sigmas, rtol=1e-3, atol=0)
    scheduler.sigmas = sigmas
    return scheduler


class GaussianDataEps(torch.nn.Module):
    """ε(x, t) for data x₀ ~ N(0, s²): the exact σ_t·x / (α_t²s² + σ_t²), plus a fixed random
    perturbation 0.1·tanh(W·x + b·t/1000) over channels (float64), with zero variance channels. Both loops
    see the same ε at the same (x, t), and the trajectory stays O(s), so an absolute error means something."""

    def __init__(self, seed: int = 0, s: float = 0.8):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(C, C, generator=gen, dtype=torch.float64) * 0.7
        self.b = torch.randn(C, generator=gen, dtype=torch.float64)
        self.alpha_bar = torch.from_numpy(np.cumprod(1 - linear_betas()))
        self.s = s

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, 1, 1, 1)
        exact = (1 - ab).sqrt() * x / (ab * self.s**2 + 1 - ab)
        mixed = torch.einsum("dc,nchw->ndhw", self.w, x) + self.b.view(1, C, 1, 1) * t.view(-1, 1, 1, 1) / 1000
        eps = exact + 0.1 * torch.tanh(mixed)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


@torch.no_grad()
def diffusers_trajectory(scheduler, eps_at, noise: torch.Tensor) -> list[torch.Tensor]:
    """x after each step of diffusers' loop; `eps_at(i, x, t)` is the ε the solver consumes at step i."""
    x, out = noise, []
    for i, t in enumerate(scheduler.timesteps):  # under the loop's no_grad, as `Sampler.sample` runs
        x = scheduler.step(eps_at(i, x, t), t, x).prev_sample
        out.append(x)
    return out


class Recording(SamplerStep):
    """Another step's update, keeping every x it returns (the loop's trajectory)."""

    def __init__(self, inner: SamplerStep):
        self.inner, self.name, self.lookback, self.xs = inner, inner.name, inner.lookback, []

    def update(self, diffusion, k, x, eps, var_values, generator, history):
        self.xs.append(self.inner.update(diffusion, k, x, eps, var_values, generator, history))
        return self.xs[-1]


def ebtune_trajectory(sampler: Sampler, model, noise, labels, schedule=None) -> list[torch.Tensor]:
    """x after each step of `Sampler.sample` (its one loop) with `sampler`'s step and guidance."""
    recording = Recording(sampler.step)
    final = Sampler(sampler.steps, recording, sampler.guidance).sample(model, noise, labels, schedule)
    assert recording.xs[-1] is final
    return recording.xs


def max_error(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """Largest |difference| over every step; diffusers rounds x to float32 inside its step, so O(1)
    trajectories agree to ~1e-6, not to float64's 1e-12."""
    assert len(ours) == len(theirs)
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 10, 25, 50])
def test_solver_matches_diffusers_step_by_step(name, steps):
    model = GaussianDataEps()
    noise = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    labels = torch.zeros(2, dtype=torch.long)
    sampler = make_sampler(name, steps)
    ours = ebtune_trajectory(sampler, model, noise, labels)
    theirs = diffusers_trajectory(reference(name, steps), lambda i, x, t: model(x, t.expand(len(x)))[:, :C], noise)
    n = referenced_steps(name, steps)
    err = max_error(ours[:n], theirs[:n])
    print(f"{name} K={steps}: max |ebtune - diffusers| over {n} steps = {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_with_guidance_and_eps_scaling_matches_diffusers(name):
    """The solver consumes the guided, scaled ε: diffusers fed ebtune's guided ε times the schedule's
    factor at each step agrees with ebtune's loop under that schedule (a float64 randomised DiT).

    A random DiT's ε denoises nothing, so x grows to hundreds; diffusers rounds x to float32 in its
    step, so the bound is relative: 1e-6 of the largest |x| (float32 keeps ~6e-8)."""
    model = randomised(DiT(SMALL)).double()
    sampler = make_sampler(name, STEPS, Guidance(2.5, SMALL.num_classes, channels=3))
    noise = torch.randn(3, C, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = torch.tensor([0, 2, 4])
    factors = np.linspace(1.0, 0.95, STEPS)
    schedule = no_cache(STEPS, SMALL.depth).with_eps_scale(factors)
    ours = ebtune_trajectory(sampler, model, noise, labels, schedule)
    theirs = diffusers_trajectory(reference(name, STEPS),
                                  lambda i, x, t: factors[i] * sampler.model_output(model, x, i, labels)[0], noise)
    err = max_error(ours, theirs)
    scale = max(float(x.abs().max()) for x in ours)
    print(f"{name} K={STEPS}, cfg 2.5, eps scaled: max |ebtune - diffusers| = {err:.2e} (max |x| {scale:.0f})")
    assert err < 1e-6 * scale
    unscaled = sampler.sample(model, noise, labels)
    assert (unscaled - ours[-1]).abs().max() > 1e-3  # the factors reached the solver


@pytest.mark.parametrize("name", SOLVERS)
def test_multistep_after_the_first_step(name):
    """Step 0 has no history, so it is first order: DPM-Solver++(1) is DDIM; from step 1 on the
    multistep correction moves x away from DDIM's."""
    model = GaussianDataEps()
    noise = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.zeros(2, dtype=torch.long)
    dpm = ebtune_trajectory(make_sampler(name, 6), model, noise, labels)
    ddim = ebtune_trajectory(make_sampler("ddim", 6), model, noise, labels)
    torch.testing.assert_close(dpm[0], ddim[0], rtol=1e-12, atol=1e-12)  # DPM-Solver++(1) is DDIM
    assert (dpm[1] - ddim[1]).abs().max() > 1e-6


def test_3m_departs_from_2m_at_its_third_step():
    model = GaussianDataEps()
    noise = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.zeros(2, dtype=torch.long)
    two, three = (ebtune_trajectory(make_sampler(name, 6), model, noise, labels) for name in ("dpmpp-2m", "dpmpp-3m"))
    assert torch.equal(two[1], three[1]) and (two[2] - three[2]).abs().max() > 1e-6


@pytest.mark.parametrize("name", SOLVERS)
def test_fresh_history_on_every_call(name, small_dit):
    sampler = make_sampler(name, STEPS, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1])
    first = sampler.sample(small_dit, noise, labels)
    sampler.sample(small_dit, torch.randn_like(noise), labels)
    assert torch.equal(first, sampler.sample(small_dit, noise, labels))


@pytest.mark.parametrize("name", SOLVERS)
def test_an_own_loop_without_history_fails_loudly(name):
    sampler = make_sampler(name, 4)
    x = torch.randn(1, C, 4, 4)
    assert sampler.update(0, x, x, x, None).shape == x.shape  # the first step has nothing to look back at
    with pytest.raises(ValueError, match=f"{name} looks back at {sampler.step.lookback} earlier step"):
        sampler.update(1, x, x, x, None)


@pytest.mark.parametrize("name", SOLVERS)
def test_fora_caching_runs_with_each_solver(name, small_dit):
    sampler = make_sampler(name, STEPS, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3])
    plain = sampler.sample(small_dit, noise, labels)
    schedule = fora(ScheduleContext(STEPS, SMALL.depth, sampler.times), interval=2)
    cached = sampler.sample(small_dit, noise, labels, schedule)
    assert torch.isfinite(cached).all()
    assert 0 < float((cached - plain).abs().max()) < float(plain.abs().max())


@pytest.mark.parametrize("name", SOLVERS)
def test_a_policys_trials_leave_the_solver_history_alone(name, small_dit):
    """A policy that evaluates every candidate state before choosing gives the result of the same
    choices made statically: trials evaluate the model only and never reach the solver's history."""
    choices = [(True, True), (False, True), (True, False), (True, True), (False, False), (True, True), (False, True),
               (True, True)]

    class TryAll(StepPolicy):
        def decide(self, i, trial):
            for state in [(True, True), (False, False), (True, False), (False, True)] if i else [(True, True)]:
                trial(state)
            return choices[i]

    sampler = make_sampler(name, STEPS, Guidance(2.0, SMALL.num_classes))
    noise, labels = torch.randn(2, C, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 2])
    static = Schedule.from_step_masks([a for a, _ in choices], [m for _, m in choices], SMALL.depth)
    got = sampler.sample(small_dit, noise, labels, no_cache(STEPS, SMALL.depth), policy=TryAll())
    assert torch.equal(got, sampler.sample(small_dit, noise, labels, static))


@pytest.mark.parametrize("extra", [[], ["schedule=fora", "schedule.interval=2"]])
def test_cli_samples_with_dpmpp_2m(ebtune, tmp_path, extra):
    out = tmp_path / "s"
    assert ebtune("sample", "model=dit-tiny", "steps=10", "n=8", "sampler=dpmpp-2m", f"out={out}", *extra) == 0
    images = np.load(out / "samples.npz")["images"]
    assert images.shape[0] == 8 and images.std() > 10  # not a flat or blown-out grid
    assert (out / "grid.png").stat().st_size > 0
