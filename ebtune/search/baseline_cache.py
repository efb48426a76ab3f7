"""Baseline evaluations reused across searches: a content-addressed store of `Outcome`s.

A baseline's outcome is a function of the model's weights and decoder, the sampler and its step
count, the schedule (masks, predictors, ε factors), the guidance, the seeds, labels, image count and
batch size, the quality metric with its bootstrap and first-fidelity sizes, the device kind and the
ebtune version, and the step count its step noise is coupled to (`Evaluator.coupled_steps`); the
metric by its registry name, reference and the name it reports under (an outcome stored before
metrics had names of their own keeps its quality under "fid": it misses). `outcome_key`
hashes all of them (the weights by their bytes), so a change to any one misses the store and the
baseline is evaluated afresh; searches of the same model, sampler, steps,
seeds and n share their baselines, and a confirmation's baselines are shared by confirmations of
the same settings. An outcome stopped at a rung is stored too, with its rungs: it is reused where
the halving rule stops it again (`baselines.evaluate_baselines`). The latency stored with an outcome is the one measured when it was
stored. `search.baseline_cache` names the folder (null: no store).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ebtune import __version__
from ebtune.core.schedule import Schedule
from ebtune.sampling.samplers import Sampler
from ebtune.search.evaluator import Evaluator, Outcome, Rung


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _model_digest(model: nn.Module) -> str:
    # One hash per loaded model and process: an evaluator keeps its model for the whole search.
    return weights_digest(model)


def outcome_key(evaluator: Evaluator, schedule: Schedule, sampler: Sampler) -> str:
    """The content address of evaluating `schedule` under `sampler` with `evaluator`'s settings."""
    spec = evaluator.spec
    what = {
        "ebtune": __version__, "weights": _model_digest(evaluator.loaded.model), "arch": spec.arch,
        "decoder": [spec.decoder, spec.vae], "quality": [spec.fid, spec.fid_reference, evaluator.metric.name],
        "schedule": repr((schedule.attn, schedule.mlp, schedule.eps_scale, schedule.attn_predictor,
                          schedule.mlp_predictor)),
        "sampler": [sampler.step.name, vars(sampler.step), sampler.steps, repr(sampler.guidance)],
        "images": [evaluator.seed, evaluator.n_samples, evaluator.batch, evaluator.warmup, evaluator.bootstrap,
                   evaluator.n_proxy, hashlib.sha256(evaluator.labels.numpy().tobytes()).hexdigest()],
        "device": evaluator.device.type,
    }
    coupled = evaluator.coupled_steps(sampler)
    if coupled is not None:  # only where it changes the draws, so the keys of every other outcome stay as they were
        what["coupled_to"] = coupled
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class BaselineCache:
    """Outcomes stored as `<folder>/<key>.npz`, each written whole (temporary file, then rename)."""

    folder: Path

    @classmethod
    def at(cls, folder: str | None) -> "BaselineCache | None":
        """The store `search.baseline_cache` names (None for null: no store)."""
        return cls(Path(folder).absolute()) if folder else None

    def find(self, evaluator: Evaluator, schedule: Schedule, sampler: Sampler) -> tuple[str, Outcome | None]:
        """(the evaluation's key, its stored outcome or None)."""
        key = outcome_key(evaluator, schedule, sampler)
        return key, self.load(key)

    def load(self, key: str) -> Outcome | None:
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        with np.load(path) as f:
            if "rungs" not in f.files:  # written before successive halving: evaluate again
                return None
            rungs = tuple(Rung.from_attr(r) for r in json.loads(str(f["rungs"])))
            pruned = bool(f["pruned"]) if "pruned" in f.files else False
            return Outcome(json.loads(str(f["metrics"])), f["latents"], f["grid"], rungs,
                           tuple(float(d) for d in f["quality_draws"]), pruned)

    def store(self, key: str, outcome: Outcome) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f"{key}.{os.getpid()}.tmp.npz"
        np.savez(staging, metrics=json.dumps(outcome.metrics), latents=outcome.latents, grid=outcome.grid,
                 rungs=json.dumps([r.to_attr() for r in outcome.rungs]),
                 quality_draws=np.asarray(outcome.quality_draws, dtype=np.float64), pruned=outcome.pruned)
        os.replace(staging, self.folder / f"{key}.npz")
