"""The one lock policy of ebtune's files: wait a bounded time for the lock, then fail with one line.

Nothing is ever written without its lock: a timeout is an error the user sees (`LockTimeout`), not a
reason to go ahead. `filelock.Timeout` is an `OSError`, which callers that guard a store against
outages would take for a lost store; `LockTimeout` is not.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import filelock

from ebtune.errors import ConfigError


class LockTimeout(ConfigError):
    """Another process held a lock longer than the bounded wait."""


def lock_error(path: Path | str, timeout_s: float) -> LockTimeout:
    return LockTimeout(f"another ebtune process has held {path} for over {timeout_s:g}s; wait for it to finish, "
                       f"or delete the file if no ebtune process runs")


@contextmanager
def held(lock: filelock.BaseFileLock) -> Iterator[None]:
    """`with lock:` under the lock policy: its own timeout, then `LockTimeout`. Re-entrant like `lock`."""
    try:
        lock.acquire()
    except filelock.Timeout:
        raise lock_error(lock.lock_file, lock.timeout) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Exclusive lock on `path` (its folder is created), under the lock policy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with held(filelock.FileLock(str(path), timeout=timeout_s)):
        yield
