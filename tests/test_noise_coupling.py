"""Step noise: the default path draws what the sampler drew before the seam, and coupled noise is
N(0, I), independent across coarse steps and made of the reference path's own draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebtune import make_sampler
from ebtune.cli.config import compose
from ebtune.core.diffusion import linear_betas, space_timesteps
from ebtune.core.schedule import no_cache
from ebtune.sampling.noise import CoupledNoise, GeneratorNoise, coupling_groups
from ebtune.search.baseline_cache import outcome_key
from ebtune.search.evaluator import Evaluator

FINE, COARSE = 12, 5  # grids that do not nest: 0, 91, 182, ... and 0, 250, 500, 749, 999
N = 40_000  # draws per coarse step: every element of one draw is an independent sample


def fine_draws(seed: int, like: torch.Tensor, steps: int = FINE) -> dict[int, torch.Tensor]:
    """What a `steps`-step stochastic run draws from generator `seed`: one tensor per chain index K−1 … 1."""
    gen = torch.Generator().manual_seed(seed)
    return {j: torch.randn(like.shape, generator=gen) for j in range(steps - 1, 0, -1)}


def groups_by_interval(fine: int, coarse: int) -> dict[int, list[int]]:
    """Coarse chain index c ≥ 1 → fine chain indices whose timestep lies in (t_{c−1}, t_c], by a plain scan."""
    tf, tc = space_timesteps(1000, fine), space_timesteps(1000, coarse)
    return {c: [j for j in range(1, fine) if tc[c - 1] < tf[j] <= tc[c]] for c in range(1, coarse)}


def posterior_std(steps: int) -> np.ndarray:
    """sqrt of the respaced chain's posterior variance, from the 1000-step ᾱ at the kept timesteps."""
    acp = np.cumprod(1 - linear_betas())[space_timesteps(1000, steps)]
    prev = np.append(1.0, acp[:-1])
    return np.sqrt((1 - acp / prev) * (1 - prev) / (1 - acp))


def coupled_draws(seed: int, like: torch.Tensor, fine: int = FINE, coarse: int = COARSE) -> dict[int, torch.Tensor]:
    noise = CoupledNoise(torch.Generator().manual_seed(seed), fine, coarse)
    return {c: noise.draw(c, like) for c in range(coarse - 1, 0, -1)}


def test_generator_noise_draws_the_old_randn_sequence():
    like = torch.zeros(3, 4, 5, 5, dtype=torch.float64)
    noise, gen = GeneratorNoise(torch.Generator().manual_seed(7)), torch.Generator().manual_seed(7)
    for k in (4, 3, 2, 1):
        assert torch.equal(noise.draw(k, like), torch.randn(like.shape, generator=gen, dtype=like.dtype))


@pytest.mark.parametrize("name, params", [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_default_sampling_is_bit_identical_to_drawing_in_each_step(small_dit, name, params):
    """The loop with a generator equals the pre-seam loop, written out here: each stochastic step drew
    torch.randn(x.shape, generator=...) itself, after the model call, at chain indices K−1 … 1."""
    steps, labels = 6, torch.tensor([0, 3])
    sampler = make_sampler(name, steps, **params)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    got = sampler.sample(small_dit, noise, labels, None, torch.Generator().manual_seed(1))
    gen, x, d = torch.Generator().manual_seed(1), noise, sampler.diffusion
    for i in range(steps):
        k = steps - 1 - i
        eps, var_values = sampler.model_output(small_dit, x, i, labels)
        if name == "ddpm":
            mean, _, log_var = d.p_mean_variance(x, torch.full((2,), k), eps, var_values)
            x = mean if k == 0 else mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=gen)
        else:
            ab, abp = d.alphas_cumprod[k], d.alphas_cumprod_prev[k]
            sigma = math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
            x0 = d.sqrt_recip_alphas_cumprod[k] * x - d.sqrt_recipm1_alphas_cumprod[k] * eps
            mean = x0 * math.sqrt(abp) + math.sqrt(max(1 - abp - sigma**2, 0.0)) * eps
            x = mean if k == 0 else mean + sigma * torch.randn(x.shape, generator=gen)
    assert torch.equal(got, x)
    again = sampler.sample(small_dit, noise, labels, step_noise=GeneratorNoise(torch.Generator().manual_seed(1)))
    assert torch.equal(again, got)
    with pytest.raises(ValueError, match="not both"):
        sampler.sample(small_dit, noise, labels, None, torch.Generator(), step_noise=GeneratorNoise())


def test_every_fine_draw_enters_one_coarse_step_by_its_timestep():
    groups = coupling_groups(FINE, COARSE)
    assert groups[0] == [] and {c: g for c, g in enumerate(groups) if c} == groups_by_interval(FINE, COARSE)
    assert sorted(j for g in groups for j in g) == list(range(1, FINE))
    assert coupling_groups(FINE, 1) == [[]]  # a 1-step run draws no noise: nothing to couple


def test_equal_grids_give_exactly_the_plain_draws():
    like = torch.zeros(4, 3, 2, 2)
    coupled = coupled_draws(3, like, FINE, FINE)
    for j, z in fine_draws(3, like).items():
        assert torch.equal(coupled[j], z)


def test_coupled_noise_is_standard_normal_and_independent_across_coarse_steps():
    like = torch.zeros(N)
    z = torch.stack([coupled_draws(0, like)[c] for c in range(1, COARSE)], dim=1).double().numpy()  # (N, k−1)
    tol = 5 / math.sqrt(N)  # five standard errors of a mean or a correlation of N unit samples
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=tol)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(COARSE - 1), atol=5 * math.sqrt(2 / N))


def test_each_coarse_draw_is_the_weighted_combination_of_its_fine_draws():
    like = torch.zeros(N)
    coupled, fine, w = coupled_draws(1, like), fine_draws(1, like), posterior_std(FINE)
    for c, group in groups_by_interval(FINE, COARSE).items():
        norm = math.sqrt(sum(w[j] ** 2 for j in group))
        want = sum(w[j] * fine[j].double() for j in group) / norm
        torch.testing.assert_close(coupled[c].double(), want, rtol=1e-5, atol=1e-5)
        for j in group:
            corr = np.corrcoef(coupled[c].numpy(), fine[j].numpy())[0, 1]
            assert abs(corr - w[j] / norm) < 5 / math.sqrt(N)


def test_a_coarse_step_without_fine_timesteps_gets_a_fresh_independent_draw():
    fine, coarse = 4, 9  # finer coarse grid: most of its intervals hold no fine timestep
    like = torch.zeros(N)
    coupled, plain = coupled_draws(2, like, fine, coarse), fine_draws(2, like, fine)
    groups = coupling_groups(fine, coarse)
    fresh = [c for c in range(1, coarse) if not groups[c]]
    assert fresh
    for c in fresh:
        assert abs(coupled[c].std().item() - 1) < 5 / math.sqrt(N)
        assert all(abs(np.corrcoef(coupled[c].numpy(), z.numpy())[0, 1]) < 5 / math.sqrt(N) for z in plain.values())


SEARCH = ["model=dit-tiny", "steps=6", "metric.n_samples=8", "metric.batch_size=4", "metric.latency_warmup=0",
          "metric.n_proxy=0", "metric.latency_pairs=0", "metric.bootstrap=10"]


def test_a_fewer_step_ddpm_baseline_is_coupled_and_keyed_by_it():
    on, off = (Evaluator(compose([*SEARCH, f"metric.couple_noise={v}"], config_name="search"), "cpu")
               for v in ("true", "false"))
    fewer, schedule = on.sampler_at(3), no_cache(3, on.loaded.config.depth)
    assert (on.coupled_steps(fewer), off.coupled_steps(off.sampler_at(3))) == (6, None)
    assert on.coupled_steps(on.sampler) is None and on.coupled_steps(on.sampler_at(3, "ddim")) is None
    coupled, plain = on.evaluate(schedule, None, fewer), off.evaluate(schedule, None, off.sampler_at(3))
    assert not np.allclose(coupled.latents, plain.latents)
    assert outcome_key(on, schedule, fewer) != outcome_key(off, schedule, off.sampler_at(3))
    full = no_cache(6, on.loaded.config.depth)  # the K-step run draws plainly whatever the setting
    assert outcome_key(on, full, on.sampler) == outcome_key(off, full, off.sampler)
    np.testing.assert_array_equal(on.evaluate(full, None).latents, off.evaluate(full, None).latents)
