"""Hydra at the edge: compose `conf/` with command-line overrides into plain values.

Errors (unknown group option, unknown key, a value of the wrong type) become `ConfigError` with one
line naming the key and the fix; the CLI turns them into exit code 2. The Hydra idioms a Hydra user
types work here too: `hydra.searchpath=[file:///DIR]` (or `--config-dir DIR`) adds the groups of a
user config directory (`DIR/model/my-dit.yaml` makes `model=my-dit` valid), `hydra.run.dir=` is the
command's `out=`, `hydra.job.name=` its `name=`, and `--cfg`, `--info` and `-m` are flags of the
commands that compose (`add_hydra_flags`).

Defaults live in one place each. A group backed by a registry (`REGISTRY_GROUPS`) has no YAML files:
each registered name is a structured node in Hydra's `ConfigStore`, built from its factory's signature
(`option_node`), so `schedule=fora` composes to `{name: fora, interval: 2}` because `fora(ctx,
interval=2)` says so, and a new registry entry is a new choice with its own defaults. The search
sections (`metric`, `search`, `ray`, `tracking`) take their types from the dataclasses of
`ebtune.search.config` (stored as schemas the YAML files extend) and their values from `conf/`.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import functools
import inspect
import itertools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from ebtune.errors import ConfigError
from ebtune.registry import Registry

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Hydra settings ebtune honours, as the run setting each one stands for.
HYDRA_ALIASES = {"hydra.run.dir": "out", "hydra.job.name": "name"}
HYDRA_KEYS = ("hydra.searchpath", "hydra.sweep.dir", *HYDRA_ALIASES)
REGISTRY_GROUPS = ("schedule", "eps_scale", "sampler", "launcher")
# What a builder passes to a factory itself, never a user setting: the schedule's context, and for a
# family that calibrates its probe and ε factors (`ScheduleSpec.build`); a launcher's search config.
SUPPLIED = {"schedule": {"ctx", "probe", "eps_scale"}, "launcher": {"config"}}
# A family that calibrates (takes `probe`) also has `n`, its calibration samples, which
# `ebtune.run.factory.schedule_from` takes out before building the schedule.
CALIBRATION_SAMPLES = 8


def registry(group: str) -> Registry | None:
    """The registry behind a config group (one config node per name, `option_node`), or None for
    groups that are plain settings (models: a new model is a new YAML file in `conf/model/`)."""
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


def user_dirs(searchpath: Sequence[str]) -> list[Path]:
    """The folders of `file://` entries of a Hydra search path (pkg:// entries are Python packages)."""
    return [Path(entry[len("file://"):]) for entry in searchpath if entry.startswith("file://")]


def choices(group: str, searchpath: Sequence[str] = ()) -> list[str]:
    """Options of a config group: its registry's names (or the files in `conf/<group>/`), plus the
    files in `<dir>/<group>/` of each user config directory on the search path."""
    reg = registry(group)
    names = set(reg.choices() if reg is not None else (p.stem for p in (CONF_DIR / group).glob("*.yaml")))
    for folder in user_dirs(searchpath):
        names.update(p.stem for p in (folder / group).glob("*.yaml"))
    return sorted(names)


def is_group(group: str, searchpath: Sequence[str] = ()) -> bool:
    return group in REGISTRY_GROUPS or any((folder / group).is_dir() for folder in [CONF_DIR, *user_dirs(searchpath)])


def _config_type(annotation: Any) -> Any:
    """A factory parameter's annotation as a type OmegaConf checks (Optional, List and scalars; else Any)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return Optional[_config_type(rest[0])] if len(rest) == 1 and len(args) == 2 else Any
    if origin in (list, tuple, collections.abc.Sequence):
        return List[_config_type(args[0]) if args else Any]
    return annotation if annotation in (int, float, bool, str) else Any


def _factory_params(factory: Callable[..., Any], supplied: set[str]) -> list[inspect.Parameter]:
    """The parameters a user sets: those with a default that the builder does not pass itself."""
    return [p for p in inspect.signature(factory).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in supplied]


def option_node(group: str, name: str) -> type:
    """The config node of registry entry `name`: a dataclass with `name` and one field per setting of
    its factory, typed and defaulted as the factory's signature says (the one place they live)."""
    factory = registry(group).get(name)  # type: ignore[union-attr]
    hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    params = _factory_params(factory, SUPPLIED.get(group, set()))
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=name))]
    for p in params:
        default = (dataclasses.field(default_factory=functools.partial(list, p.default))
                   if isinstance(p.default, (list, tuple)) else dataclasses.field(default=p.default))
        fields.append((p.name, _config_type(hints.get(p.name, Any)), default))
    if "probe" in inspect.signature(factory).parameters:
        fields.append(("n", int, dataclasses.field(default=CALIBRATION_SAMPLES)))
    return dataclasses.make_dataclass(name, fields)


def option_summary(group: str, name: str) -> str:
    """One line on what `name` does: its factory's docstring, else that of the module defining it
    (unless the module is the group's registry, whose docstring is about every option)."""
    factory = registry(group).get(name)  # type: ignore[union-attr]
    own = inspect.getdoc(factory) or ""
    if isinstance(factory, type) and dataclasses.is_dataclass(factory) and own.startswith(factory.__name__ + "("):
        own = ""  # the signature a dataclass writes for itself is not a description
    home = inspect.getmodule(factory)
    shared = home is not None and any(v is registry(group) for v in vars(home).values())
    text = own if own and not own.startswith("Args:") else ("" if shared or home is None else inspect.getdoc(home) or "")
    return " ".join(text.split("\n\n")[0].split())


def register_configs() -> None:
    """Store ebtune's structured configs in Hydra's `ConfigStore` (re-stored on every compose, so a name
    registered since is a choice too): one node per registry entry, and the search sections' schemas,
    which `search.yaml` (`search_schema`), `search/default.yaml` and `tracking/default.yaml` extend."""
    from hydra.core.config_store import ConfigStore

    from ebtune.search.config import MetricSettings, RaySettings, SearchSettings, TrackingSettings, schema

    store = ConfigStore.instance()
    for group in REGISTRY_GROUPS:
        for name in registry(group).choices():  # type: ignore[union-attr]
            store.store(group=group, name=name, node=option_node(group, name))
    store.store(name="search_schema", node={"metric": schema(MetricSettings), "ray": schema(RaySettings)})
    store.store(group="search", name="schema", node=schema(SearchSettings))
    store.store(group="tracking", name="schema", node=schema(TrackingSettings))


@dataclass(frozen=True)
class Composed:
    """A composed run config and what produced it (saved as `.hydra/` with a search).

    Attributes:
        cfg: the resolved config as plain Python values.
        hydra: Hydra's own config node (unresolved: run/sweep dirs hold `${now:}` interpolations).
        overrides: the overrides as the user typed them (hydra.* included).
        searchpath: the user config directories, as Hydra search path entries.
    """

    cfg: dict[str, Any]
    hydra: dict[str, Any]
    overrides: tuple[str, ...]
    searchpath: tuple[str, ...]


def add_hydra_flags(p: argparse.ArgumentParser, config_name: str, sweeps: bool) -> None:
    """Hydra's command-line flags for a command that composes `conf/<config_name>.yaml`.

    `sweeps`: whether `-m` runs one job per combination of comma-separated values; commands for
    which a sweep makes no sense refuse `-m` with one line instead of ignoring it.
    """
    p.add_argument("--cfg", "-c", choices=["job", "hydra", "all"],
                   help="print the composed config (job), Hydra's config (hydra) or both, and exit")
    p.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations first")
    p.add_argument("--info", "-i", nargs="?", const="all", choices=["all", "config", "defaults", "searchpath"],
                   help="print the config search path, the groups and their options, the defaults and the config, then exit")
    p.add_argument("--config-dir", "-cd", action="append", default=[], metavar="DIR",
                   help="a user config directory (DIR/model/NAME.yaml, DIR/schedule/NAME.yaml, ...); may repeat")
    p.add_argument("--multirun", "-m", action="store_true",
                   help="sweep: run one job per combination of comma-separated values (e.g. trials=8,16)"
                   if sweeps else argparse.SUPPRESS)
    p.set_defaults(config_name=config_name, sweeps=sweeps)


def hydra_overrides(args: argparse.Namespace) -> list[str]:
    """The command's overrides with `--config-dir` folders added as a `hydra.searchpath` entry."""
    overrides = list(args.overrides)
    dirs = [f"file://{Path(d).absolute()}" for d in getattr(args, "config_dir", [])]
    if dirs:
        for d in getattr(args, "config_dir", []):
            if not Path(d).is_dir():
                raise ConfigError(f"--config-dir {d}: no such directory; pass a folder holding model/, schedule/, ... files")
        given = [o for o in overrides if o.partition("=")[0] == "hydra.searchpath"]
        if given:
            raise ConfigError("--config-dir and hydra.searchpath= both given; give the folders in one of them")
        overrides.append(f"hydra.searchpath=[{','.join(dirs)}]")
    return overrides


def _parse_overrides(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"cannot parse {item!r}; overrides are key=value (e.g. steps=50)")
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"{str(e).strip().splitlines()[0]}; overrides are key=value (e.g. steps=50)") from None


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """One override list per combination of the swept values, in the order of Hydra's basic sweeper
    (`trials=8,16 seed=0,1` gives four jobs, the last key varying fastest).

    Built on Hydra's public override parser rather than its sweeper plugin, which is internal. As
    there, a key given twice keeps its first position and its last values.

    Raises:
        ConfigError: an override does not parse, or sweeps an interval (it has no list of values).
    """
    from hydra.errors import HydraException

    values: dict[str, list[str]] = {}
    for parsed in _parse_overrides(overrides):
        key = parsed.get_key_element()
        if parsed.is_sweep_override() and not parsed.is_discrete_sweep():
            raise ConfigError(f"{key}=interval(...) has no list of values to run; -m sweeps lists: write {key}=1,2 or {key}=range(1,5)")
        try:
            strings = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.get_value_element_as_str()]
        except HydraException as e:
            raise ConfigError(f"{str(e).strip().splitlines()[0]}; -m sweeps comma-separated values (e.g. trials=8,16)") from None
        values[key] = [f"{key}={value}" for value in strings]
    return [list(job) for job in itertools.product(*values.values())]


def _hydra_settings(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides for the run config, the search path): honoured hydra.* keys become the run setting
    they stand for; any other hydra.* key is refused rather than silently ignored."""
    run, searchpath = [], []
    for item, parsed in zip(overrides, _parse_overrides(overrides)):
        key = parsed.get_key_element()
        if not key.startswith("hydra."):
            run.append(item)
        elif key == "hydra.searchpath":
            value = parsed.value()
            searchpath = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif key in HYDRA_ALIASES:
            alias = HYDRA_ALIASES[key]
            if any(o.partition("=")[0] == alias for o in overrides):
                raise ConfigError(f"{key}= and {alias}= are the same setting; give only {alias}=")
            run.append(f"{alias}={parsed.get_value_element_as_str()}")
        elif key != "hydra.sweep.dir":
            raise ConfigError(f"{key} is not used by ebtune (it composes configs, it does not run a Hydra app); "
                              f"the hydra settings it honours are {', '.join(HYDRA_KEYS)}")
    for entry in searchpath:
        if not entry.startswith(("file://", "pkg://")):
            raise ConfigError(f"hydra.searchpath entry {entry!r} needs a scheme; write file://{Path(entry).absolute()}")
        if entry.startswith("file://") and not Path(entry[len("file://"):]).is_dir():
            raise ConfigError(f"hydra.searchpath entry {entry!r} is not a directory; pass a folder holding model/, ... files")
    return run, searchpath


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _check_types(cfg: dict[str, Any], base: dict[str, Any], keys: Sequence[str]) -> None:
    """Each overridden value has its default's kind (number, boolean, list), so `steps=abc` fails here
    with the key named instead of deep inside a run; commands check whole numbers themselves."""
    given, default = _leaves(cfg), _leaves(base)
    for key in keys:
        for leaf, was in default.items():
            if not (leaf == key or leaf.startswith(key + ".")) or leaf not in given:
                continue
            now = given[leaf]
            if isinstance(was, bool):
                ok, kind = isinstance(now, bool), "true or false"
            elif isinstance(was, (int, float)):  # an integer default may still take a fraction (ray.cpus_per_trial=0.5)
                ok, kind = isinstance(now, (int, float)) and not isinstance(now, bool), "a number"
            elif isinstance(was, list):
                ok, kind = isinstance(now, list), "a list, e.g. [a,b]"
            else:
                continue
            if not ok and now is not None:
                raise ConfigError(f"{leaf}={now!r} must be {kind} (default {was!r})")


def compose_run(overrides: Sequence[str], config_name: str = "config") -> Composed:
    """Compose `conf/<config_name>.yaml` (and the user config directories on the search path) with
    `overrides`; see the module docstring for the hydra.* settings.

    Raises:
        ConfigError: an unknown group option or key, a value of the wrong type, a refused hydra.* key.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    run, searchpath = _hydra_settings(overrides)
    groups = []
    for item in run:
        key, _, value = item.partition("=")
        group = key.lstrip("+~")
        if is_group(group, searchpath):
            if value not in choices(group, searchpath):
                raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(choices(group, searchpath))}")
            groups.append(item)
    hydra_items = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=[*hydra_items, *run], return_hydra_config=True)
            values = [i.partition("=")[0].lstrip("+~") for i in run if i not in groups]
            base = hydra_compose(config_name=config_name, overrides=[*hydra_items, *groups]) if values else cfg
        hydra_node = OmegaConf.to_container(cfg.hydra, resolve=False)
        with open_dict(cfg):
            del cfg["hydra"]
        plain = OmegaConf.to_container(cfg, resolve=True)
        defaults = OmegaConf.to_container(base, resolve=True) if values else plain
    except (HydraException, OmegaConfBaseException) as e:
        from ebtune.search.config import settings_error

        typed = settings_error(e)
        if typed is not None:
            raise ConfigError(typed) from None
        first = str(e).strip().splitlines()[0]
        for key, alias in HYDRA_ALIASES.items():
            if first.startswith(f"Could not override '{alias}'") and any(o.startswith(f"{key}=") for o in overrides):
                raise ConfigError(f"{key}= stands for {alias}=, which this command does not have; drop it") from None
        raise ConfigError(f"{first}; see `ebtune <command> --help` for the keys") from None
    _check_types(plain, defaults, values)
    return Composed(plain, hydra_node, tuple(overrides), tuple(searchpath))  # type: ignore[arg-type]


def compose(overrides: Sequence[str], config_name: str = "config") -> dict[str, Any]:
    """The resolved config as plain Python values (`compose_run(...).cfg`)."""
    return compose_run(overrides, config_name).cfg


def print_config(composed: Composed, which: str, resolve: bool) -> None:
    """`--cfg job|hydra|all`: the config as YAML, as Hydra prints it."""
    import yaml

    parts = {"job": composed.cfg, "hydra": {"hydra": composed.hydra}}
    if which == "hydra" and resolve:
        raise ConfigError("--resolve with --cfg hydra: Hydra's run and sweep dirs resolve only inside a Hydra app; drop --resolve")
    for name in (["job", "hydra"] if which == "all" else [which]):
        print(yaml.safe_dump(parts[name], sort_keys=False).rstrip())


def print_info(composed: Composed, which: str, config_name: str) -> None:
    """`--info`: the config search path, the groups and their options, the defaults chosen, the config."""
    import yaml

    sections = {
        "searchpath": [f"file://{CONF_DIR} (ebtune)", *(f"{e} (user)" for e in composed.searchpath)],
        "defaults": {k: v for k, v in composed.hydra["runtime"]["choices"].items() if not k.startswith("hydra/")},
        "config": composed.cfg,
    }
    folders = [CONF_DIR, *user_dirs(composed.searchpath)]
    groups = sorted({p.name for folder in folders for p in folder.iterdir() if p.is_dir()} | set(REGISTRY_GROUPS))
    print(f"Config {config_name}.yaml; overrides: {' '.join(composed.overrides) or '(none)'}")
    for name in (["searchpath", "defaults", "config"] if which == "all" else [which]):
        print(f"== {name} ==")
        print(yaml.safe_dump(sections[name], sort_keys=False).rstrip())
        if name == "defaults":
            print("== groups ==")
            for group in groups:
                print(f"{group}: {', '.join(choices(group, composed.searchpath))}")
            print("== options ==")
            for group in REGISTRY_GROUPS:
                for option in registry(group).choices():  # type: ignore[union-attr]
                    print(f"{group}={option}: {_describe(group, option)}")


def _describe(group: str, name: str) -> str:
    """`interval=2; FORA ...`: the settings of option `name` as `key=value` overrides, then what it does."""
    import yaml

    node = option_node(group, name)()
    settings = [f"{f.name}={yaml.safe_dump(getattr(node, f.name), default_flow_style=True).strip().removesuffix('...').strip()}"
                for f in dataclasses.fields(node) if f.name != "name"]
    return "; ".join(part for part in (" ".join(settings), option_summary(group, name)) if part) or "(no settings)"


def show(args: argparse.Namespace) -> bool:
    """Handle `--cfg` / `--info` for a command: print and return True (the command then exits 0)."""
    if not (getattr(args, "cfg", None) or getattr(args, "info", None)):
        return False
    composed = compose_run(args.overrides, args.config_name)
    if args.info:
        print_info(composed, args.info, args.config_name)
    if args.cfg:
        print_config(composed, args.cfg, args.resolve)
    return True


def write_hydra_dir(folder: Path, composed: Composed) -> Path:
    """Save the composed config, the overrides as typed and Hydra's config as `folder/.hydra/`
    (`config.yaml`, `overrides.yaml`, `hydra.yaml`), the layout a Hydra app leaves in its run dir."""
    import yaml

    out = Path(folder) / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    for name, value in (("config", composed.cfg), ("overrides", list(composed.overrides)), ("hydra", {"hydra": composed.hydra})):
        (out / f"{name}.yaml").write_text(yaml.safe_dump(value, sort_keys=False))
    return out
