"""Reproduce the embedded `dit-tiny` weights: DiT training on the digits' train split.

The recipe is DiT's (ε MSE + variational bound for the learned variance, 10 % label dropout for
classifier-free guidance, EMA weights) with a learning rate suited to a 0.7M-parameter model.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ebtune.core.diffusion import GaussianDiffusion, linear_betas
from ebtune.core.dit import DiT, DiTConfig
from ebtune.default import data

TINY_CONFIG = DiTConfig(
    input_size=8, patch_size=2, in_channels=4, hidden_size=96, depth=6, num_heads=4,
    num_classes=data.NUM_CLASSES, class_dropout_prob=0.1,
)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def train_dit(
    cfg: TrainConfig,
    model_config: DiTConfig = TINY_CONFIG,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[int, DiT], None] | None = None,
    every: int = 1000,
) -> DiT:
    """Train a DiT on the digits and return its EMA copy (eval mode).

    Args:
        checkpoint: called as checkpoint(step, ema_model) every `every` steps and at the end.
    """
    torch.manual_seed(cfg.seed)
    x_train, y_train, _, _ = data.load_digits_split()
    latents = data.encode(x_train)
    model = DiT(model_config)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    diffusion = GaussianDiffusion(linear_betas())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    start, running = time.time(), 0.0
    for step in range(cfg.steps):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        t = torch.randint(0, diffusion.num_timesteps, (cfg.batch_size,), generator=gen)
        loss = diffusion.training_losses(model, latents[idx], t, y_train[idx]).mean()
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        running += loss.item()
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            log(f"step {step + 1}/{cfg.steps}  loss {running / ((step % every) + 1):.4f}  {time.time() - start:.0f}s")
            running = 0.0
            if checkpoint is not None:
                checkpoint(step + 1, ema)
    return ema


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
