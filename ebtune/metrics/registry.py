"""Quality metrics by name (`model.fid=`): a new metric is one module plus one registry line here.

Each module builds on `ebtune.metrics.fid` (the `FIDEvaluator` interface and torch-fidelity's
statistics); this registry imports them all, so no metric module imports another's registry.
"""
from __future__ import annotations

from typing import Any

from ebtune.metrics.digits_native import DigitsNativeFD
from ebtune.metrics.fid import DigitsFID, FIDEvaluator, InceptionFID
from ebtune.registry import Registry

FID_EVALUATORS: Registry[FIDEvaluator] = Registry("fid evaluator")
FID_EVALUATORS.register("digits", DigitsFID)
FID_EVALUATORS.register("inception", InceptionFID)
FID_EVALUATORS.register("digits-native", DigitsNativeFD)


def make_fid(name: str, **kw: Any) -> FIDEvaluator:
    """The evaluator registered as `name`, built with keyword arguments `kw`."""
    return FID_EVALUATORS.make(name, **kw)
