"""The launcher interface: where a search's trials run."""
from __future__ import annotations

from abc import ABC, abstractmethod

from ebtune.search.job import Job


class Launcher(ABC):
    """Runs trials of a `Job`; `run` returns when `n_trials` new trials have finished."""

    @abstractmethod
    def run(self, job: Job, n_trials: int) -> None:
        """Run `n_trials` new trials, recording each through `job.recorder`."""
