"""Apply an exported schedule file to a run: retarget it to the run's step count and model depth."""
from __future__ import annotations

from pathlib import Path

from ebtune.core.schedule import Schedule
from ebtune.io.schedule_file import load_schedule_file
from ebtune.run.loading import LoadedModel
from ebtune.sampling.samplers import Sampler, step_times
from ebtune.schedules.retarget import retarget_depth, retarget_steps


def schedule_for_run(path: str | Path, loaded: LoadedModel, sampler: Sampler) -> tuple[Schedule, list[str]]:
    """The file's schedule fitted to `sampler.steps` and the loaded model (see `fit_schedule_file`)."""
    return fit_schedule_file(path, loaded.spec.name, loaded.config.depth, sampler)


def fit_schedule_file(path: str | Path, model_name: str, depth: int, sampler: Sampler) -> tuple[Schedule, list[str]]:
    """The file's schedule fitted to `sampler.steps` and a model of `depth` blocks, with notes on what changed.

    Steps are mapped through normalised time (the file's sampler respaced at its own step count
    against this run's), and the ε factors are re-evaluated from the file's parametric form.

    Raises:
        ScheduleFileError: unreadable or invalid file.
    """
    file = load_schedule_file(path)
    schedule, notes = file.schedule, []
    if file.model.get("name") not in (None, model_name):
        notes.append(f"tuned on {file.model['name']}, applied to {model_name}")
    if file.sampler.get("name") != sampler.step.name:
        notes.append(f"tuned with sampler {file.sampler.get('name')}, applied with {sampler.step.name}")
    if schedule.depth != depth:
        schedule, depth_notes = retarget_depth(schedule, depth)
        notes += [f"depth {file.model['depth']} -> {depth}", *depth_notes]
    if schedule.steps != sampler.steps:
        schedule, step_notes = retarget_steps(
            schedule, sampler.steps, step_times(schedule.steps), sampler.times, file.eps_scale_rule()
        )
        notes += step_notes
    return schedule, notes
