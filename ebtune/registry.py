"""One registry type for every extension point: name → factory, with the standard one-line errors.

Schedule families, ε scales, sampler steps, decoders, FID evaluators, adapters, Optuna samplers and
launchers each keep one `Registry`. Hydra's config choices, help texts and validation read from it,
and `tests/test_registries.py` runs each interface's contract suite over every registered name, so a
new implementation is one new file plus one `register` line and is tested on arrival.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

from ebtune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of plug-in (e.g. "schedule") mapped to the factories that build them.

    Args:
        kind: what the names are, as the user writes it in a config key (`schedule`, `eps_scale`).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> Callable[..., T]:
        """Add `factory` under `name`; registering a name twice is a programming error."""
        if name in self._factories:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        self._factories[name] = factory
        return factory

    def choices(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory of `name`.

        Raises:
            ConfigError: unknown name (the message lists the valid ones).
        """
        try:
            return self._factories[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._factories)}") from None

    def make(self, name: str, *args: Any, **params: Any) -> T:
        """Build `name` with `params`; unknown names and parameters are one-line `ConfigError`s."""
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(*args, **params)
        except TypeError as e:
            raise ConfigError(f"{self.kind}={name}: {e}; check the parameter names") from None
        return factory(*args, **params)

    def defaults(self, name: str, skip: int = 0) -> dict[str, Any]:
        """The keyword defaults of `name`'s factory after its first `skip` parameters (config parity)."""
        params = list(inspect.signature(self.get(name)).parameters.values())[skip:]
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def __getitem__(self, name: str) -> Callable[..., T]:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)
