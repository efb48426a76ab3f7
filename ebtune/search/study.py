"""The Optuna study of a search: the one place search state lives.

Storage. `search.storage=URL` takes any Optuna storage URL (`sqlite:///…`, `postgresql://…`,
`mysql://…`) or `journal:PATH` (a journal file, `JournalFileBackend`); the default is
`sqlite:///<folder>/study.db`. A non-default storage is named in `<folder>/storage.json`, so
`ebtune sync`, `export` and `confirm` find the study from the folder alone.

What the study holds: see `ebtune.search.records`, the one module that names its attributes.

Interrupted trials are retried. A trial whose process died is failed and re-queued with the same
parameters (`RetryHeartbeatStaleTrialCallback`, the retry carries `failed_trial`): at once when its
session ran on this host and that process is gone, otherwise when its heartbeat (`HEARTBEAT_ATTR`,
stamped through Optuna's public storage API by every storage) is older than `search.grace_period`. Such a trial has
no `fail_reason` and does not count towards `trials=`; a trial that really failed does.

Concurrency: sessions cooperate. Any number of sessions may run one search (same name and
folder, or the same shared storage): each counts the budget from the study and asks its next trial
under a file lock in the folder (`claim`), so they start exactly `trials=` between them; a live
session's trial is never failed (on this host its pid decides, elsewhere its heartbeat); and each
session's sampler gets its own seed (`seed + trials so far + 7919 × session index`). Creating the
storage, the study and its seed trials happens under the same lock, so two first starts do not race.
"""
from __future__ import annotations

import importlib
import inspect
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ebtune.errors import ConfigError
from ebtune.io.locks import file_lock
from ebtune.registry import Registry
from ebtune.search.pareto import direction
from ebtune.search.records import FAIL_REASON, HEARTBEAT_ATTR, SEARCH_ID, SESSION_ATTR, SETTINGS, resume_refusal

DB_NAME = "study.db"
POINTER_NAME = "storage.json"
LOCK_NAME = ".study.lock"
# Sessions' sampler seeds differ by this prime times the session index.
SESSION_SEED_STRIDE = 7919
# How long a session waits for the folder lock before saying who holds it.
LOCK_TIMEOUT_S = 120


@contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (stale-trial retry and metric names are used on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# -- where the study is ----------------------------------------------------------------------------
def default_url(folder: Path) -> str:
    return f"sqlite:///{(folder / DB_NAME).absolute().as_posix()}"


def folder_url(folder: Path) -> str:
    """The storage URL of the search in `folder`: its `storage.json` pointer, else `study.db`.

    Raises:
        FileNotFoundError: the folder holds neither (not a search folder).
    """
    import json

    pointer = folder / POINTER_NAME
    if pointer.is_file():
        return json.loads(pointer.read_text())["url"]
    if (folder / DB_NAME).is_file():
        return default_url(folder)
    raise FileNotFoundError(f"no {DB_NAME} or {POINTER_NAME} in {folder}; pass a folder written by `ebtune search`")


def resolve_url(folder: Path, url: str | None) -> str:
    """The storage a search in `folder` uses (`search.storage`, default `study.db`), checked against
    the folder's pointer; records a non-default one in `storage.json`.

    Raises:
        ConfigError: the folder already belongs to a study in another storage.
    """
    import json

    url = url or default_url(folder)
    try:
        before = folder_url(folder)
    except FileNotFoundError:
        before = None
    if before is not None and before != url:
        raise ConfigError(f"search folder {folder} keeps its study in {before}, not {url}; resume with "
                          f"search.storage={before} or choose another out=")
    if url != default_url(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / POINTER_NAME).write_text(json.dumps({"url": url}, indent=2) + "\n")
    return url


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`.

    Raises:
        ConfigError: a URL Optuna cannot open.
    """
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None  # sessions share the file
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):].split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except (ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"search.storage={url}: {first}; give an Optuna storage URL (sqlite:///, postgresql://, "
                          f"mysql://) or journal:PATH") from None


def storage(folder: Path) -> optuna.storages.BaseStorage:
    """The storage of the search in `folder` (see `folder_url`)."""
    return make_storage(folder_url(folder))


def load_folder_study(folder: Path) -> optuna.Study:
    """The (one) study of the search in `folder`."""
    store = storage(folder)
    (summary,) = optuna.get_all_study_summaries(store)
    return optuna.load_study(study_name=summary.study_name, storage=store)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on the search folder, for creating its storage, study and seed trials and for
    claiming trials (`ebtune.io.locks`: a bounded wait, then one line)."""
    with file_lock(folder / LOCK_NAME, LOCK_TIMEOUT_S):
        yield


# -- samplers ----------------------------------------------------------------------------------------
def constraint_values(trial: FrozenTrial) -> Sequence[float]:
    """Optuna's `constraints_func`: the violations the search stored before telling the trial."""
    return trial.user_attrs.get("constraints", ())


def _tpe(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=int(search["startup_trials"]), **cons)


def _nsga2(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(search["population_size"]), **cons)


def _gp(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=int(search["startup_trials"]), **cons)


def _random(search: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


# Optuna samplers by `search.sampler` name; each takes (search config, seed, constraint kwargs).
SAMPLERS: Registry[optuna.samplers.BaseSampler] = Registry("search.sampler")
SAMPLERS.register("tpe", _tpe)  # multivariate TPE
SAMPLERS.register("nsga2", _nsga2)
SAMPLERS.register("gp", _gp)
SAMPLERS.register("random", _random)


def _from_target(spec: Mapping[str, Any], seed: int, cons: dict) -> optuna.samplers.BaseSampler:
    """`search.sampler={_target_: module.Class, **kwargs}`, built with importlib (Hydra stops in cli/);
    `seed` and `constraints_func` are passed when the class takes them and the mapping does not."""
    target = str(spec["_target_"])
    module, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"search.sampler._target_={target} cannot be imported; give a class path such as "
                          f"optuna.samplers.NSGAIIISampler") from None
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    extra = {"seed": seed, **cons}
    kwargs.update({k: v for k, v in extra.items() if k in accepted and k not in kwargs})
    try:
        sampler = cls(**kwargs)
    except (TypeError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"search.sampler: {target}({', '.join(kwargs)}) failed: {first}; check its arguments") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(f"search.sampler._target_={target} is not an Optuna sampler; give a BaseSampler subclass")
    return sampler


def make_sampler(search: Mapping[str, Any], seed: int, constrained: bool) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded with `seed`: a `SAMPLERS` name or a mapping with `_target_`.

    Raises:
        ConfigError: unknown name, a target that is not importable or not a sampler, bad arguments.
    """
    cons = {"constraints_func": constraint_values} if constrained else {}
    spec = search["sampler"]
    if isinstance(spec, Mapping):
        if "_target_" not in spec:
            raise ConfigError("search.sampler as a mapping needs _target_ (e.g. optuna.samplers.NSGAIIISampler)")
        return _from_target(spec, seed, cons)
    return SAMPLERS.make(spec, search, seed, cons)


def check_sampler(search: Mapping[str, Any]) -> None:
    """Build the configured sampler once, so a bad `search.sampler` fails before any file is written.

    Raises:
        ConfigError: as `make_sampler`.
    """
    make_sampler(search, 0, False)


# -- sessions and their trials -------------------------------------------------------------------------
def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "?"


def session_tag() -> str:
    """`host:pid:start` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def session_dead(tag: str) -> bool:
    """True when the session `tag` ran on this host and its process is gone."""
    _, _, rest = tag.partition(":")
    pid, _, start = rest.partition(":")
    if not _on_this_host(tag) or not pid.isdigit():
        return False  # another machine's session: its heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start != "?" and _start_ticks(int(pid)) not in (start, "?")


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue an interrupted (already FAIL) trial with the same parameters."""
    with quiet():
        RetryHeartbeatStaleTrialCallback()(study, trial)


def stored_trial_id(store: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` (Optuna's public storage API)."""
    return store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name), number)


def _on_this_host(tag: str) -> bool:
    return tag.partition(":")[0] == socket.gethostname()


def _dead(trial: FrozenTrial, now: float, grace_s: float) -> bool:
    """A session on this host is judged by its process alone: gone means dead, alive means alive even
    when its heartbeat is late (a loaded machine delays the heartbeat thread, and failing a live trial
    would make its session's `tell` fail). A session on another host is dead when its last heartbeat
    is older than `grace_s`; a trial without a session tag (asked outside ebtune, or killed before it
    was tagged) once it is `grace_s` old."""
    tag = trial.user_attrs.get(SESSION_ATTR)
    if tag and _on_this_host(tag):
        return session_dead(tag)
    started = trial.datetime_start.timestamp() if trial.datetime_start is not None else now
    last = float(trial.user_attrs.get(HEARTBEAT_ATTR, started)) if tag else started
    return now - last > grace_s


def reap(study: optuna.Study, store: optuna.storages.BaseStorage, grace_s: float = 60.0) -> list[int]:
    """Fail and re-queue the running trials whose session died (see `_dead`); returns their numbers."""
    now = time.time()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead(t, now, grace_s):
            continue
        tid = stored_trial_id(store, study, t.number)
        try:
            if store.set_trial_state_values(tid, state=TrialState.FAIL):
                retry(study, store.get_trial(tid))
                reaped.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another session reaped it first (or it just finished)
    return sorted(reaped)


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards `trials=`: it completed, was pruned, or really failed."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs)


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards `trials=` (see `counted`), by number."""
    return [t for t in study.get_trials(deepcopy=False) if counted(t)]


def to_run(study: optuna.Study, total: int) -> int:
    """Trials still to start for a budget of `total`: counted and running trials (any session's) are taken."""
    trials = study.get_trials(deepcopy=False)
    return total - sum(counted(t) for t in trials) - sum(t.state == TrialState.RUNNING for t in trials)


class Heartbeat:
    """Stamps one running trial's `HEARTBEAT_ATTR` (epoch seconds) every `interval_s` through the
    storage's public API, so sessions on other hosts see the trial is alive. Every Optuna storage
    takes user attributes, so journal storages get heartbeats too."""

    def __init__(self, store: optuna.storages.BaseStorage, trial_id: int, interval_s: float):
        self._store, self._id, self._interval = store, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _stamp(self) -> bool:
        try:
            self._store.set_trial_user_attr(self._id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # told (or reaped) between two beats
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self._interval) and self._stamp():
            pass

    def __enter__(self) -> Heartbeat:
        self._stamp()  # alive from the start, before another session's next look
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def budget(study: optuna.Study, store: optuna.storages.BaseStorage, total: int, folder: Path,
           grace_s: float = 60.0) -> Iterator[bool | None]:
    """Under the folder lock, with dead sessions' trials re-queued: whether a trial should start now.
    True (budget left, or a re-queued trial waits), None (the rest of the budget is running in other
    sessions: look again later), False (the budget is met). Ask the trial inside the block, so that
    counting and asking are one step for every session sharing the folder."""
    with folder_lock(folder):
        reap(study, store, grace_s)
        trials = study.get_trials(deepcopy=False)
        if sum(counted(t) for t in trials) >= total:
            yield False
        elif to_run(study, total) > 0 or any(t.state == TrialState.WAITING for t in trials):
            yield True
        else:
            yield None


def claim(study: optuna.Study, store: optuna.storages.BaseStorage, total: int, folder: Path, poll_s: float,
          grace_s: float = 60.0) -> optuna.Trial | None:
    """The next trial of the budget, asked and tagged with this session; None once the budget is met.

    Counting the budget and asking happen under the folder lock (`budget`), so sessions sharing the
    search folder never start more than `total` trials between them. (Sessions on other machines that
    share only a storage URL count without that lock and may overshoot by one trial each at the end.)
    While other sessions' trials hold the rest of the budget, this waits `poll_s` between looks: one
    of them may die and be re-queued here.
    """
    while True:
        with budget(study, store, total, folder, grace_s) as work:
            if work:
                with quiet():
                    trial = study.ask()
                trial.set_user_attr(SESSION_ATTR, session_tag())
                return trial
        if work is False:
            return None
        time.sleep(poll_s)


# -- opening a search's study --------------------------------------------------------------------------
def open_study(folder: Path, url: str | None, name: str, objectives: Sequence[str], settings: Mapping[str, Any],
               search: Mapping[str, Any], constrained: bool, seeds: Sequence[Mapping[str, Any]] = (),
               first_start: Callable[[optuna.Study], Any] | None = None) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create or load study `name` and check that a loaded one fits `settings`.

    Under the folder lock: the storage and study are created, the objectives named, the search id
    set, the seed points enqueued (first start only) and this session registered (its index seeds
    its sampler).

    Args:
        url: `search.storage` (None = `<folder>/study.db`).
        settings: what a resume must not change (model, steps, space, objectives, sample count...).
        search: the `search` config (sampler, seed, startup_trials, population_size).
        seeds: parameter sets to try first.
        first_start: called with a new study (no trials yet), under the lock, after `seeds` are
            enqueued: what else a first start enqueues (the search's seeding, calibration included).

    Raises:
        ConfigError: the folder holds this study with other settings, or another storage.
    """
    import uuid

    directions = [direction(m) for m in objectives]
    with folder_lock(folder):
        store = make_storage(resolve_url(folder, url))
        study = optuna.create_study(storage=store, study_name=name, directions=directions, load_if_exists=True)
        stored = study.user_attrs.get(SETTINGS)
        if stored is None:
            study.set_user_attr(SETTINGS, dict(settings))
        elif stored != dict(settings):
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ConfigError(resume_refusal(name, stored, settings) or
                              f"search {name!r} was started with other settings ({', '.join(changed)}); "
                              f"resume it with the same settings or start a new search with name=")
        if study.metric_names != list(objectives):
            with quiet():
                study.set_metric_names(list(objectives))
        if SEARCH_ID not in study.user_attrs:
            study.set_user_attr(SEARCH_ID, uuid.uuid4().hex)
        if not study.trials:
            for seed in seeds:
                study.enqueue_trial(dict(seed), skip_if_exists=True)
            if first_start is not None:
                first_start(study)
        index = sum(k.startswith("session.") for k in study.user_attrs)
        study.set_user_attr(f"session.{index}", session_tag())
        n_before = len(study.trials)
    study.sampler = make_sampler(search, int(search["seed"]) + n_before + SESSION_SEED_STRIDE * index, constrained)
    return study, store
