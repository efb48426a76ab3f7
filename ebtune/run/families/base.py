"""The model-family interface: what a search needs from a network besides its cache adapter.

A family turns a `ModelSpec` into the ε-model the sampling loop calls, `model(x, t, y)` with
x (N, C, H, W), t (N,) long timesteps and y (N,) long class labels (the null label for the
unconditional half of classifier-free guidance), returning (N, C_out, H, W). The same object is what
`CachedModel` attaches to (through the model's adapter in `ebtune.cache.adapters`) and what
`LoadedModel.decode` reads samples of. It also counts its own MACs, since two implementations of one
architecture may spend different work per forward, and says what a schedule file records about it.

A new family is one module here with a `ModelFamily` subclass and one `FAMILIES.register` line in
this package's `__init__`; `model.family=NAME` then selects it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from torch import nn

from ebtune.core.dit import DiTConfig
from ebtune.core.macs import ForwardMacs, run_macs
from ebtune.core.schedule import Schedule

if TYPE_CHECKING:
    from ebtune.run.loading import ModelSpec


class ModelFamily(ABC):
    """Loading, conditioning, MACs and schedule-file metadata of one kind of network."""

    name: str  # the `model.family` value, recorded as `model.family` in every schedule file

    @abstractmethod
    def config(self, spec: ModelSpec) -> DiTConfig:
        """The architecture `spec` names (depth, latent shape, classes, widths), read without loading weights.

        Raises:
            ConfigError: `spec` does not describe a model of this family (one line naming the fix).
        """

    @abstractmethod
    def load(self, spec: ModelSpec, config: DiTConfig, random_weights: bool) -> nn.Module:
        """The ε-model of `spec` on the CPU (see the module docstring for its call), with its weights
        unless `random_weights`; the caller moves it to the device and sets eval mode.

        Raises:
            CheckpointError: missing or non-fitting weights.
        """

    @abstractmethod
    def forward_macs(self, config: DiTConfig) -> ForwardMacs:
        """Exact multiply-accumulates of one forward of this family's implementation, per sample."""

    def check(self, spec: ModelSpec) -> None:
        """Refuse a spec this family cannot load, when the spec is built (default: accept).

        Raises:
            ConfigError: one line naming the bad setting and the fix.
        """

    def null_label(self, config: DiTConfig) -> int:
        """The class label of the unconditional half under guidance: one past the last class, as in DiT."""
        return config.num_classes

    def macs(self, config: DiTConfig, schedule: Schedule, batch: int = 1, cfg: bool = False) -> int:
        """MACs of sampling `batch` images under `schedule` (`cfg`: guidance doubles the model batch)."""
        return run_macs(self.forward_macs(config), schedule, batch, cfg)

    def schedule_model(self, spec: ModelSpec, config: DiTConfig) -> dict[str, Any]:
        """The `model` section of a schedule file tuned on this model (what `ebtune.apply` checks)."""
        return {"family": self.name, "name": spec.name, "depth": config.depth, "input_size": config.input_size,
                "patch_size": config.patch_size}
