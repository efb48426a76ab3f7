"""Fréchet distances on torch-fidelity feature extractors: FID (Inception-v3) and the digits classifier's FD.

`InceptionFID` is the Fréchet Inception Distance (metric name "fid"); `DigitsFD` is the same
distance in the shipped digits classifier's 64-d penultimate space (metric name "digits-fd", a
Fréchet distance but not an Inception one). Both extract features with torch-fidelity and score
them with `ebtune.metrics.frechet`. Also here: the digits classifier's accuracy on generated digits.

Images are uint8 N×H×W×C (C = 1 or 3); grey is repeated to 3 channels for torch-fidelity.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ebtune.default import classifier, data
from ebtune.metrics.base import check_images
from ebtune.metrics.frechet import FrechetMetric
from ebtune.metrics.inception import require_inception_weights

DIGITS_EXTRACTOR = "ebtune-digits"
INCEPTION_EXTRACTOR = "inception-v3-compat"


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


class _TorchFidelityFD(FrechetMetric):
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


class DigitsFD(_TorchFidelityFD):
    """The Fréchet distance in the digits classifier's 64-d penultimate space (`model.fid=digits`).

    The reference is the real train split's statistics shipped with the classifier unless
    `reference_npz` names another file.
    """

    name = "digits-fd"
    extractor = DIGITS_EXTRACTOR
    layer = "penultimate"

    def __init__(self, reference_npz: str | Path | None = None, batch_size: int = 256):
        register_digits_extractor()
        super().__init__(reference_npz or classifier.WEIGHTS_DIR / classifier.TRAIN_STATS_FILE, batch_size)


class InceptionFID(_TorchFidelityFD):
    """The Fréchet Inception Distance (`model.fid=inception`, metric "fid"): torch-fidelity's
    `inception-v3-compat` 2048-d pool3 features.

    torch-fidelity resizes every image to 299×299 with TF1-compatible bilinear interpolation and
    scales it to (x − 128) / 128, as the TF-2015 FID code does. The weights must be installed
    (`ebtune fid-weights`); they are read from the torch hub cache, never downloaded.
    """

    name = "fid"
    extractor = INCEPTION_EXTRACTOR
    layer = "2048"

    def __init__(self, reference_npz: str | Path | None = None, batch_size: int = 64):
        super().__init__(reference_npz, batch_size)

    def extractor_kwargs(self) -> dict:
        # An explicit path: torch-fidelity would otherwise try to download the weights.
        return {"feature_extractor_weights_path": str(require_inception_weights())}


@torch.no_grad()
def classifier_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 16×16 digit images that the shipped classifier assigns to their label.

    Catches mode dropping that a Fréchet distance can miss: a model drawing one good digit for every label
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
