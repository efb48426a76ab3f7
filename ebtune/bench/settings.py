"""`ebtune bench` settings from `key=value` tokens, without Hydra (the bench needs torch only).

Values are scalars or bracketed lists (`batch=[1,8,32]`, `'schedules=[none,fora2]'`). The model is a
config name of `conf/model/` (`dit-tiny`, `dit-xl`, ...), read from its flat YAML file by a small
scalar reader: the bench only needs the architecture, image size and guidance settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ebtune.errors import ConfigError
from ebtune.run.loading import ModelSpec
from ebtune.run.overrides import settings
from ebtune.sampling.samplers import SAMPLER_STEPS

MODEL_CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PRECISIONS = ("fp32", "tf32", "bf16")
SCHEDULE_NAMES = ("none", "attn-only", "mlp-only", "fora2", "fora3", "ebcache-table")
FILE_PREFIX = "file:"


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def count(text: str) -> int:
    """A positive integer."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def positive(text: str) -> float:
    """A number above 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(text)
    return value


def names(text: str) -> tuple[str, ...]:
    """`[a, b]` or `a` as stripped, unquoted strings."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return tuple(item.strip().strip("'\"") for item in text.split(",") if item.strip())


def counts(text: str) -> tuple[int, ...]:
    """`[1, 8]` or `8` as positive integers."""
    return tuple(count(item) for item in names(text))


def _scalar(text: str) -> Any:
    """A flat-YAML scalar: null, int, float or string."""
    if text in ("null", "~", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'\"")


def model_names() -> list[str]:
    return sorted(p.stem for p in MODEL_CONF.glob("*.yaml"))


def model_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of config `name` (`conf/model/<name>.yaml`, top-level `key: value` lines).

    Raises:
        ConfigError: no such model config.
    """
    path = MODEL_CONF / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    doc = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.split("#", 1)[0].partition(":")
        if sep and not line.startswith((" ", "\t")):
            doc[key.strip()] = _scalar(value.strip())
    return ModelSpec(**doc)


@dataclass(frozen=True)
class BenchSettings:
    """What one `ebtune bench` run measures; see `ebtune bench --help` for each key."""

    model: str = "dit-tiny"
    steps: int = 50
    sampler: str = "ddim"  # a SAMPLER_STEPS name, with its default parameters
    batch: tuple[int, ...] = (32,)
    precision: tuple[str, ...] = ("fp32",)
    schedules: tuple[str, ...] = SCHEDULE_NAMES
    compile: bool = False
    cuda_graphs: bool = False  # replay one CUDA graph per step pattern (compiled fast path, CUDA only)
    versus_eager: bool = False  # with compile=true, also time eager in the same interleaved rounds
    out: str = "bench/results/"
    device: str = "auto"
    repeats: int = 3
    warmup: int = 1
    max_batch: bool = False
    # max_batch's memory cap, so a larger GPU answers for an 80 GB H100: it reports 79.6 GiB, of which its
    # CUDA context (outside the allocator the cap applies to) takes about half a GiB.
    memory_gib: float = 79.0
    threads: int | None = None  # torch intra-op threads; None keeps torch's default

    def __post_init__(self) -> None:
        SAMPLER_STEPS.get(self.sampler)  # an unknown name lists the valid ones
        for p in self.precision:
            if p not in PRECISIONS:
                raise ConfigError(f"unknown precision {p!r}; choose one of: {', '.join(PRECISIONS)}")
        for s in self.schedules:
            if s not in SCHEDULE_NAMES and not (s.startswith(FILE_PREFIX) and len(s) > len(FILE_PREFIX)):
                raise ConfigError(f"unknown schedule {s!r}; choose from {', '.join(SCHEDULE_NAMES)} or file:PATH")
        if "none" not in self.schedules:
            raise ConfigError("schedules must include none: every speedup is measured against it")
        if self.cuda_graphs and not self.compile:
            raise ConfigError("cuda_graphs=true captures the compiled fast path; set compile=true as well")
        if self.versus_eager and not self.compile:
            raise ConfigError("versus_eager=true times the fast path against eager; set compile=true as well")


PARSERS: dict[str, Callable[[str], Any]] = {
    "model": str, "steps": count, "sampler": str, "batch": counts, "precision": names, "schedules": names, "schedule_file": str,
    "compile": boolean, "cuda_graphs": boolean, "versus_eager": boolean, "out": str, "device": str, "repeats": count, "warmup": int, "max_batch": boolean,
    "threads": count, "memory_gib": positive,
}


def parse_settings(tokens: Sequence[str]) -> BenchSettings:
    """`key=value` tokens to settings; `schedule_file=PATH` adds the schedule `file:PATH`.

    Raises:
        ConfigError: a token that is not key=value, an unknown key or a bad value.
    """
    given = settings("bench", tokens, PARSERS)
    extra = given.pop("schedule_file", None)
    if extra is not None:
        given["schedules"] = (*given.get("schedules", SCHEDULE_NAMES), FILE_PREFIX + extra)
    model_spec(given.get("model", BenchSettings.model))  # an unknown model fails here, before any work
    return BenchSettings(**given)
