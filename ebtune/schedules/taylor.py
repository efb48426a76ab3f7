"""TaylorSeer (Liu et al., arXiv 2503.06923): every branch of every block computed during a short
warm-up and then every `interval`-th step, with an order-`order` Taylor forecast in between."""
from __future__ import annotations

from ebtune.core.schedule import Schedule
from ebtune.schedules.context import ScheduleContext
from ebtune.schedules.forecast import forecast


def taylor(ctx: ScheduleContext, interval: int = 4, order: int = 2, warmup: int = 3) -> Schedule:
    """Args:
        interval: N, the step distance between computations after the warm-up (1 = no cache).
        order: O, the Taylor order of the forecast (0 = reuse, i.e. FORA(N) after the warm-up).
        warmup: full steps at the start (>= 1). The default 3 gives the default order 2 its three
            computations before the first forecast, as TaylorSeer's full first steps do.

    Raises:
        ValueError: interval, order or warmup out of range.
    """
    schedule = forecast(ctx, attn=interval, mlp=interval, warmup=warmup, attn_predictor="taylor",
                        mlp_predictor="taylor", attn_order=order, mlp_order=order)
    return schedule.renamed("taylor", dict(interval=interval, order=order, warmup=warmup))
