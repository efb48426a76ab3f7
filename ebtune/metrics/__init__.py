"""Sample-quality metrics (`Metric`): FID through torch-fidelity, the digits metrics and the classifier's accuracy."""
from __future__ import annotations

from ebtune.metrics.base import Metric, bootstrap_draws, check_images, draws_std
from ebtune.metrics.digits_native import DigitsNativeFD
from ebtune.metrics.fid import DigitsFD, InceptionFID, classifier_accuracy, register_digits_extractor
from ebtune.metrics.frechet import FrechetMetric, frechet_between
from ebtune.metrics.inception import (
    inception_weights_path,
    install_inception_weights,
    require_inception_weights,
)
from ebtune.metrics.registry import METRICS, make_metric, metric_class, quality_name

__all__ = [
    "METRICS",
    "DigitsFD",
    "DigitsNativeFD",
    "FrechetMetric",
    "InceptionFID",
    "Metric",
    "bootstrap_draws",
    "check_images",
    "classifier_accuracy",
    "draws_std",
    "frechet_between",
    "inception_weights_path",
    "install_inception_weights",
    "make_metric",
    "metric_class",
    "quality_name",
    "register_digits_extractor",
    "require_inception_weights",
]
