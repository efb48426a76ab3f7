"""One sampling loop for every sampler; a sampler only supplies its `update` step.

The loop owns the step noise (a `StepNoise`; by default drawn from the run's generator), the respaced
timesteps, classifier-free guidance (DiT's doubled batch with the null label, guidance on the first
`channels` ε channels), the cache lifecycle and the single ε-scale hook, which rescales the guided ε
before the sampler step. Sampling step i runs chain index K−1−i, so step 0 is the noisiest. A
multistep rule (DPM-Solver++) also sees the loop's last few steps as it consumed them (`Past`); the
loop owns that history and starts it empty each call.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ebtune.cache.engine import CachedModel
from ebtune.core.diffusion import GaussianDiffusion
from ebtune.core.schedule import Schedule
from ebtune.registry import Registry
from ebtune.sampling.noise import GeneratorNoise, StepNoise


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: ε = ε_u + scale·(ε_c − ε_u) on the first `channels` channels.

    DiT guides only 3 of its 4 latent channels; `channels=None` guides all. scale ≤ 1 disables
    guidance (no doubled batch), as in DiT's sample.py.
    """

    scale: float = 1.0
    null_label: int = 1000
    channels: int | None = 3

    @property
    def active(self) -> bool:
        return self.scale > 1.0


@dataclass(frozen=True)
class Past:
    """One earlier step of the running loop, as its step consumed it: chain index k, the input x and
    the guided, scaled ε, each (N, C, H, W). Read-only; the loop drops it when it runs out of lookback."""

    k: int
    x: torch.Tensor
    eps: torch.Tensor


class SamplerStep(ABC):
    """x_{k} → x_{k−1} given the guided, scaled ε and the variance channels.

    `lookback` is how many earlier steps of the same loop `update` sees in `history` (newest last);
    0, the default, for one-step rules, which then receive `()`. The loop keeps that history, starts
    it empty on every `Sampler.sample` and appends to it only after a step's update, so a step
    policy's trial evaluations never enter it. A stochastic rule takes its noise from `noise.draw(k, x)`,
    never from a generator of its own, so the loop decides where it comes from (`CoupledNoise`).
    """

    name: str  # the registry name, recorded with every result
    lookback: int = 0
    stochastic: bool = False  # whether `update` draws noise

    @abstractmethod
    def update(
        self, diffusion: GaussianDiffusion, k: int, x: torch.Tensor, eps: torch.Tensor, var_values: torch.Tensor,
        noise: StepNoise, history: tuple[Past, ...],
    ) -> torch.Tensor:
        """One reverse step at chain index k (k = 0 is the last)."""


def predict_x0(diffusion: GaussianDiffusion, k: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂₀ = (x − sqrt(1−ᾱ_k)·ε) / sqrt(ᾱ_k), the data prediction at chain index k."""
    return diffusion.sqrt_recip_alphas_cumprod[k] * x - diffusion.sqrt_recipm1_alphas_cumprod[k] * eps


class AncestralStep(SamplerStep):
    """DiT's `p_sample`: posterior mean from x̂₀ plus learned-range variance noise (none at k = 0)."""

    name = "ddpm"
    stochastic = True

    def update(self, diffusion, k, x, eps, var_values, noise, history):
        t = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        mean, _, log_var = diffusion.p_mean_variance(x, t, eps, var_values)
        if k == 0:
            return mean
        return mean + torch.exp(0.5 * log_var) * noise.draw(k, x)


@dataclass(frozen=True)
class DDIMStep(SamplerStep):
    """DDIM (Song et al. 2021, Eq. 12): deterministic at eta = 0; ε is used as predicted (no clipping)."""

    eta: float = 0.0
    name = "ddim"

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"ddim eta must be >= 0, got {self.eta}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def update(self, diffusion, k, x, eps, var_values, noise, history):
        ab, ab_prev = diffusion.alphas_cumprod[k], diffusion.alphas_cumprod_prev[k]
        x0 = predict_x0(diffusion, k, x, eps)
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        mean = x0 * math.sqrt(ab_prev) + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if k == 0 or sigma == 0:
            return mean
        return mean + sigma * noise.draw(k, x)


def half_log_snr(alpha_bar: float) -> float:
    """λ = log(α/σ) with α = sqrt(ᾱ), σ = sqrt(1 − ᾱ) (DPM-Solver's time variable), in float64."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


class DPMSolverPP(SamplerStep):
    """Multistep DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095) on the data prediction
    x̂₀ = (x − σ_s ε)/α_s, from chain index k (ᾱ_s = ᾱ_k) to ᾱ_t = ᾱ_{k−1}, of order 1 + the earlier
    steps it has (at most `lookback`) and at most the k + 1 steps left: one model evaluation per step,
    so the first steps warm up at lower order, and 3M's second-to-last step is second order, because
    the last jump in λ (to chain index 0) is the largest and a third-order extrapolation over it
    spoils few-step samples (docs/solvers.md; diffusers' `lower_order_final` does this below 15 steps).

    With h = λ_t − λ_s, φ = e^{−h} − 1, earlier predictions x̂₀', x̂₀'' at λ', λ'' and
    r₀ = (λ_s − λ')/h, r₁ = (λ' − λ'')/h, D₁' = (x̂₀ − x̂₀')/r₀, D₁'' = (x̂₀' − x̂₀'')/r₁:
    - order 1 (DDIM): x_t = (σ_t/σ_s)·x − α_t·φ·x̂₀;
    - order 2 (Algorithm 2, "2M"): x̂₀ above becomes x̂₀ + D₁'/2;
    - order 3 ("3M", the multistep third-order update of DPM-Solver, Lu et al. 2022a, arXiv 2206.00927,
      in data prediction): x_t = (σ_t/σ_s)·x − α_t·φ·x̂₀ + α_t·(φ/h + 1)·D₁ − α_t·((φ + h)/h² − ½)·D₂
      with D₁ = D₁' + r₀/(r₀ + r₁)·(D₁' − D₁''), D₂ = (D₁' − D₁'')/(r₀ + r₁).
    The step from chain index 0 goes to ᾱ = 1 (σ_t = 0, λ_t = ∞), where every order gives x_t = x̂₀:
    it lands on x₀ as DDIM's last step does (diffusers' `final_sigmas_type="zero"`).
    """

    def update(self, diffusion, k, x, eps, var_values, noise, history):
        x0 = predict_x0(diffusion, k, x, eps)
        if k == 0:
            return x0
        ab_t = diffusion.alphas_cumprod_prev[k]
        pasts = [(k, x0)] + [(p.k, predict_x0(diffusion, p.k, p.x, p.eps)) for p in reversed(history[-k:])]
        lam = [half_log_snr(diffusion.alphas_cumprod[j]) for j, _ in pasts]  # λ_s, λ', λ''
        h = half_log_snr(ab_t) - lam[0]
        phi = math.expm1(-h)  # e^{−h} − 1 without the cancellation at small h (large K)
        base = math.sqrt((1 - ab_t) / (1 - diffusion.alphas_cumprod[k])) * x
        a_t = math.sqrt(ab_t)
        if len(pasts) == 1:
            return base - a_t * phi * x0
        d1 = (x0 - pasts[1][1]) * (h / (lam[0] - lam[1]))  # D₁'
        if len(pasts) == 2:
            return base - a_t * phi * (x0 + 0.5 * d1)
        r0, r1 = (lam[0] - lam[1]) / h, (lam[1] - lam[2]) / h
        diff = d1 - (pasts[1][1] - pasts[2][1]) / r1  # D₁' − D₁''
        return (base - a_t * phi * x0 + a_t * (phi / h + 1) * (d1 + r0 / (r0 + r1) * diff)
                - a_t * ((phi + h) / h**2 - 0.5) * diff / (r0 + r1))


@dataclass(frozen=True)
class DPMSolverPP2M(DPMSolverPP):
    """DPM-Solver++(2M): second order from the second step on (see `DPMSolverPP`)."""

    name = "dpmpp-2m"
    lookback = 1


@dataclass(frozen=True)
class DPMSolverPP3M(DPMSolverPP):
    """DPM-Solver++(3M): third order from the third step to the third-to-last (see `DPMSolverPP`)."""

    name = "dpmpp-3m"
    lookback = 2


class StepPolicy(ABC):
    """Chooses a step's cache state while the loop runs, for rules that must see the model at work
    (EB-Cache calibration). Static schedules need none: they are decided before the loop."""

    @abstractmethod
    def decide(self, i: int, trial: Callable[[tuple[bool, bool]], torch.Tensor]) -> tuple[bool, bool] | None:
        """(compute attention, compute MLP) for every block at step i, or None to follow the schedule.

        `trial(state)` returns the guided ε (unscaled) at step i under `state`, evaluated without
        changing the cache, so a policy can compare candidates before the loop commits one.
        """


def step_times(steps: int) -> tuple[float, ...]:
    """Normalised time of each of K sampling steps: 1 at step 0 (pure noise) down to 0."""
    return tuple(float(v) for v in GaussianDiffusion.respaced(steps).normalised_time()[::-1])


SAMPLER_STEPS: Registry[SamplerStep] = Registry("sampler")
SAMPLER_STEPS.register("ddpm", AncestralStep)
SAMPLER_STEPS.register("ddim", DDIMStep)
SAMPLER_STEPS.register("dpmpp-2m", DPMSolverPP2M)
SAMPLER_STEPS.register("dpmpp-3m", DPMSolverPP3M)


class Sampler:
    """K-step sampler over DiT's respaced linear-beta chain.

    Args:
        steps: number of sampling steps K.
        step: the update rule (a `SamplerStep`, e.g. `DDIMStep`).
        guidance: classifier-free guidance settings.
    """

    def __init__(self, steps: int, step: SamplerStep, guidance: Guidance = Guidance()):
        self.diffusion = GaussianDiffusion.respaced(steps)
        self.steps = steps
        self.step = step
        self.guidance = guidance

    @property
    def times(self) -> tuple[float, ...]:
        return step_times(self.steps)

    def model_timestep(self, i: int) -> int:
        return self.diffusion.timestep_map[self.steps - 1 - i]

    def model_output(self, model: nn.Module, x: torch.Tensor, i: int, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided ε and the variance channels at sampling step i: (N, C, H, W) each."""
        t = torch.full((x.shape[0],), self.model_timestep(i), device=x.device, dtype=torch.long)
        if not self.guidance.active:
            return self.guided(model(x, t, labels), x.shape[1])
        null = torch.full_like(labels, self.guidance.null_label)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2N, C_out, H, W)
        return self.guided(out, x.shape[1])

    def guided(self, out: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided ε and variance channels from one raw model output: (N, C_out, H, W), or the doubled
        (cond, uncond) batch (2N, C_out, H, W) when guidance is active; C is the latent channel count."""
        if not self.guidance.active:
            return out[:, :C], out[:, C:]
        cond, uncond = out.chunk(2)
        g = C if self.guidance.channels is None else min(self.guidance.channels, C)
        guided = uncond[:, :g] + self.guidance.scale * (cond[:, :g] - uncond[:, :g])
        eps = torch.cat([guided, cond[:, g:C]], dim=1)
        return eps, cond[:, C:]

    def update(self, i: int, x: torch.Tensor, eps: torch.Tensor, var_values: torch.Tensor, noise: StepNoise | None,
               history: tuple[Past, ...] = ()) -> torch.Tensor:
        """The step's update at sampling step i; `history` holds earlier steps of this loop (see `SamplerStep`);
        `noise` None draws from torch's global generator.

        Raises:
            ValueError: a multistep rule given fewer earlier steps than it looks back at (a loop of
                one's own that forgot them would otherwise run it silently at first order).
        """
        if len(history) < min(i, self.step.lookback):
            raise ValueError(f"{self.step.name} looks back at {self.step.lookback} earlier step(s) but step {i} got "
                             f"{len(history)}; pass history=(Past(k, x, eps) of the previous steps) "
                             "or use Sampler.sample")
        noise = noise or GeneratorNoise()
        return self.step.update(self.diffusion, self.steps - 1 - i, x, eps, var_values, noise, history)

    def _cache_for(self, model: nn.Module, schedule: Schedule | CachedModel | None) -> tuple[CachedModel | None, bool]:
        """The cache a run uses and whether the run owns it (attached for this call only)."""
        if schedule is None or isinstance(schedule, CachedModel):
            cache, owned = schedule, False
        else:
            cache, owned = CachedModel(model, schedule), True
        if cache is not None and cache.schedule.steps != self.steps:
            if owned:
                cache.close()
            raise ValueError(f"schedule has {cache.schedule.steps} steps but the sampler runs {self.steps}; retarget it first")
        return cache, owned

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        noise: torch.Tensor,
        labels: torch.Tensor,
        schedule: Schedule | CachedModel | None = None,
        generator: torch.Generator | None = None,
        on_step: Callable[[int], None] | None = None,
        policy: StepPolicy | None = None,
        step_noise: StepNoise | None = None,
    ) -> torch.Tensor:
        """Run the K steps from `noise` (N, C, H, W) for `labels` (N,); returns the final x₀ sample.

        Args:
            schedule: a `Schedule` attaches a cache for this call only (removed at its end); an
                attached `CachedModel` is used as it is (reset at the start, left attached), so an
                evaluation attaches once for all its batches. ε is scaled by the schedule's
                `eps_scale[i]` at step i.
            policy: decides each step's cache state while the loop runs (see `StepPolicy`).
            generator, step_noise: a stochastic step's noise comes from `step_noise` when given (e.g. a
                `CoupledNoise`), else it is drawn from `generator` in step order (`GeneratorNoise`).

        Raises:
            ValueError: both `generator` and `step_noise` given; a schedule for another step count; a
                policy without a schedule.
        """
        if generator is not None and step_noise is not None:
            raise ValueError("pass the step noise's generator or a step_noise, not both")
        step_noise = step_noise or GeneratorNoise(generator)
        if policy is not None and schedule is None:
            raise ValueError("a step policy chooses cache states, so it needs a schedule (e.g. no_cache(steps, depth))")
        cache, owned = self._cache_for(model, schedule)
        try:
            if cache is not None:
                cache.reset()
                # A policy may leave a step to the schedule (None) and reuse its outputs at an overridden one.
                cache.keep_all = cache.keep_all or policy is not None
            x = noise
            history: deque[Past] = deque(maxlen=self.step.lookback)  # maxlen 0 keeps nothing
            for i in range(self.steps):
                if cache is not None:
                    cache.set_step(i)
                if policy is not None:
                    def trial(state: tuple[bool, bool], x: torch.Tensor = x, i: int = i) -> torch.Tensor:
                        with cache.what_if(state):
                            return self.model_output(model, x, i, labels)[0]

                    cache.set_step(i, policy.decide(i, trial))
                eps, var_values = self.model_output(model, x, i, labels)
                scale = 1.0 if cache is None else cache.schedule.eps_scale[i]
                if scale != 1.0:
                    eps = eps * scale
                x_next = self.update(i, x, eps, var_values, step_noise, tuple(history))
                history.append(Past(self.steps - 1 - i, x, eps))
                x = x_next
                if on_step is not None:
                    on_step(i)
            return x
        finally:
            if owned:
                cache.close()


def make_sampler(name: str, steps: int, guidance: Guidance = Guidance(), **params) -> Sampler:
    """`name` is a `SAMPLER_STEPS` name ("ddpm", "ddim", "dpmpp-2m", "dpmpp-3m"); params go to the step
    (e.g. eta for ddim)."""
    step = SAMPLER_STEPS.make(name, **params)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return Sampler(steps, step, guidance)
