"""One place per default. A config group backed by a registry has no YAML files: each registered name is
a config choice whose settings are its factory's keyword defaults (a new entry arrives with its own), and
the search sections are typed by the dataclasses of `ebtune.search.config`, their values in `conf/`."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import pytest

import ebtune.schedules
from ebtune.cli.config import CONF_DIR, REGISTRY_GROUPS, SUPPLIED, choices, compose, registry
from ebtune.core.schedule import Schedule
from ebtune.errors import ConfigError
from ebtune.io.decoders import DECODERS
from ebtune.metrics.registry import METRICS
from ebtune.registry import Registry
from ebtune.run.families.dit import ARCHITECTURES
from ebtune.schedules import SCHEDULES, ScheduleContext, fora
from ebtune.search.config import MetricSettings, RaySettings, SearchConfig, SearchSettings, TrackingSettings

TINY = ["model=dit-tiny", "steps=10", "space=intervals", "device=cpu"]


def _factory_defaults(group: str, name: str) -> dict:
    """The keyword defaults of the factory, read here independently of `ebtune.cli.config.option_node`."""
    defaults = registry(group).defaults(name)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k not in SUPPLIED.get(group, ())}


@pytest.mark.parametrize("group", REGISTRY_GROUPS)
def test_config_group_lists_exactly_the_registry_and_restates_nothing(group):
    assert choices(group) == sorted(registry(group).choices())
    assert not list((CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, name", [(g, n) for g in REGISTRY_GROUPS for n in registry(g).choices()])
def test_each_choice_composes_to_its_factory_defaults(group, name):
    node = compose([f"{group}={name}"], config_name="search")[group]
    calibration = {"n": 8} if group == "schedule" and SCHEDULES[name] is ebtune.schedules.ebcache_calibrated else {}
    assert node == {"name": name, **_factory_defaults(group, name), **calibration}


def _every_third(ctx: ScheduleContext, interval: int = 3, keep: Sequence[int] = (1, 2), late: float | None = None) -> Schedule:
    return fora(ctx, interval)


def test_a_new_registry_entry_is_a_choice_with_its_factory_defaults(monkeypatch):
    grown = Registry("schedule")
    for name in SCHEDULES:
        grown.register(name, SCHEDULES[name])
    grown.register("every-third", _every_third)
    monkeypatch.setattr(ebtune.schedules, "SCHEDULES", grown)
    assert "every-third" in choices("schedule")
    assert compose(["schedule=every-third"])["schedule"] == {"name": "every-third", "interval": 3, "keep": [1, 2], "late": None}
    assert compose(["schedule=every-third", "schedule.interval=5", "schedule.late=0.5"])["schedule"]["interval"] == 5
    with pytest.raises(ConfigError, match=r"^schedule\.interval='x' must be a whole number$"):
        compose(["schedule=every-third", "schedule.interval=x"])
    with pytest.raises(ConfigError, match=r"^schedule\.every is not a setting; schedule has: name, interval, keep, late$"):
        compose(["schedule=every-third", "schedule.every=2"])


@pytest.mark.parametrize("name", choices("model"))
def test_model_configs_name_registered_parts(name):
    import yaml

    doc = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    assert doc["name"] == name
    assert doc["arch"] in ARCHITECTURES
    assert doc["decoder"] in DECODERS
    assert doc["fid"] in METRICS


def test_search_config_carries_typed_sections_with_the_plain_values_it_stores(tmp_path):
    cfg = compose([*TINY, "metric.margin=2", "ray.cpus_per_trial=0.5", f"out={tmp_path}"], config_name="search")
    config = SearchConfig.from_mapping(cfg)
    assert isinstance(config.metric, MetricSettings) and isinstance(config.search, SearchSettings)
    assert isinstance(config.ray, RaySettings) and isinstance(config.tracking, TrackingSettings)
    assert (config.metric.margin, config.ray.cpus_per_trial, config.search.n_trials) == (2.0, 0.5, 24)
    for key in ("metric", "search", "ray", "tracking"):  # what a Ray worker gets and a study stores: the same values
        assert dataclasses.asdict(getattr(config, key)) == cfg[key]


@pytest.mark.parametrize(("given", "images"), [("auto", 40), ("7", 7), ("0", 0)])
def test_the_confirmation_is_sized_from_what_the_user_asked_for(tmp_path, given, images):
    cfg = compose([*TINY, "metric.n_samples=40", f"search.confirm_n={given}", f"out={tmp_path}"], config_name="search")
    assert SearchConfig.from_mapping(cfg).confirm_n == images


def test_stored_metric_settings_of_an_earlier_search_still_match():
    """A study keeps its `metric:` section and refuses a resume that changes it; the default section is the
    one searches stored before the sections were typed (values from conf/search.yaml, unchanged), plus
    `couple_noise`, added since: it changes how fewer-step stochastic trials draw their step noise, so an
    earlier study (stored without it) is refused rather than resumed with differently drawn trials."""
    stored = {"n_samples": 256, "batch_size": 32, "latency_warmup": 1, "bootstrap": 50, "margin": 1.5, "n_proxy": 64,
              "latency_pairs": "auto", "gap_prune": False}
    assert compose([], config_name="search")["metric"] == {**stored, "couple_noise": True}


@pytest.mark.parametrize("section, value, message", [
    ("metric", {"bogus": 1}, "metric.bogus is not a setting; metric has: n_samples, "),
    ("metric", {"n_samples": "many"}, "metric.n_samples='many' must be a whole number"),
    ("search", {"trial_timeout_s": "soon"}, "search.trial_timeout_s='soon' must be a number or null"),
    ("ray", {"address": None, "num_cpus": None}, "ray.cpus_per_trial has no value"),
])
def test_a_hand_made_mapping_is_checked_against_the_schema_in_one_line(tmp_path, section, value, message):
    cfg = compose([*TINY, f"out={tmp_path}"], config_name="search")
    cfg[section] = value if section == "ray" else {**cfg[section], **value}
    with pytest.raises(ConfigError) as bad:
        SearchConfig.from_mapping(cfg)
    assert str(bad.value).startswith(message) and "\n" not in str(bad.value)
