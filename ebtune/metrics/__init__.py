"""Sample-quality metrics: FID through torch-fidelity and the digits classifier's accuracy."""
from __future__ import annotations

from ebtune.metrics.fid import (
    DigitsFID,
    FIDEvaluator,
    InceptionFID,
    classifier_accuracy,
    fid_between,
    register_digits_extractor,
)
from ebtune.metrics.registry import FID_EVALUATORS, make_fid
from ebtune.metrics.inception import (
    inception_weights_path,
    install_inception_weights,
    require_inception_weights,
)

__all__ = [
    "FID_EVALUATORS",
    "DigitsFID",
    "FIDEvaluator",
    "InceptionFID",
    "classifier_accuracy",
    "fid_between",
    "inception_weights_path",
    "install_inception_weights",
    "make_fid",
    "register_digits_extractor",
    "require_inception_weights",
]
