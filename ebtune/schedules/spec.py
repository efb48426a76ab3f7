"""`ScheduleSpec`: a schedule family, its parameters and an ε-scale form, as one frozen value.

Every place that turns settings into a `Schedule` (the `schedule=`/`eps_scale=` config, a search
space's point, a baseline) builds a spec and calls `build`, so the family's masks and the form's
ε factors at the step times are combined in one place.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping

from ebtune.core.eps_scale import make_eps_scale
from ebtune.core.schedule import Schedule
from ebtune.schedules import SCHEDULES, CalibrationProbe, ScheduleContext


def _frozen(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in mapping.items())


@dataclass(frozen=True)
class ScheduleSpec:
    """Args:
        family: a name in `SCHEDULES`; params: its keyword arguments.
        eps_scale: the ε-scale form, {"name": rule, **its parameters} (default: none).
    """

    family: str
    params: tuple[tuple[str, Any], ...] = ()
    eps_scale: tuple[tuple[str, Any], ...] = (("name", "none"),)

    @classmethod
    def of(cls, family: str, params: Mapping[str, Any] | None = None,
           eps_scale: Mapping[str, Any] | None = None) -> "ScheduleSpec":
        return cls(family, _frozen(params or {}), _frozen(eps_scale or {"name": "none"}))

    @property
    def eps_form(self) -> dict[str, Any]:
        """The ε-scale form as a schedule file stores it: {"name": ..., **kwargs}."""
        return dict(self.eps_scale)

    @property
    def calibrates(self) -> bool:
        """True for a family that calibrates on the model: it takes a `probe`."""
        return "probe" in inspect.signature(SCHEDULES.get(self.family)).parameters

    def build(self, ctx: ScheduleContext, probe: CalibrationProbe | None = None) -> Schedule:
        """The family's masks in `ctx` with the form's ε factors at `ctx.times`.

        A family that calibrates on the model (it takes `probe`) gets the probe and the factors, so
        it calibrates against the correction it will run with.

        Raises:
            ConfigError: unknown family, form or parameter names. ValueError: invalid values.
        """
        form = self.eps_form
        factors = make_eps_scale(form.pop("name"), **form).factors(ctx.times)
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}
        if self.calibrates:
            return SCHEDULES.make(self.family, ctx, probe=probe, eps_scale=factors, **params)
        return SCHEDULES.make(self.family, ctx, **params).with_eps_scale(factors)


__all__ = ["ScheduleSpec"]
