"""Hydra at the edge: compose `conf/` with command-line overrides into a plain dict.

Errors (unknown group option, unknown key, bad value) become `ConfigError` with one line saying what
to do; the CLI turns them into exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ebtune.errors import ConfigError
from ebtune.registry import Registry

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def registry(group: str) -> Registry | None:
    """The registry behind a config group (`conf/<group>/` holds one file per name), or None for
    groups that are plain settings (models: a new model is a new YAML file)."""
    if group == "schedule":
        from ebtune.schedules import SCHEDULES
        return SCHEDULES
    if group == "eps_scale":
        from ebtune.core.eps_scale import EPS_SCALES
        return EPS_SCALES
    if group == "sampler":
        from ebtune.sampling.samplers import SAMPLER_STEPS
        return SAMPLER_STEPS
    if group == "launcher":
        from ebtune.search.launchers import LAUNCHERS
        return LAUNCHERS
    return None


def choices(group: str) -> list[str]:
    """Options of a config group: its registry's names, or the files in `conf/<group>/`."""
    reg = registry(group)
    return sorted(reg.choices() if reg is not None else (p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def with_aliases(overrides: Sequence[str], old: Mapping[str, tuple[str, Any]]) -> list[str]:
    """Append old flag spellings as `key=value` overrides, each with a one-line deprecation note.

    Args:
        old: flag → (key, value given or None), e.g. {"--schedule": ("schedule_file", "tuned.json")}.

    Raises:
        ConfigError: a flag and its key both given.
    """
    out = list(overrides)
    for flag, (key, value) in old.items():
        if value is None:
            continue
        if any(o.partition("=")[0] == key for o in out):
            raise ConfigError(f"{flag} and {key}= are the same setting; give only {key}=")
        print(f"note: {flag} is deprecated and will be removed; write {key}={value}", file=sys.stderr)
        out.append(f"{key}={value}")
    return out


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
