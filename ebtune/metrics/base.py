"""The quality-metric interface: what a search ranks schedules by, and how its error pairs.

A `Metric` declares its `name` (the key of its value in every metrics mapping, `pareto.json`, MLflow,
`search.objectives` and `search.constraints`; `<name>_std` holds its standard error), its `direction`
("minimize" or "maximize"), whether it compares against reference statistics (`needs_reference`), and
how it scores uint8 images with bootstrap draws (`score_draws`). "fid" is the name of the Fréchet
Inception Distance only; every other metric has a name of its own.

Pairing: `score_draws` resamples image indices that depend only on (seed, number of images), so two
image sets sampled from the same seeds get the same resamples, and draw k of two evaluations is
computed on the same images: the spread of the differences of two evaluations' draws is the paired
error of their difference (`ebtune.search.inference.paired_difference`). `bootstrap_draws` gives a new
metric that property for free: score a subset of per-image quantities (features, per-image scores).

A new metric is one module with a `Metric` subclass plus one `METRICS.register` line in
`ebtune.metrics.registry`; `model.fid=<registry name>` selects it.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np
import torch

MINIMIZE, MAXIMIZE = "minimize", "maximize"


class Metric(ABC):
    """A quality metric of uint8 N×H×W×C images (C = 1 or 3).

    Subclasses set the class attributes (read without building the metric, e.g. to resolve
    `search.objectives=auto` before a model loads) and implement `score_draws`.
    """

    name: ClassVar[str]  # key in metric dicts, pareto.json, MLflow, objectives and constraints
    direction: ClassVar[str] = MINIMIZE  # MINIMIZE or MAXIMIZE
    needs_reference: ClassVar[bool] = False  # compares against reference statistics (`model.fid_reference`)

    @abstractmethod
    def score_draws(self, images: np.ndarray, bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
        """(the metric on all `images`, the metric on `bootstrap` resamples of them with replacement).

        The resampled indices must depend only on (seed, number of images), as `bootstrap_draws`'
        do, so that the draws of two evaluations pair up.
        """

    def score(self, images: np.ndarray, bootstrap: int = 0, seed: int = 0) -> tuple[float, float]:
        """(value, its standard error over `bootstrap` resamples; NaN for bootstrap < 2)."""
        value, draws = self.score_draws(images, bootstrap, seed)
        return value, draws_std(draws)


def check_images(images: np.ndarray) -> np.ndarray:
    """Return `images` if it is a uint8 N×H×W×C array with C in {1, 3}, else raise ValueError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 N×H×W×C array with C = 1 or 3, got {got}; convert with ebtune.decoders.to_uint8")
    return images


def draws_std(draws: np.ndarray) -> float:
    """The standard error that bootstrap draws give (their sample standard deviation); NaN for < 2."""
    return float(np.std(draws, ddof=1)) if len(draws) > 1 else math.nan


def bootstrap_draws(n: int, bootstrap: int, seed: int,
                    statistic: Callable[[torch.Tensor], float]) -> tuple[float, np.ndarray]:
    """(statistic on all n items, the statistic on `bootstrap` resamples with replacement);
    `statistic` takes a LongTensor of item indices. The resamples depend only on (n, seed)."""
    value = statistic(torch.arange(n))
    rng = np.random.default_rng(seed)
    draws = [statistic(torch.from_numpy(rng.integers(0, n, n))) for _ in range(max(bootstrap, 0))]
    return value, np.asarray(draws, dtype=np.float64)
