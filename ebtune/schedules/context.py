"""What a schedule family may use besides its own parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ScheduleContext:
    """Steps, depth and the normalised time of each sampling step (1 at the noisiest, first step).

    `times` decide the stage split: the paper's boundary t_s = 0.4 separates the early, high-noise
    stage (t ≥ t_s) from the late one.
    """

    steps: int
    depth: int
    times: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        if len(self.times) != self.steps:
            raise ValueError(f"{len(self.times)} step times for {self.steps} steps")

    @classmethod
    def linear(cls, steps: int, depth: int) -> "ScheduleContext":
        """Evenly spaced times, for use without a sampler (DiT's respacing is this up to rounding)."""
        times = tuple(1.0 - i / (steps - 1) for i in range(steps)) if steps > 1 else (1.0,)
        return cls(steps, depth, times)


def interval_pattern(
    intervals: Sequence[int], warmup: int = 0, cooldown: int = 0, max_reuse: int | None = None
) -> list[bool]:
    """Compute flags for one branch given the interval in force at each step.

    A branch is computed at step 0, during the first `warmup` and last `cooldown` steps, once
    `interval` steps have passed since it was last computed, and whenever `max_reuse` consecutive
    reuses have happened. FORA(N) is intervals = [N]*K: steps 0, N, 2N, ... compute.
    """
    steps = len(intervals)
    if any(n < 1 for n in intervals):
        raise ValueError(f"cache intervals must be at least 1, got {min(intervals)}")
    if warmup < 0 or cooldown < 0:
        raise ValueError("warmup and cooldown must be >= 0")
    if max_reuse is not None and max_reuse < 0:
        raise ValueError(f"max_reuse must be >= 0, got {max_reuse}")
    flags, since = [], 0
    for i, interval in enumerate(intervals):
        forced = i == 0 or i < warmup or i >= steps - cooldown
        reuse_cap = max_reuse is not None and since >= max_reuse
        compute = forced or reuse_cap or since + 1 >= interval
        flags.append(compute)
        since = 0 if compute else since + 1
    return flags
