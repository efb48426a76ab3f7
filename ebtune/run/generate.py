"""Generate a labelled image set under a schedule: fixed noise per seed, batched, timed."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ebtune.cache.engine import CachedModel
from ebtune.core.dit import DiTConfig
from ebtune.core.schedule import Schedule
from ebtune.run.loading import LoadedModel
from ebtune.sampling.noise import CoupledNoise, GeneratorNoise, StepNoise
from ebtune.sampling.samplers import Sampler


def class_balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., num_classes−1, 0, 1, ...: the same for every trial of a search."""
    return torch.arange(n, dtype=torch.long) % num_classes


def initial_noise(n: int, config: DiTConfig, seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n, C, H, W) x_T drawn from `seed` on the CPU, so a seed means the same noise on any device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.in_channels, config.input_size, config.input_size, generator=gen).to(device)


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # uint8 N×H×W×C
    labels: np.ndarray  # int64 N
    latents: torch.Tensor  # final samples before decoding, (N, C, H, W)
    seconds: float  # wall time of sampling and decoding


@torch.no_grad()
def generate(
    loaded: LoadedModel,
    sampler: Sampler,
    schedule: Schedule | CachedModel | None,
    labels: torch.Tensor,
    seed: int = 0,
    batch_size: int = 256,
    reference_steps: int | None = None,
) -> Generated:
    """Sample len(labels) images (`schedule`: a Schedule, or a cache attached once by the caller for
    many calls). Batch b uses step noise seeded `seed + 1 + b`, so two runs with the
    same seed, labels and batch size see identical noise whatever the schedule. With
    `reference_steps`, a stochastic sampler's step noise is coupled to the `reference_steps`-step run of
    the same batch (`CoupledNoise`), so runs at different step counts share their randomness too."""
    device = next(loaded.model.parameters()).device
    noise = initial_noise(len(labels), loaded.config, seed, device)
    start = time.perf_counter()
    latents, images = [], []
    for b, lo in enumerate(range(0, len(labels), batch_size)):
        gen = torch.Generator(device=device).manual_seed(seed + 1 + b)
        step_noise: StepNoise = GeneratorNoise(gen) if reference_steps is None else CoupledNoise(
            gen, reference_steps, sampler.steps)
        x = sampler.sample(loaded.model, noise[lo:lo + batch_size], labels[lo:lo + batch_size].to(device), schedule,
                           step_noise=step_noise)
        latents.append(x)
        images.append(loaded.decode(x))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return Generated(np.concatenate(images), labels.cpu().numpy().astype(np.int64), torch.cat(latents), seconds)
