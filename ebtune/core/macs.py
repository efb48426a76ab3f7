"""Exact multiply-accumulate counts of DiT forwards and of whole sampling runs under a schedule.

Counted: every matmul and convolution (patch embedding, timestep MLP, per-block adaLN, qkv,
attention scores and values, projections, MLP, final layer). Not counted: norms, activations,
adds, the label lookup (not multiply-accumulates). The DiT paper's "Gflops" are these MACs:
DiT-XL/2 at 256 px is 118.6 G per forward.

Forecasts are counted too: a branch whose predictor forecasts (`Schedule.attn_predictor`,
`mlp_predictor`) spends, per element of its (T, D) output, the multiply-adds its `Predictor.macs`
states for each observe of a computed output (only in slots the schedule skips somewhere, as the
engine keeps nothing else) and each forecast, given how many computations the slot's history holds
then. Taylor of order O with p = min(O + 1, computations so far) points: p − 1 per observe and p − 1
per forecast; Lagrange: 0 per observe and p per forecast from p ≥ 2 points; reuse: none.
"""
from __future__ import annotations

from dataclasses import dataclass

from ebtune.core.dit import DiTConfig
from ebtune.core.schedule import BRANCHES, Schedule


@dataclass(frozen=True)
class ForwardMacs:
    """MACs of one forward for one sample; per-block terms apply to every block."""

    embed: int  # patch embedding + timestep MLP
    adaln: int  # per block, always computed
    attn: int  # per block: qkv, QKᵀ, AV, proj
    mlp: int  # per block: fc1, fc2
    final: int  # final adaLN + linear
    depth: int
    elements: int  # per block and branch: T·D elements of one ungated branch output (per sample)

    @property
    def total(self) -> int:
        return self.embed + self.final + self.depth * (self.adaln + self.attn + self.mlp)


def forward_macs(config: DiTConfig, frequency_embedding_size: int = 256) -> ForwardMacs:
    D, T, p = config.hidden_size, config.num_patches, config.patch_size
    hidden_mlp = int(D * config.mlp_ratio)
    embed = T * config.in_channels * p * p * D + frequency_embedding_size * D + D * D
    attn = T * D * 3 * D + 2 * T * T * D + T * D * D
    mlp = 2 * T * D * hidden_mlp
    final = D * 2 * D + T * D * p * p * config.out_channels
    return ForwardMacs(embed=embed, adaln=D * 6 * D, attn=attn, mlp=mlp, final=final, depth=config.depth,
                       elements=T * D)


def forecast_macs_per_element(schedule: Schedule, branch: str) -> int:
    """Multiply-adds per output element that `branch`'s predictor spends over a whole run, summed
    over blocks (see the module docstring; 0 for reuse)."""
    predictor = schedule.predictor(branch).build()
    mask, total = schedule.mask(branch), 0
    for block in range(schedule.depth):
        column = [row[block] for row in mask]
        if all(column):
            continue  # never skipped: the engine keeps (observes) nothing
        points = 0
        for computed in column:
            if computed:
                points = min(points + 1, predictor.tensors)
            total += predictor.macs(points)[0 if computed else 1]
    return total


def sampling_macs(config: DiTConfig, schedule: Schedule, batch: int = 1, cfg: bool = False) -> int:
    """MACs of a whole sampling run of ebtune's DiT: every step's forward, skipping reused branches, plus forecasts.

    Args:
        batch: images generated; cfg: True when guidance doubles the model batch.
    """
    return run_macs(forward_macs(config), schedule, batch, cfg)


def run_macs(f: ForwardMacs, schedule: Schedule, batch: int = 1, cfg: bool = False) -> int:
    """MACs of a whole sampling run of a model whose forward costs `f`: what every step computes
    (embedding, final layer, per-block adaLN), the branches the schedule computes, and forecasts.

    Args:
        batch: images generated; cfg: True when guidance doubles the model batch.
    """
    if schedule.depth != f.depth:
        raise ValueError(f"schedule has {schedule.depth} blocks but the model has {f.depth}")
    per_step_fixed = f.embed + f.final + f.depth * f.adaln
    computed_attn = sum(map(sum, schedule.attn))
    computed_mlp = sum(map(sum, schedule.mlp))
    forecast = sum(forecast_macs_per_element(schedule, branch) for branch in BRANCHES) * f.elements
    per_image = schedule.steps * per_step_fixed + computed_attn * f.attn + computed_mlp * f.mlp + forecast
    return per_image * batch * (2 if cfg else 1)


def ideal_speedup(config: DiTConfig, schedule: Schedule) -> float:
    """MACs without cache over MACs with `schedule`, same steps (what a perfect runtime would gain)."""
    f = forward_macs(config)
    return schedule.steps * f.total / sampling_macs(config, schedule)
