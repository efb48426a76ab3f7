"""conf/ stays honest: every config group backed by a registry lists exactly its names, and every
YAML default equals the factory's default (a YAML may only leave a parameter out, never contradict it)."""
from __future__ import annotations

import inspect

import pytest
import yaml

from ebtune.cli.config import CONF_DIR, choices, registry
from ebtune.io.decoders import DECODERS
from ebtune.metrics.registry import METRICS
from ebtune.run.loading import ARCHITECTURES

GROUPS = ["schedule", "eps_scale", "sampler", "launcher"]
# Keys a config file may carry that its factory does not take: consumed by ebtune.run.factory.
CONFIG_ONLY = {("schedule", "ebcache-calibrated"): {"n"}}
# Positional arguments a factory takes before its parameters (the schedule's context).
LEADING = {"schedule": 1, "eps_scale": 0, "sampler": 0, "launcher": 2}


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text()) or {}


@pytest.mark.parametrize("group", GROUPS)
def test_config_group_lists_exactly_the_registry(group):
    files = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert files == sorted(registry(group).choices())
    assert choices(group) == files


@pytest.mark.parametrize("group, name", [(g, n) for g in GROUPS for n in registry(g).choices()])
def test_yaml_defaults_equal_the_factory_defaults(group, name):
    doc = _yaml(group, name)
    assert doc.pop("name") == name
    factory = registry(group).get(name)
    params = list(inspect.signature(factory).parameters)[LEADING[group]:]
    extra = set(doc) - set(params) - CONFIG_ONLY.get((group, name), set())
    assert not extra, f"conf/{group}/{name}.yaml sets {extra}, which {name} does not take"
    defaults = registry(group).defaults(name, skip=LEADING[group])
    for key, value in doc.items():
        if key in defaults:
            expected = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
            assert value == expected, f"conf/{group}/{name}.yaml: {key}={value!r}, the factory's default is {expected!r}"


@pytest.mark.parametrize("name", choices("model"))
def test_model_configs_name_registered_parts(name):
    doc = _yaml("model", name)
    assert doc["name"] == name
    assert doc["arch"] in ARCHITECTURES
    assert doc["decoder"] in DECODERS
    assert doc["fid"] in METRICS
