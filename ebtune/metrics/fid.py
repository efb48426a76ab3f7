"""Fréchet Inception Distance through torch-fidelity, with the digits classifier or Inception-v3.

FID (Heusel et al., 2017) between Gaussians fitted to features of two image sets:
    FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½).
Features are extracted by torch-fidelity feature extractors and the moments and the distance
come from torch-fidelity's `fid_features_to_statistics` / `fid_statistics_to_metric`; ebtune
only supplies the images, the extractor name and precomputed reference statistics (an `.npz`
with `mu`, `sigma`, like the ADM reference batches).

Images are uint8 N×H×W×C (C = 1 or 3); grey is repeated to 3 channels for torch-fidelity.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.helpers import vassert
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ebtune.default import classifier, data
from ebtune.metrics.inception import require_inception_weights

DIGITS_EXTRACTOR = "ebtune-digits"
INCEPTION_EXTRACTOR = "inception-v3-compat"
Statistics = dict[str, np.ndarray]


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 (N, 3, 16, 16) digits to the classifier's features.

    Provides "penultimate" (N, 64), used by FID/KID/PRC, and "logits" (N, 10), used by the
    Inception Score. `feature_extractor_weights_path` selects another classifier file.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs):
        super().__init__(name, features_list)
        self.model = classifier.load_classifier(feature_extractor_weights_path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vassert(x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, f"expecting uint8 Bx3xHxW images, got {x.dtype} {tuple(x.shape)}")
        size = data.IMAGE_SIZE
        vassert(x.shape[2:] == (size, size), f"the digits extractor takes {size}x{size} images, got {tuple(x.shape[2:])}")
        h = self.model.features(classifier.from_uint8(x))  # (N, 64)
        out = {"penultimate": h, "logits": self.model.head(h)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False


def register_digits_extractor() -> None:
    """Register `DigitsFeatureExtractor` with torch-fidelity as "ebtune-digits" (idempotent).

    Raises:
        ValueError: the name is already taken by a different extractor class.
    """
    registered = FEATURE_EXTRACTORS_REGISTRY.get(DIGITS_EXTRACTOR)
    if registered is None:
        register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)
    elif registered is not DigitsFeatureExtractor:
        raise ValueError(f"torch-fidelity extractor {DIGITS_EXTRACTOR!r} is already registered to {registered.__name__}; unregister it first")


class _UInt8Images(Dataset):
    """uint8 N×H×W×C array as the torch-fidelity input: uint8 (3, H, W) tensors."""

    def __init__(self, images: np.ndarray):
        self.images = check_images(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)  # (C, H, W)
        return img.expand(3, -1, -1).contiguous() if img.shape[0] == 1 else img


def check_images(images: np.ndarray) -> np.ndarray:
    """Return `images` if it is a uint8 N×H×W×C array with C in {1, 3}, else raise ValueError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 N×H×W×C array with C = 1 or 3, got {got}; convert with ebtune.decoders.to_uint8")
    return images


class FIDEvaluator(ABC):
    """FID of uint8 images against fixed reference statistics.

    Subclasses give a `name` and `features`; the statistics (μ, unbiased Σ) and the distance
    are torch-fidelity's. The reference `.npz` (keys `mu`, `sigma`) is read once, on first use.
    """

    def __init__(self, reference_npz: str | Path | None):
        self.reference_npz = None if reference_npz is None else Path(reference_npz)
        self._reference: Statistics | None = None

    @property
    @abstractmethod
    def name(self) -> str:
        """Registry name of the evaluator (`make_fid`)."""

    @abstractmethod
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×C images to (N, D) float features; deterministic."""

    def statistics(self, images: np.ndarray) -> Statistics:
        """mu (D,) and sigma (D, D), float64, of the features of N ≥ 2 images."""
        if len(check_images(images)) < 2:
            raise ValueError(f"FID needs at least 2 images to estimate a covariance, got {len(images)}")
        return _moments(torch.from_numpy(self.features(images)).double())

    def reference_statistics(self) -> Statistics:
        """mu and sigma (float64) loaded from `reference_npz`.

        Raises:
            ValueError: no reference file was given, or it lacks `mu`/`sigma` of matching sizes.
            FileNotFoundError: the file does not exist.
        """
        if self._reference is None:
            if self.reference_npz is None:
                raise ValueError(
                    f"FID evaluator {self.name!r} has no reference statistics; pass reference_npz=<.npz with mu, sigma> or use fid_between"
                )
            if not self.reference_npz.is_file():
                raise FileNotFoundError(f"FID reference statistics {self.reference_npz} not found; pass an existing .npz with mu and sigma")
            with np.load(self.reference_npz) as f:
                if "mu" not in f or "sigma" not in f:
                    raise ValueError(
                        f"{self.reference_npz} lacks 'mu' or 'sigma' (has {sorted(f.files)}); save statistics as np.savez(path, mu=..., sigma=...)"
                    )
                ref = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64)}
            d = ref["mu"].shape[0]
            if ref["mu"].shape != (d,) or ref["sigma"].shape != (d, d):
                raise ValueError(f"{self.reference_npz}: mu {ref['mu'].shape} and sigma {ref['sigma'].shape} do not fit; expected (D,) and (D, D)")
            self._reference = ref
        return self._reference

    def fid(self, images: np.ndarray) -> float:
        """FID of `images` against the reference statistics (≥ 0; lower is closer)."""
        reference = self.reference_statistics()  # first: a missing file fails before feature extraction
        return frechet_distance(self.statistics(images), reference)

    def score(self, images: np.ndarray, bootstrap: int = 0, seed: int = 0) -> tuple[float, float]:
        """(FID, its standard error): the error is the standard deviation of the FID over `bootstrap`
        resamples of the images with replacement (features extracted once); NaN for bootstrap < 2.

        The bootstrap measures how much the number moves with the particular images drawn, which
        is what decides whether two schedules differ; it does not remove FID's small-sample bias.
        """
        value, draws = self.score_draws(images, bootstrap, seed)
        return value, draws_std(draws)

    def score_draws(self, images: np.ndarray, bootstrap: int, seed: int) -> tuple[float, np.ndarray]:
        """(FID, the FIDs of `bootstrap` resamples). The resampled image indices depend only on
        (seed, number of images), so two sets sampled from the same seeds get the same resamples:
        the differences of their draws give a paired error, far tighter than two independent ones."""
        reference = self.reference_statistics()
        feats = torch.from_numpy(self.features(check_images(images))).double()
        if len(feats) < 2:
            raise ValueError(f"FID needs at least 2 images to estimate a covariance, got {len(feats)}")
        return bootstrap_draws(len(feats), bootstrap, seed, lambda idx: frechet_distance(_moments(feats[idx]), reference))


def draws_std(draws: np.ndarray) -> float:
    """The standard error that bootstrap draws give (their sample standard deviation); NaN for < 2."""
    return float(np.std(draws, ddof=1)) if len(draws) > 1 else math.nan


def bootstrap_draws(n: int, bootstrap: int, seed: int, statistic) -> tuple[float, np.ndarray]:
    """(statistic on all n items, the statistic on `bootstrap` resamples with replacement);
    `statistic` takes a LongTensor of item indices."""
    value = statistic(torch.arange(n))
    rng = np.random.default_rng(seed)
    draws = [statistic(torch.from_numpy(rng.integers(0, n, n))) for _ in range(max(bootstrap, 0))]
    return value, np.asarray(draws, dtype=np.float64)


def _moments(features: torch.Tensor) -> Statistics:
    """mu and unbiased sigma (float64) of (N, D) features, by torch-fidelity."""
    stats = fid_features_to_statistics(features)
    return {"mu": stats["mu"].astype(np.float64), "sigma": stats["sigma"].astype(np.float64)}


def frechet_distance(stats_a: Statistics, stats_b: Statistics) -> float:
    """FID between two (mu, sigma) pairs, computed by torch-fidelity."""
    if stats_a["mu"].shape != stats_b["mu"].shape:
        sizes = f"{stats_a['mu'].shape[0]} vs {stats_b['mu'].shape[0]}"
        raise ValueError(f"feature sizes differ ({sizes}); the reference statistics come from another feature network")
    return float(fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID])


def fid_between(images_a: np.ndarray, images_b: np.ndarray, evaluator: FIDEvaluator) -> float:
    """FID between two uint8 image sets in the evaluator's feature space (a set against itself ≈ 0)."""
    return frechet_distance(evaluator.statistics(images_a), evaluator.statistics(images_b))


class _TorchFidelityFID(FIDEvaluator):
    """Features from a registered torch-fidelity extractor, created once and reused."""

    extractor: str
    layer: str

    def __init__(self, reference_npz: str | Path | None, batch_size: int):
        super().__init__(reference_npz)
        self.batch_size = batch_size
        self.cuda = torch.cuda.is_available()
        self._extractor: FeatureExtractorBase | None = None

    def extractor_kwargs(self) -> dict:
        """Keyword arguments for the extractor's constructor (hook; none by default)."""
        return {}

    def _get_extractor(self) -> FeatureExtractorBase:
        if self._extractor is None:
            self._extractor = create_feature_extractor(self.extractor, [self.layer], cuda=self.cuda, verbose=False, **self.extractor_kwargs())
        return self._extractor

    def features(self, images: np.ndarray) -> np.ndarray:
        # save_cpu_ram=True: no DataLoader worker processes (the images are already in memory).
        out = get_featuresdict_from_dataset(
            _UInt8Images(images), self._get_extractor(), self.batch_size, self.cuda, save_cpu_ram=True, verbose=False
        )
        return out[self.layer].numpy()


class DigitsFID(_TorchFidelityFID):
    """FID in the digits classifier's 64-d penultimate space.

    The reference is the real train split's statistics shipped with the classifier unless
    `reference_npz` names another file.
    """

    extractor = DIGITS_EXTRACTOR
    layer = "penultimate"

    def __init__(self, reference_npz: str | Path | None = None, batch_size: int = 256):
        register_digits_extractor()
        super().__init__(reference_npz or classifier.WEIGHTS_DIR / classifier.TRAIN_STATS_FILE, batch_size)

    @property
    def name(self) -> str:
        return "digits"


class InceptionFID(_TorchFidelityFID):
    """Standard FID: torch-fidelity's `inception-v3-compat` 2048-d pool3 features.

    torch-fidelity resizes every image to 299×299 with TF1-compatible bilinear interpolation and
    scales it to (x − 128) / 128, as the TF-2015 FID code does. The weights must be installed
    (`ebtune fid-weights`); they are read from the torch hub cache, never downloaded.
    """

    extractor = INCEPTION_EXTRACTOR
    layer = "2048"

    def __init__(self, reference_npz: str | Path | None = None, batch_size: int = 64):
        super().__init__(reference_npz, batch_size)

    def extractor_kwargs(self) -> dict:
        # An explicit path: torch-fidelity would otherwise try to download the weights.
        return {"feature_extractor_weights_path": str(require_inception_weights())}

    @property
    def name(self) -> str:
        return "inception"


@torch.no_grad()
def classifier_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 16×16 digit images that the shipped classifier assigns to their label.

    Catches mode dropping that FID can miss: a model drawing one good digit for every label
    keeps a moderate FID but scores about 10 %.
    """
    if check_images(images).shape[1:3] != (data.IMAGE_SIZE, data.IMAGE_SIZE):
        raise ValueError(f"the digit classifier takes {data.IMAGE_SIZE}x{data.IMAGE_SIZE} images, got {images.shape[1]}x{images.shape[2]}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
    model = _shipped_classifier()
    x = classifier.from_uint8(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    predicted = torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(1024)])
    return float((predicted.numpy() == labels).mean())



@lru_cache(maxsize=1)
def _shipped_classifier() -> classifier.DigitClassifier:
    # Loaded once per process: classifier_accuracy runs once per search trial.
    return classifier.load_classifier()
