"""Typed `key=value` settings for commands that compose no Hydra config (bench, confirm, export, ...)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ebtune.errors import ConfigError

__all__ = ["settings"]


def settings(command: str, overrides: Sequence[str], allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """`key=value` overrides of a command that needs no composed config, typed by `allowed`.

    Raises:
        ConfigError: a token that is not key=value, an unknown key, or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"cannot parse {item!r}; overrides are key=value")
        if key not in allowed:
            keys = ", ".join(f"{k}=" for k in allowed) or "no overrides"
            raise ConfigError(f"unknown override {key!r}; `ebtune {command}` takes {keys}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a valid {allowed[key].__name__}; e.g. {key}=1") from None
    return out
