"""Diffusion Transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023).

Attribute names follow the released checkpoints (`x_embedder`, `t_embedder`, `y_embedder`,
`pos_embed`, `blocks.N.adaLN_modulation.1`, `final_layer`), so an official state dict loads as is.
The one departure from the reference layout is the cache seam: `DiTBlock` exposes its two ungated
residual branches (`attn_branch`, `mlp_branch`) and `forward` only applies the gates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D) scaled and shifted per sample by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches of a (N, C, H, W) input to (N, H·W/p², D) tokens."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (original, un-respaced) timestep, then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """(N,) timesteps to (N, dim) features [cos(t·f), sin(t·f)], f = max_period^(-k/half)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The features are float32 by construction; a model cast to bf16 takes them in its own dtype.
        features = self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(features)  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels to vectors; row `num_classes` is the null label used by classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace a `dropout_prob` share of labels by the null label (training only)."""
        drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            labels = self.token_drop(labels)
        return self.embedding_table(labels)  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout: `qkv`, `proj`)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, D/H) each
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D/H)
        return self.proj(x.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class Mlp(nn.Module):
    """Two linear layers with tanh-approximated GELU (timm layout: `fc1`, `fc2`)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block.

    The two branches are separate methods so a cache can replace them (the "cache seam"); their
    outputs are ungated, and `forward` gates them with the current conditioning.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def attn_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.attn(modulate(self.norm1(x), shift, scale))  # (N, T, D), ungated

    def mlp_branch(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.mlp(modulate(self.norm2(x), shift, scale))  # (N, T, D), ungated

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn_branch(x, shift_msa, scale_msa)  # (N, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp_branch(x, shift_mlp, scale_mlp)  # (N, T, D)
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from tokens to p×p×C_out patch values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p²·C_out)


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one DiT; `input_size` is the latent (or pixel) side length."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}; pick sizes that divide")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if min(self.depth, self.num_classes, self.in_channels) < 1:
            raise ValueError("depth, num_classes and in_channels must be at least 1")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2


class DiT(nn.Module):
    """Class-conditional DiT: (N, C, H, W) noisy input, (N,) timesteps, (N,) labels to (N, C_out, H, W)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        self.num_heads = config.num_heads
        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.y_embedder = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        # Fixed sin-cos table; a buffer-like parameter so official checkpoints (which store it) load.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, config.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden_size, config.num_heads, mlp_ratio=config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears, zeroed adaLN and output layers (the "-Zero" of adaLN-Zero)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid = int(self.config.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(self.config.hidden_size, grid)).float()[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p²·C) tokens back to (N, C, H, W)."""
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = H·W/p²
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y, self.training)  # (N, D)
        c = t + y  # (N, D)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p²·C_out)
        return self.unpatchify(x)  # (N, C_out, H, W)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid_size², embed_dim) table: half the channels encode the row, half the column (MAE layout)."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = _1d_sincos(embed_dim // 2, grid[0])
    emb_w = _1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _1d_sincos(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


# Official presets: name -> (depth, hidden_size, num_heads); patch sizes 2, 4, 8.
PRESET_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}

DIT_CONFIGS: dict[str, Callable[..., DiTConfig]] = {
    f"DiT-{size}/{patch}": (
        lambda depth=depth, hidden=hidden, heads=heads, patch=patch, **kw: DiTConfig(
            depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, **kw
        )
    )
    for size, (depth, hidden, heads) in PRESET_SIZES.items()
    for patch in (2, 4, 8)
}


def dit_config(name: str, image_size: int = 256, **overrides) -> DiTConfig:
    """An official preset at `image_size` pixels (the latent is image_size / 8)."""
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT preset {name!r}; choose one of: {', '.join(DIT_CONFIGS)}")
    if image_size % 8:
        raise ValueError(f"image_size {image_size} is not a multiple of 8 (the VAE downsamples by 8)")
    return DIT_CONFIGS[name](input_size=image_size // 8, **overrides)
