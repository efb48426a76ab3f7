"""Real data for the training-distribution ‖ε‖: the digits latents dit-tiny was trained on.

Only models whose latents are the digits' (decoder "digits") have real data here; for any other
model `real_latents` returns None and the gap columns stay NaN.
"""
from __future__ import annotations

import torch

from ebtune.run.loading import LoadedModel


def real_latents(loaded: LoadedModel, labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x₀, labels): one distinct training image per requested label (drawn from `seed`), encoded
    as in training (`ebtune.default.train`), or None when the model has no real data here.

    Raises:
        ValueError: more images of one class requested than the training split holds.
    """
    if loaded.spec.decoder != "digits":
        return None
    from ebtune.default import data

    x_train, y_train, _, _ = data.load_digits_split()
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        pool = torch.nonzero(y_train == c).flatten()
        want = int((labels == c).sum())
        if want > len(pool):
            raise ValueError(f"{want} images of class {c} requested but the digits hold {len(pool)}; lower n")
        picks.append(pool[torch.randperm(len(pool), generator=gen)[:want]])
    order = torch.cat(picks)
    device = next(loaded.model.parameters()).device
    return data.encode(x_train[order]).to(device), y_train[order].to(device)
