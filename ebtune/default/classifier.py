"""The digits' Fréchet-distance feature network: a small CNN classifier for 16×16 grey digits.

Its penultimate layer (64-d, after BatchNorm and ReLU, like Inception's pool3) is the feature space of the
`digits` Fréchet distance (`ebtune.metrics.fid.DigitsFD`, metric "digits-fd"); its logits give the share of generated samples
classified as their conditioning label. `build_shipped_files` reproduces both shipped files:
the classifier weights and the mean/covariance of the real train split's features.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ebtune.core.uint8 import quantize
from ebtune.default import data

WEIGHTS_DIR = Path(__file__).parent / "weights"
CLASSIFIER_FILE = "classifier.safetensors"
TRAIN_STATS_FILE = "digits_train_stats.npz"
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """(N, 1, 16, 16) images in [-1, 1] to (N, 10) logits through a (N, 64) feature vector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        # Without normalisation about half the ReLU units die in training, leaving a rank-deficient
        # feature covariance; BatchNorm keeps every unit active on part of the data.
        self.bn = nn.BatchNorm1d(FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, data.NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: (N, 1, 16, 16) to (N, 64), non-negative."""
        h = self.conv(x)  # (N, 64, 4, 4)
        return F.relu(self.bn(self.fc(h.flatten(1))))  # (N, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (N, 10)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) images to the classifier input (N, 1, H, W) in [-1, 1]; colour is averaged to grey."""
    return x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each (1, H, W) image by up to ±max_shift pixels, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)  # (N, 1, H, W + 2m)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)  # (N, 1, H, W)


def train_classifier(
    seed: int = 0,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 2e-3,
    log: Callable[[str], None] | None = None,
) -> DigitClassifier:
    """Train on the digits' train split with ±1 px shift augmentation (Adam, cosine-decayed lr).

    The global torch RNG is left untouched; the same seed gives the same weights on the same
    machine. Returns the model in eval mode.
    """
    x_train, y_train, _, _ = data.load_digits_split()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(x_train) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        # Dropout draws from the global RNG; fork it so the run is reproducible and side-effect free.
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + epoch)
            order = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(model(random_shift(x_train[idx], gen)), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  {time.time() - start:.1f}s")
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of (N, 1, 16, 16) images whose arg-max logit equals the label y (N,)."""
    return (model.eval()(x).argmax(dim=1) == y).float().mean().item()


def load_classifier(path: str | Path | None = None) -> DigitClassifier:
    """The shipped classifier (or the one at `path`) in eval mode, gradients off."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_DIR / CLASSIFIER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier weights not found at {path}; rebuild them with ebtune.default.classifier.build_shipped_files()")
    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def feature_statistics(model: DigitClassifier, images: torch.Tensor) -> dict[str, np.ndarray]:
    """FID statistics of (N, 1, 16, 16) images in [-1, 1]: mu (64,) and sigma (64, 64), float64.

    Images pass through uint8 first, exactly as the torch-fidelity extractor sees them, and the
    moments come from torch-fidelity's own `fid_features_to_statistics` (mean, unbiased covariance).
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = model.eval().features(from_uint8(quantize(images)))
    stats = fid_features_to_statistics(feats.double())
    return {"mu": stats["mu"].astype(np.float64), "sigma": stats["sigma"].astype(np.float64)}


def build_shipped_files(out_dir: str | Path = WEIGHTS_DIR, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train the classifier, then write `classifier.safetensors` and `digits_train_stats.npz` to out_dir.

    Returns the two paths. Logs the held-out accuracy (the quality bar is ≥ 97 %).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = train_classifier(seed=seed, log=log)
    x_train, _, x_test, y_test = data.load_digits_split()
    log(f"held-out accuracy {accuracy(model, from_uint8(quantize(x_test)), y_test):.4f}")
    paths = {"classifier": out_dir / CLASSIFIER_FILE, "train_stats": out_dir / TRAIN_STATS_FILE}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths["classifier"]))
    np.savez(paths["train_stats"], **feature_statistics(model, x_train))
    # safetensors writes 0600; package data must stay readable after a system-wide install.
    paths["classifier"].chmod(0o644)
    return paths
