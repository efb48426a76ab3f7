"""Per-branch intervals with a forecast between computations: the family a forecasting search tunes.

The masks are `intervals`' (one stage: every step uses the early-stage intervals), so attention and
MLP each compute every `attn` / `mlp` steps after `warmup` full steps and during `cooldown` full
steps at the end; a skipped step's output comes from the branch's predictor (`taylor`, `lagrange`, or
`reuse`, in `ebtune.core.predictors.PREDICTORS`) of the given order over the branch's computed outputs.
"""
from __future__ import annotations

from ebtune.core.schedule import PredictorSpec, Schedule
from ebtune.schedules.context import ScheduleContext
from ebtune.schedules.intervals import intervals


def forecast(
    ctx: ScheduleContext,
    attn: int = 2,
    mlp: int = 2,
    warmup: int = 2,
    cooldown: int = 0,
    attn_predictor: str = "taylor",
    mlp_predictor: str = "taylor",
    attn_order: int = 1,
    mlp_order: int = 1,
) -> Schedule:
    """Args:
        attn, mlp: compute intervals (1 = every step).
        warmup: full steps at the start (>= 1); order O needs O + 1 computations for its full order,
            so warmup >= O + 1 forecasts at full order from the first skipped step on.
        cooldown: full steps at the end.
        attn_predictor, mlp_predictor: predictor names; attn_order, mlp_order: their orders (0 = reuse).

    Raises:
        ValueError: warmup < 1, intervals < 1, warmup + cooldown > steps, or an order the predictor
            does not take. ConfigError: an unknown predictor name.
    """
    if warmup < 1:
        raise ValueError(f"warmup must be at least 1 (step 0 computes), got {warmup}")
    masks = intervals(ctx, attn=attn, mlp=mlp, warmup=warmup, cooldown=cooldown)
    params = dict(attn=attn, mlp=mlp, warmup=warmup, cooldown=cooldown, attn_predictor=attn_predictor,
                  mlp_predictor=mlp_predictor, attn_order=attn_order, mlp_order=mlp_order)
    predictors = PredictorSpec(attn_predictor, attn_order), PredictorSpec(mlp_predictor, mlp_order)
    return masks.with_predictors(*predictors).renamed("forecast", params)
