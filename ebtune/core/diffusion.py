"""Gaussian diffusion as DiT trains and samples it (Ho et al. 2020; Nichol & Dhariwal 2021).

Linear betas over 1,000 steps, ε prediction with a learned-range variance, and respacing to K
sampling steps: K evenly spaced original timesteps whose betas are recomputed so the respaced
chain has the same ᾱ; the model always sees the original timestep. All constants are float64,
computed once; the per-timestep coefficients the tensor math indexes are also kept as float32
tensors, built once per device, so a sampling step copies nothing from the host.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The K original timesteps DiT keeps for K sampling steps, ascending.

    As DiT's `respace.space_timesteps(T, [K])`: a float index starts at 0 and grows by the stride
    (T−1)/(K−1) one addition at a time, and each step keeps round(index). The accumulated sum, not
    i·stride, decides the .5 ties (e.g. K = 21, 35), so it is reproduced exactly.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1
    kept, index = set(), 0.0
    for _ in range(steps):
        kept.add(round(index))
        index += stride
    return sorted(kept)


class GaussianDiffusion:
    """Constants of one (possibly respaced) chain; index k of every array is chain step k.

    Args:
        betas: the chain's betas, float64.
        timestep_map: original timestep of each chain step (what the model is conditioned on).
    """

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None):
        self.betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The first posterior variance is 0; DiT clips the log by repeating the second one.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if self.num_timesteps > 1
            else self.betas
        )
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(self.betas)
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Coefficient `name` at chain steps t (N,), as float32 broadcastable against `like` (N, ...).

        The float64 arrays are cast to float32 once per device (the values the per-call cast gave),
        so indexing them is one device gather.
        """
        tables = self._tables.get(like.device)
        if tables is None:
            tables = self._tables[like.device] = {
                key: torch.from_numpy(getattr(self, key)).float().to(like.device) for key in _INDEXED
            }
        return tables[name][t].view(-1, *([1] * (like.dim() - 1)))

    @classmethod
    def respaced(cls, steps: int, base_betas: np.ndarray | None = None) -> "GaussianDiffusion":
        """The K-step chain DiT's `create_diffusion(str(K))` builds."""
        base_betas = linear_betas() if base_betas is None else base_betas
        base_acp = np.cumprod(1.0 - base_betas)
        keep = space_timesteps(len(base_betas), steps)
        betas, last = [], 1.0
        for t in keep:
            betas.append(1.0 - base_acp[t] / last)
            last = base_acp[t]
        return cls(np.array(betas), keep)

    def normalised_time(self) -> np.ndarray:
        """Original timestep of each chain step over T−1, so 1 is pure noise and 0 the last step."""
        return np.asarray(self.timestep_map, dtype=np.float64) / (NUM_TRAIN_TIMESTEPS - 1)

    # -- training (DiT's ε MSE + variational bound for the learned variance) -------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_alphas_cumprod", t, x_start) * x_start + self._at("sqrt_one_minus_alphas_cumprod", t, x_start) * noise

    def training_losses(self, model: torch.nn.Module, x_start: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss: MSE on ε plus the KL term that trains the variance (gradient-stopped mean).

        Args:
            x_start: (N, C, H, W) clean data in [-1, 1]; t: (N,) chain steps; y: (N,) labels.
        Returns:
            (N,) loss.
        """
        noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_t = torch.as_tensor(self.timestep_map, device=t.device)[t]
        out = model(x_t, model_t, y)
        C = x_start.shape[1]
        eps, var_values = out[:, :C], out[:, C:]
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        mean, _, log_var = self.p_mean_variance(x_t, t, eps.detach(), var_values)
        vb = self._vb_bits(x_start, x_t, t, mean, log_var)
        return mse + vb

    def p_mean_variance(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, var_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior mean, x̂₀ and log-variance; the variance interpolates log β̃_t..log β_t by (v+1)/2."""
        min_log = self._at("posterior_log_variance_clipped", t, x_t)
        max_log = self._at("log_betas", t, x_t)
        frac = (var_values + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        mean = self._at("posterior_mean_coef1", t, x_t) * x0 + self._at("posterior_mean_coef2", t, x_t) * x_t
        return mean, x0, log_var

    def _vb_bits(self, x_start, x_t, t, mean, log_var) -> torch.Tensor:
        true_mean = self._at("posterior_mean_coef1", t, x_t) * x_start + self._at("posterior_mean_coef2", t, x_t) * x_t
        true_log_var = self._at("posterior_log_variance_clipped", t, x_t)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var) + (true_mean - mean) ** 2 * torch.exp(-log_var))
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


# The coefficients tensor code indexes by chain step (`GaussianDiffusion._at`).
_INDEXED = (
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_log_variance_clipped", "log_betas", "posterior_mean_coef1", "posterior_mean_coef2",
)


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)²)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs
