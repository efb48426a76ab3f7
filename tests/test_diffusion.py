"""Respacing, samplers and ε scaling against independent formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebtune import make_sampler
from ebtune.core.diffusion import GaussianDiffusion, linear_betas, space_timesteps
from ebtune.core.eps_scale import EBCacheScale, make_eps_scale
from ebtune.core.schedule import no_cache
from ebtune.sampling.samplers import Guidance

from .conftest import SMALL


def test_respacing_keeps_alpha_bar_at_the_kept_timesteps():
    keep = space_timesteps(1000, 50)
    assert len(keep) == 50 and keep[0] == 0 and keep[-1] == 999 and keep[1] == round(999 / 49)
    d = GaussianDiffusion.respaced(50)
    base = np.cumprod(1 - linear_betas())
    np.testing.assert_allclose(d.alphas_cumprod, base[keep], rtol=1e-12)
    assert d.timestep_map == keep
    assert GaussianDiffusion.respaced(1).timestep_map == [0]
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        space_timesteps(1000, 0)


def test_ddim_eta0_is_the_closed_form():
    sampler = make_sampler("ddim", 5)
    d = sampler.diffusion
    x, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    k = 3
    ab, abp = d.alphas_cumprod[k], d.alphas_cumprod[k - 1]
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    want = math.sqrt(abp) * x0 + math.sqrt(1 - abp) * eps
    got = sampler.update(sampler.steps - 1 - k, x, eps, torch.zeros_like(x), None)
    torch.testing.assert_close(got, want)


def test_ebcache_scale_shape():
    b = EBCacheScale(b_h=0.98, b_l=0.96, t_s=0.4)
    assert b.factor(1.0) == pytest.approx(1.0)
    assert b.factor(0.4) == pytest.approx(0.98 + 0.02 * math.exp(-5))
    # As published, the two branches meet at t_s up to the (1 - b_h)·e^-5 tail of the upper one.
    assert b.factor(0.4 - 1e-9) == pytest.approx(0.98, abs=1e-8)
    assert 0.96 < b.factor(0.0) < 0.962
    assert make_eps_scale("linear", k=0.0, b=1.01).factor(0.3) == pytest.approx(1 / 1.01)
    with pytest.raises(ValueError, match="unknown eps_scale 'x'; choose one of"):
        make_eps_scale("x")
    with pytest.raises(ValueError, match="must be positive"):
        make_eps_scale("constant", value=-1)


@pytest.mark.parametrize("sampler_name", ["ddpm", "ddim"])
def test_eps_scale_touches_guided_eps_only(small_dit, sampler_name):
    """Scaling ε after guidance equals a model whose ε channels (not its variance) are pre-scaled."""
    s, steps = 0.9, 6
    sampler = make_sampler(sampler_name, steps, Guidance(3.0, SMALL.num_classes, channels=None))

    def prescaled(x, t, y):
        out = small_dit(x, t, y)
        return torch.cat([s * out[:, :4], out[:, 4:]], dim=1)

    noise, labels = torch.randn(3, 4, 8, 8), torch.tensor([0, 2, 4])
    got = sampler.sample(small_dit, noise, labels, no_cache(steps, 3).with_eps_scale([s] * steps), torch.Generator().manual_seed(1))
    want = sampler.sample(prescaled, noise, labels, None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    unscaled = sampler.sample(small_dit, noise, labels, None, torch.Generator().manual_seed(1))
    assert (got - unscaled).abs().max() > 1e-3


def test_guidance_on_first_channels_only(small_dit):
    sampler = make_sampler("ddim", 2, Guidance(4.0, SMALL.num_classes, channels=3))
    x, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    eps, var = sampler.model_output(small_dit, x, 0, labels)
    t = torch.full((2,), sampler.model_timestep(0))
    cond = small_dit(x, t, labels)
    uncond = small_dit(x, t, torch.full_like(labels, SMALL.num_classes))
    torch.testing.assert_close(eps[:, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps[:, 3:], cond[:, 3:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, cond[:, 4:], rtol=1e-5, atol=1e-5)


def _dit_respacing(T: int, K: int) -> list[int]:
    """DiT's `space_timesteps(T, [K])` for one section, written out from its definition: a float
    cursor advanced by repeated addition of (T-1)/(K-1), rounded half to even at each step."""
    stride = 1.0 if K <= 1 else (T - 1) / (K - 1)
    cursor, taken = 0.0, []
    for _ in range(K):
        taken.append(int(round(cursor)))
        cursor = cursor + stride
    return sorted(set(taken))


def test_respacing_matches_dit_for_every_step_count():
    mismatched = [K for K in range(1, 1001) if space_timesteps(1000, K) != _dit_respacing(1000, K)]
    assert mismatched == []
    assert space_timesteps(1000, 35) != sorted({round(i * 999 / 34) for i in range(35)})  # a .5 tie case


def test_coefficient_tables_are_built_once_per_device():
    d = GaussianDiffusion.respaced(10)
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([0, 9])
    first = d._at("log_betas", t, x)
    tables = d._tables[x.device]
    d._at("posterior_mean_coef1", t, x)
    assert d._tables[x.device] is tables and len(d._tables) == 1
    assert torch.equal(first.flatten(), torch.from_numpy(np.log(d.betas)[[0, 9]]).float())
