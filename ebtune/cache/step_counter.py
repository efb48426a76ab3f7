"""Drive a cache from inside a pipeline that calls the transformer itself (e.g. diffusers pipelines).

ebtune's own sampler passes the step index to the cache (`set_step(i)` before step i). A third-party
denoising loop does not, so `step_counter` counts the transformer's calls instead: a forward
pre-hook on the top module sets the step to the number of calls so far. One call per step is
assumed, as in diffusers' DiT and PixArt pipelines, which run the conditional and unconditional
halves as one doubled batch. After `schedule.steps` calls the run is complete and the next call
starts a new run (cached tensors and forecast histories are dropped first); `reset()` abandons a
partial run::

    with ebtune.cached(pipe.transformer, schedule) as cache, step_counter(cache):
        images = pipe(class_labels=[207], num_inference_steps=schedule.steps).images
"""
from __future__ import annotations

from torch import nn

from ebtune.cache.engine import CachedModel

_MARK = "_ebtune_step_counter"


class StepCounter:
    """Handle of a counting pre-hook on `cache.model` (a context manager; `close()` removes it exactly).

    Raises:
        RuntimeError: a step counter is already attached to this model.
    """

    def __init__(self, cache: CachedModel):
        model: nn.Module = cache.model
        if getattr(model, _MARK, None) is not None:
            raise RuntimeError("a step counter is already attached to this model; close it before attaching another")
        self.cache = cache
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._before_forward)
        setattr(model, _MARK, self)

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        if self.calls == self.cache.schedule.steps:
            self.reset()
        self.cache.set_step(self.calls)
        self.calls += 1

    def reset(self) -> None:
        """Start counting from step 0 and drop cached tensors (a partial run must not leak into the next)."""
        self.calls = 0
        self.cache.reset()

    def close(self) -> None:
        self._handle.remove()
        model = self.cache.model
        if vars(model).get(_MARK) is self:
            delattr(model, _MARK)

    def __enter__(self) -> "StepCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_counter(cache: CachedModel) -> StepCounter:
    """Count `cache.model`'s forward calls as sampling steps; see the module docstring."""
    return StepCounter(cache)
