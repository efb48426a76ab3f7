"""Hydra at the edge: compose `conf/` with command-line overrides into a plain dict.

Errors (unknown group option, unknown key, bad value) become `ConfigError` with one line saying what
to do; the CLI turns them into exit code 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

CONF_DIR = Path(__file__).resolve().parent / "conf"


class ConfigError(ValueError):
    """A configuration the user can fix; the message is one line."""


def choices(group: str) -> list[str]:
    """Options of a config group (e.g. the model names), from the files in `conf/<group>/`."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: Sequence[str], config_name: str = "config") -> dict[str, Any]:
    """The resolved config as plain Python values."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for item in overrides:
        key, sep, value = item.partition("=")
        group = key.lstrip("+~")
        if sep and (CONF_DIR / group).is_dir() and value not in choices(group):
            raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(choices(group))}")
        if not sep:
            raise ConfigError(f"cannot parse {item!r}; overrides are key=value (e.g. steps=50)")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{first}; see `ebtune <command> --help` for the keys") from None
