"""Import published cache schedules as baselines: SmoothCache's JSON files and FORA intervals.

SmoothCache (Liu et al., "SmoothCache: A Universal Inference Acceleration Technique for Diffusion
Transformers", CVPR-W 2025) ships schedules as ``{"attn": [...], "mlp": [...]}``: one list per
wrapped component, one 0/1 entry per sampling step in loop order (entry 0 = first, noisiest step),
shared by every block. 1 means the component is computed (and its output cached), 0 that the
cached output is reused. Its calibration forces the first and last entries to 1. For DiT the
components are the blocks' `attn` and `mlp`; its diffusers helper names them `attn1` and `ff`
(self-attention and feed-forward of `BasicTransformerBlock`). All four return ungated outputs, so
they map one-to-one onto ebtune's "attn" and "mlp" branches. A component the file does not list is
not wrapped by SmoothCache, i.e. always computed, and is imported that way.

FORA (Selvaraju et al., "FORA: Fast-Forward Caching in Diffusion Transformer Acceleration", 2024)
recomputes both branches of every block every N steps and reuses them in between.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ebtune.core.schedule import BRANCHES, Schedule
from ebtune.schedules import ScheduleContext, fora

_SMOOTHCACHE_KEYS = {"attn": ("attn", "attn1"), "mlp": ("mlp", "ff")}


def _read(source: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        return source, "smoothcache"
    path = Path(source)
    try:
        return json.loads(path.read_text(encoding="utf-8")), f"smoothcache:{path.stem}"
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno}); pass a SmoothCache schedule file") from None


def import_smoothcache(source: str | Path | Mapping[str, Any], depth: int) -> Schedule:
    """A SmoothCache schedule as an ebtune `Schedule` (every block follows the per-step lists).

    Args:
        source: a SmoothCache JSON file, or its parsed content.
        depth: number of blocks of the model the schedule will drive.

    Returns:
        The schedule, named "smoothcache:<file stem>", with ε factors 1.

    Raises:
        ValueError: not JSON or not an object, an unknown component (e.g. cross-attention `attn2`,
            which ebtune does not cache), both aliases of one branch, entries other than 0/1,
            lists of different lengths, no attention or MLP list, or a reuse at step 0.
    """
    data, name = _read(source)
    if not isinstance(data, Mapping):
        raise ValueError("a SmoothCache schedule is a JSON object of per-step lists; check the file")
    known = {key for keys in _SMOOTHCACHE_KEYS.values() for key in keys}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"SmoothCache component(s) {', '.join(map(repr, unknown))} have no ebtune branch; "
            f"keep only {', '.join(sorted(known))}"
        )
    lists: dict[str, list[bool]] = {}
    for branch, aliases in _SMOOTHCACHE_KEYS.items():
        present = [key for key in aliases if key in data]
        if len(present) > 1:
            raise ValueError(f"SmoothCache file lists both {present[0]!r} and {present[1]!r}; keep one per branch")
        if present:
            values = data[present[0]]
            if not isinstance(values, list) or not values or any(v not in (0, 1) or isinstance(v, float) for v in values):
                raise ValueError(f"SmoothCache {present[0]!r} must be a non-empty list of 0/1 (1 = compute); check the file")
            lists[branch] = [v == 1 for v in values]
    if not lists:
        raise ValueError(f"SmoothCache file has none of {', '.join(sorted(known))}; pass a SmoothCache schedule")
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise ValueError(f"SmoothCache lists have different lengths {sorted(lengths)}; give one entry per step in each")
    steps = lengths.pop()
    flags = {branch: lists.get(branch, [True] * steps) for branch in BRANCHES}
    try:
        return Schedule.from_step_masks(flags["attn"], flags["mlp"], depth, name=name)
    except ValueError as e:
        raise ValueError(f"SmoothCache schedule is not usable ({e}); set its first entries to 1") from None


def import_fora(interval: int, steps: int, depth: int) -> Schedule:
    """FORA with cache interval N: both branches computed at steps 0, N, 2N, ... (FORA(1) = no cache).

    Raises:
        ValueError: interval, steps or depth below 1.
    """
    return fora(ScheduleContext.linear(steps, depth), interval)
