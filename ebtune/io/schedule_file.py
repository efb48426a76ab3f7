"""The versioned schedule file: a tuned `Schedule` plus everything needed to trust and reuse it.

Layout (format_version 2, JSON Schema in `schemas/schedule.v2.schema.json`)::

    {
      "format_version": 2,
      "model":    {"family": "dit", "name": "dit-tiny", "depth": 6, "input_size": 8, "patch_size": 2},
      "sampler":  {"name": "ddim", "steps": 50},
      "eps_scale": {"name": "ebcache", "b_h": 0.98, "b_l": 0.96, "t_s": 0.4},
      "schedule": {
        "name": "ebcache",
        "attn": ["1", "1", "0", "110011", ...],
        "mlp":  ["1", "0", "1", "1", ...],
        "eps_scale": [1.0, 0.9987, ...],
        "predictors": {"attn": {"name": "taylor", "order": 2}, "mlp": {"name": "reuse", "order": 0}}
      },
      "search_params": {...},
      "provenance": {...}
    }

Mask encoding: `attn[i]` / `mlp[i]` describe step i (0 = first, noisiest). "1" means every block
computes the branch, "0" every block reuses it; when blocks disagree the entry is a bit string with
one character per block, block 0 first. The common all-blocks-agree case costs one character per
step, and each step has exactly one encoding, so file → Schedule → file is byte-identical.

`schedule.predictors` says per branch what a non-computed slot returns (`PredictorSpec`: a name in
`ebtune.core.predictors.PREDICTORS` and its order). Version 1 files (`schemas/schedule.v1.schema.json`)
have no predictors and still load, as reuse; every file is written as version 2.

`eps_scale` (top level) is the parametric form the per-step factors came from, kept so a retarget
can re-evaluate it; `schedule.eps_scale` holds the factors the sampler applies. `model`, `sampler`,
`eps_scale`, `search_params` and `provenance` are stored as given (key order kept); `provenance` is
free-form (metrics with evaluator and sample count, MACs, speedup, latency with device, ebtune
version, git commit, MLflow run id).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebtune.core.eps_scale import EpsScale, make_eps_scale
from ebtune.core.schedule import BRANCHES, REUSE, Mask, PredictorSpec, Schedule
from ebtune.errors import ConfigError

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # 1: no predictors (reuse)

_REQUIRED = {"model": ("family", "depth"), "sampler": ("name", "steps"), "eps_scale": ("name",)}


class ScheduleFileError(ConfigError):
    """A schedule file that cannot be read or does not fit the model it is applied to."""


@dataclass(frozen=True)
class ScheduleFile:
    """A loaded schedule file. `schedule` is validated; the dicts are as stored in the file."""

    schedule: Schedule
    model: dict[str, Any]
    sampler: dict[str, Any]
    eps_scale: dict[str, Any]
    search_params: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def eps_scale_rule(self) -> EpsScale:
        """The parametric ε-scale rule named in the file (e.g. for `retarget_steps`).

        Raises:
            ScheduleFileError: the rule name or its parameters are unknown to this ebtune.
        """
        params = dict(self.eps_scale)
        name = params.pop("name")
        try:
            return make_eps_scale(name, **params)
        except ValueError as e:
            raise ScheduleFileError(f"the file's eps_scale form is not usable: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write this file again: byte-identical to the version-2 file it was loaded from; a version-1
        file is written as version 2 with reuse on both branches."""
        return save_schedule_file(
            path, self.schedule, model=self.model, sampler=self.sampler, eps_scale=self.eps_scale,
            search_params=self.search_params, provenance=self.provenance,
        )


def _encode_mask(mask: Mask) -> list[str]:
    return [
        ("1" if row[0] else "0") if len(set(row)) == 1 else "".join("1" if v else "0" for v in row)
        for row in mask
    ]


def _decode_mask(rows: Any, branch: str, depth: int, steps: int) -> Mask:
    if not isinstance(rows, list) or len(rows) != steps:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise ScheduleFileError(
            f"schedule.{branch} has {got} entries but sampler.steps is {steps}; give one mask string per step"
        )
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, str) or len(row) not in (1, depth) or set(row) - {"0", "1"}:
            raise ScheduleFileError(
                f"schedule.{branch}[{i}] is {row!r}; use '1', '0' or a {depth}-character string of 0/1 (one per block)"
            )
        out.append(tuple(c == "1" for c in row) * (depth if len(row) == 1 else 1))
    return tuple(out)


def _dump(value: Any, indent: str = "") -> str:
    """JSON with objects and nested lists expanded one item per line and scalar lists on one line,
    so masks and ε factors stay readable and the bytes depend only on the values."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_dump(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False, ensure_ascii=False)


def _check_section(doc: dict, key: str, optional: bool = False) -> dict:
    section = doc.get(key, {} if optional else None)
    if not isinstance(section, dict):
        raise ScheduleFileError(f"schedule file key {key!r} is missing or not an object; re-export the schedule")
    for name in _REQUIRED.get(key, ()):
        if name not in section:
            raise ScheduleFileError(f"schedule file {key} has no {name!r}; add it (required: {', '.join(_REQUIRED[key])})")
    return section


def _decode_predictors(section: Any, version: int) -> dict[str, PredictorSpec]:
    """Version 2's schedule.predictors as specs; version 1 has none and reuses."""
    if version == 1:
        if section is not None:
            raise ScheduleFileError("a format_version 1 file has no schedule.predictors; set format_version to 2")
        return {branch: REUSE for branch in BRANCHES}
    if not isinstance(section, dict) or set(section) != set(BRANCHES):
        raise ScheduleFileError("schedule.predictors must map attn and mlp to {name, order}; re-export the schedule")
    out = {}
    for branch in BRANCHES:
        entry = section[branch]
        if not isinstance(entry, dict) or set(entry) != {"name", "order"}:
            raise ScheduleFileError(f"schedule.predictors.{branch} is {entry!r}; give an object with name and order only")
        try:
            out[branch] = PredictorSpec(entry["name"], entry["order"])
        except ValueError as e:
            raise ScheduleFileError(f"schedule.predictors.{branch} is not usable ({e})") from None
    return out


def _parse(doc: Any) -> ScheduleFile:
    if not isinstance(doc, dict):
        raise ScheduleFileError("a schedule file must hold a JSON object; re-export the schedule")
    version = doc.get("format_version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise ScheduleFileError(
            f"schedule file has format_version {version!r} but this ebtune reads {' or '.join(map(str, READ_VERSIONS))}; "
            "re-export it with this ebtune or install the ebtune that wrote it"
        )
    model, sampler, form = (_check_section(doc, k) for k in ("model", "sampler", "eps_scale"))
    search_params = _check_section(doc, "search_params", optional=True)
    provenance = _check_section(doc, "provenance", optional=True)
    body = _check_section(doc, "schedule")
    for key in ("attn", "mlp", "eps_scale"):
        if key not in body:
            raise ScheduleFileError(f"schedule file has no schedule.{key}; add it (required: attn, mlp, eps_scale)")
    depth, steps = model["depth"], sampler["steps"]
    for label, n in (("model.depth", depth), ("sampler.steps", steps)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ScheduleFileError(f"{label} is {n!r}; it must be a positive integer")
    attn, mlp = (_decode_mask(body[b], b, depth, steps) for b in BRANCHES)
    eps = body["eps_scale"]
    if not isinstance(eps, list) or len(eps) != steps or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in eps):
        raise ScheduleFileError(f"schedule.eps_scale must list {steps} numbers (one per step); re-export the schedule")
    predictors = _decode_predictors(body.get("predictors"), version)
    try:
        schedule = Schedule(attn, mlp, tuple(float(v) for v in eps), str(body.get("name", "custom")),
                            attn_predictor=predictors["attn"], mlp_predictor=predictors["mlp"])
    except ValueError as e:
        raise ScheduleFileError(f"schedule file holds an invalid schedule ({e}); fix its masks or re-export it") from None
    return ScheduleFile(schedule, model, sampler, form, search_params, provenance)


def _document(
    schedule: Schedule, model: dict, sampler: dict, eps_scale: dict, search_params: dict, provenance: dict
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": copy.deepcopy(model),
        "sampler": copy.deepcopy(sampler),
        "eps_scale": copy.deepcopy(eps_scale),
        "schedule": {
            "name": schedule.name,
            "attn": _encode_mask(schedule.attn),
            "mlp": _encode_mask(schedule.mlp),
            "eps_scale": list(schedule.eps_scale),
            "predictors": {branch: {"name": schedule.predictor(branch).name, "order": schedule.predictor(branch).order}
                           for branch in BRANCHES},
        },
        "search_params": copy.deepcopy(search_params),
        "provenance": copy.deepcopy(provenance),
    }


def save_schedule_file(
    path: str | Path,
    schedule: Schedule,
    *,
    model: dict,
    sampler: dict,
    eps_scale: dict,
    search_params: dict | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write `schedule` and its context as a version-2 schedule file (UTF-8, trailing newline).

    Args:
        path: where to write; parent folders are created.
        schedule: the tuned schedule; its steps and depth must equal `sampler["steps"]` and `model["depth"]`.
        model: at least family and depth, e.g. {"family": "dit", "name": "dit-tiny", "depth": 6, ...}.
        sampler: at least name and steps, e.g. {"name": "ddim", "steps": 50}.
        eps_scale: the parametric form with its name, e.g. {"name": "ebcache", "b_h": 0.98, ...}.
        search_params, provenance: free-form JSON-serialisable dicts, stored as given.

    Returns:
        The written path.

    Raises:
        ScheduleFileError: a required key is missing, the lengths disagree, or a value is not JSON
            (NaN, tensors, numpy scalars); nothing is written then.
    """
    doc = _document(schedule, model, sampler, eps_scale, search_params or {}, provenance or {})
    for key in _REQUIRED:
        _check_section(doc, key)
    if (model["depth"], sampler["steps"]) != (schedule.depth, schedule.steps):
        raise ScheduleFileError(
            f"schedule is {schedule.steps} steps x {schedule.depth} blocks but model.depth={model['depth']!r} and "
            f"sampler.steps={sampler['steps']!r}; pass the model and sampler the schedule was built for"
        )
    try:
        text = _dump(doc) + "\n"
    except (TypeError, ValueError) as e:
        raise ScheduleFileError(f"schedule file content is not plain JSON ({e}); convert it to str/int/float/list/dict") from None
    _parse(json.loads(text))  # the writer obeys the reader's rules, so every written file loads
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_schedule_file(path: str | Path) -> ScheduleFile:
    """Read and validate a schedule file.

    Raises:
        ScheduleFileError: not JSON, an unknown format_version, missing keys, or masks / ε factors
            whose lengths disagree with sampler.steps and model.depth. The message names the fix.
        FileNotFoundError: `path` does not exist.
    """
    if Path(path).is_dir():
        raise ScheduleFileError(f"{path} is a folder, not a schedule file; pass a file written by `ebtune export` "
                                f"(e.g. {Path(path) / 'schedules' / 'trial-0000.json'})")
    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleFileError(f"{path} is not JSON ({e.msg} at line {e.lineno}); pass a file written by `ebtune export`") from None
    return _parse(doc)


def check_model(file: ScheduleFile, depth: int, family: str) -> None:
    """Raise unless the file was tuned for a model of this family and depth.

    Raises:
        ScheduleFileError: family or depth differ (the depth message points at `retarget_depth`).
    """
    tuned_family, tuned_depth = file.model["family"], file.model["depth"]
    if tuned_family != family:
        raise ScheduleFileError(
            f"schedule was tuned for model family {tuned_family!r} but the model is {family!r}; tune one for this model"
        )
    if tuned_depth != depth:
        raise ScheduleFileError(
            f"schedule was tuned for {tuned_depth} blocks but the model has {depth}; "
            "retarget it with ebtune.retarget.retarget_depth or tune one for this model"
        )
