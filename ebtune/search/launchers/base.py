"""The launcher interface: where a search's trials run."""
from __future__ import annotations

from abc import ABC, abstractmethod

from ebtune.search.job import Job, SearchStopped


class Launcher(ABC):
    """Runs trials of a `Job` until its study holds `job.total` counted trials (see
    `ebtune.search.study.counted`), sharing that budget with any other session on the study."""

    @abstractmethod
    def run(self, job: Job) -> None:
        """Run trials until the budget is met, recording each through `job.recorder`.

        Raises:
            SearchStopped: `search.max_consecutive_failures` trials failed in a row.
        """


def failure_streak(job: Job) -> str | None:
    """Why the search must stop: `search.max_consecutive_failures` real failures in a row (0 = never),
    or None."""
    limit = job.config.search.max_consecutive_failures
    if limit and job.recorder.streak >= limit:
        return (f"{job.recorder.streak} trials failed in a row (search.max_consecutive_failures={limit}); "
                f"fix the cause shown above, then run the same command to resume")
    return None


def check_streak(job: Job) -> None:
    """Raise `SearchStopped` when `failure_streak` says so."""
    why = failure_streak(job)
    if why is not None:
        raise SearchStopped(why)
