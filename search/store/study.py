"""Study storage: SQLite (WAL on) under studies/, created and loaded only through Optuna.

Also the study-level rules every command shares: which trial is "the best" (`ranked`, the one
rule for the best trial, and `best_trial`, its head), how many trials count toward `--n-trials`
(`finished_count`, `active_count`), storage calls that retry transient errors (`with_retries`),
the baseline trials of a new study, and which study `report` and `dashboard` read without
--study (`only_study_file`, `only_study`).
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.errors import StorageError, StudyMismatch, UsageError  # noqa: F401  (raised here, caught by the CLI)

STUDIES_DIR = Path("studies")
META_KEY = "agesearch"
# Keys of the study's metadata that must match when a study is resumed.
# "seed" is the data seed (split, subset); the sampler's seed may differ between runs.
MUST_MATCH = ("space", "space_version", "objective", "fingerprint", "images", "image_size", "split", "split_method", "seed")
# Study user attr set once the presets were enqueued, so that a resume never enqueues again.
BASELINES_KEY = "baselines_enqueued"
# Storage calls that fail transiently are retried this many times in all.
RETRY_ATTEMPTS = 6


def default_storage(study_name: str, studies_dir: Path = STUDIES_DIR) -> str:
    return f"sqlite:///{studies_dir / (study_name + '.db')}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL, None for other databases and in-memory SQLite."""
    u = sqlalchemy.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


def check_storage_url(url: str) -> None:
    """Fail with one line for a URL SQLAlchemy cannot parse or whose driver is missing."""
    try:
        u = sqlalchemy.engine.make_url(url)
        u.get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise StorageError(f"bad storage URL {url!r}: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise StorageError(f"storage URL {url!r} needs a database driver that is not installed: {e}") from None
    path = sqlite_path(url)
    if path is not None and path.exists() and not path.is_file():
        raise StorageError(f"bad storage URL {url!r}: {path} is not a file")
    if path is not None:
        folder = next((p for p in path.absolute().parents if p.exists()), None)
        if folder is not None and not folder.is_dir():
            raise StorageError(f"bad storage URL {url!r}: {folder} is a file, not a folder")


HEARTBEAT_ENV = "AGESEARCH_HEARTBEAT_SECONDS"


def heartbeat_seconds() -> int:
    """Seconds between a running trial's heartbeats (default 10); a trial is stale after 3 of them.

    `AGESEARCH_HEARTBEAT_SECONDS` sets it: shorter finds a killed process's trials sooner (the
    tests use 2), longer suits a busy shared database.
    """
    raw = os.environ.get(HEARTBEAT_ENV, "10")
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise StorageError(f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, not {raw!r}")
    return seconds


def open_storage(url: str, *, heartbeat: bool = True, create_dirs: bool = True, max_retry: int = 1) -> RDBStorage:
    """An RDB storage; SQLite files get WAL (readers never block the writer) and a busy timeout.

    With `heartbeat`, a trial whose process died (SIGKILL) is failed after the grace period
    and re-enqueued up to `max_retry` times by Optuna's RetryHeartbeatStaleTrialCallback.
    """
    check_storage_url(url)
    path = sqlite_path(url)
    created = False
    engine_kwargs: dict = {}
    if path is not None:
        if not path.parent.exists():
            if not create_dirs:
                raise StorageError(f"no study database at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        try:
            with sqlite3.connect(path, timeout=60) as con:
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise StorageError(f"cannot open {path} as SQLite: {e}") from None
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict = {}
    if heartbeat:
        interval = heartbeat_seconds()
        kwargs = dict(
            heartbeat_interval=interval,
            grace_period=3 * interval,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=False),
        )
    try:
        for attempt in range(5):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
                # Another process is making the same new database's tables right now (two
                # `agesearch run` started together): once it has, opening it again works.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except Exception as e:
        if created and path is not None:
            path.unlink(missing_ok=True)
        raise StorageError(f"cannot open storage {url!r}: {str(e).splitlines()[0]}") from None


def study_exists(storage: RDBStorage, name: str) -> bool:
    return name in optuna.get_all_study_names(storage)


def open_existing_storage(url: str, name: str | None = None) -> RDBStorage:
    """The storage of an existing study database, for reading: never creates a file, and
    runs no heartbeat, so a reader (report, export, dashboard) never fails a live search's trials."""
    check_storage_url(url)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StorageError(f"no study database at {path}; run `agesearch run --study {name or path.stem} ...` first")
    return open_storage(url, heartbeat=False, create_dirs=False)


def missing_study(storage: RDBStorage, name: str, url: str) -> StorageError:
    names = ", ".join(optuna.get_all_study_names(storage)) or "none"
    return StorageError(f"no study named {name!r} in {url} (studies there: {names})")


def only_study_file(studies_dir: Path = STUDIES_DIR) -> Path:
    """The only studies/*.db there is: what a command that reads a study opens without --study.

    Raises:
        UsageError: none or several, naming those there, in one line.
    """
    found = sorted(studies_dir.glob("*.db"))
    if len(found) != 1:
        names = ", ".join(p.stem for p in found) or "none"
        raise UsageError(f"pass --study NAME or --storage URL (study files in {studies_dir}/: {names})")
    return found[0]


def only_study(storage: str | None, studies_dir: Path = STUDIES_DIR) -> tuple[str, str]:
    """(name, url) of the only study there is: in --storage when given, else in the only
    studies/*.db (`only_study_file`).

    Raises:
        UsageError: no study file, or several files or studies to choose from (one line naming them).
        StorageError: an unusable storage.
    """
    url = storage or default_storage(only_study_file(studies_dir).stem, studies_dir)
    names = sorted(optuna.get_all_study_names(open_existing_storage(url)))
    if len(names) != 1:
        raise UsageError(f"pass --study NAME (studies in {url}: {', '.join(names) or 'none'})")
    return names[0], url


def load_existing(name: str, url: str) -> optuna.Study:
    """Load a study that must already exist; StorageError (one line) otherwise."""
    storage = open_existing_storage(url, name)
    if not study_exists(storage, name):
        raise missing_study(storage, name, url)
    return optuna.load_study(study_name=name, storage=storage)


def create_or_resume(
    name: str,
    storage: RDBStorage,
    *,
    directions: list[str],
    meta: dict,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """`create_study(load_if_exists=True)`, refusing to resume with other data or settings."""
    existing = None
    if study_exists(storage, name):
        existing = optuna.load_study(study_name=name, storage=storage)
        old = _recorded_meta(existing)
    if existing is not None and not old and not existing.get_trials(deepcopy=False):
        existing = None  # empty and never described (its maker stopped at once): adopt it
    if existing is not None:
        diffs = [f"{k}: study has {old.get(k)!r}, this run {meta.get(k)!r}" for k in MUST_MATCH if old.get(k) != meta.get(k)]
        if [d.name.lower() for d in existing.directions] != directions:
            diffs.insert(0, f"directions: study has {[d.name.lower() for d in existing.directions]}, this run {directions}")
        if diffs:
            if old.get("space_version") != meta.get("space_version"):
                diffs.append("the space's parameters changed since (Optuna cannot resume a study whose choices changed)")
            if old.get("seed") != meta.get("seed"):
                diffs.append("--seed fixes the data split; --sampler-seed draws other parameters on the same split")
            raise StudyMismatch(f"study {name!r} was made with other settings ({'; '.join(diffs)}); use another --study name")
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr(META_KEY, meta)
    return study


def _recorded_meta(study: optuna.Study, wait: float = 30.0) -> dict:
    """The study's metadata; a study that another process has just made gets it a moment
    later (create_study, then set_user_attr), so wait for it rather than call it a mismatch."""
    deadline = time.monotonic() + wait
    while META_KEY not in study.user_attrs and not study.get_trials(deepcopy=False) and time.monotonic() < deadline:
        time.sleep(0.2)
    return study.user_attrs.get(META_KEY, {})


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward --n-trials: complete, pruned, and failed ones not being retried."""
    trials = study.get_trials(deepcopy=False)
    # Every trial in a retry chain but the last is replaced by its retry.
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in retried)
    )


def active_count(study: optuna.Study) -> int:
    """Trials that hold a place toward --n-trials: finished ones and those running now (in
    this process or another), so several processes on one study stop at the study's total."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return finished_count(study) + len(running)


def enqueue_baselines(study: optuna.Study, baselines: list[tuple[str, dict]]) -> int:
    """Enqueue the presets as the first trials of a NEW study (no trials yet), once.

    A resume (the study has trials, or recorded `baselines_enqueued`) enqueues nothing.
    Returns how many were enqueued.
    """
    if BASELINES_KEY in study.user_attrs or study.get_trials(deepcopy=False):
        return 0
    for name, params in baselines:
        study.enqueue_trial(params, user_attrs={"preset": name}, skip_if_exists=True)
    study.set_user_attr(BASELINES_KEY, [name for name, _ in baselines])
    return len(baselines)


def _transient_errors() -> tuple[type[BaseException], ...]:
    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)


def with_retries(call: Callable[[int], Any], what: str) -> Any:
    """Run `call(attempt)`, retrying transient storage errors with backoff.

    Optuna's RDBStorage rolls a failed call back but does not retry it; a SQLite file that is
    locked for longer than the busy timeout (a reader's checkpoint, NFS) or a remote database
    that drops a connection should not cost a trial.
    """
    errors = _transient_errors()
    delay = 0.2
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call(attempt)
        except errors as e:
            if attempt == RETRY_ATTEMPTS - 1:
                raise
            print(f"storage: {what} failed ({type(e).__name__}); retrying in {delay:.1f}s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


# --- ranking: the one rule for the best trial, and the scalar it ranks by ---------------------

def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1

def minimizes(study: optuna.Study) -> bool:
    """Whether a lower ranking scalar is better (the combined objective always is)."""
    return is_multi(study) or study.direction == optuna.study.StudyDirection.MINIMIZE

def objective_of(study: optuna.Study):
    """The scalar that plots and tables rank trials by, as Optuna's `target`, and its name.

    Single-objective studies use the trial's value (Optuna's default, target=None). A
    multi-objective study ranks by the combined objective every trial records as a user attr,
    so that Optuna's single-target plots still apply to it.
    """
    if not is_multi(study):
        return None, "objective"
    return (lambda t: scalar(t, study)), "combined objective"

def scalar(trial: FrozenTrial, study: optuna.Study) -> float:
    """The ranking scalar of a trial (NaN unless COMPLETE)."""
    if trial.state != TrialState.COMPLETE:
        return math.nan
    if is_multi(study):
        v = trial.user_attrs.get("objective")
        return float(v) if isinstance(v, (int, float)) else math.nan
    return float(trial.value)

def ranked(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The one rule for the best trial: the COMPLETE trials of `trials` (default: the study's),
    best first. Every other "best" (`best_trial`, `best_trials`, the best preset, the best stored
    model, the models `KeepBestModels` keeps, the ensemble's candidates, the top-10 table) is
    the head of this list.

    1. Feasible before infeasible (Optuna's constraints: feasible when every value is <= 0), as
       Optuna's `best_trial` and `best_trials` choose.
    2. By the ranking scalar (`scalar`) in the study's direction: the value for one objective;
       for several, the combined objective (user attr `objective`, lower is better). It rises
       with age MAE and falls with gender accuracy, so a dominated trial always ranks below the
       trial that dominates it: the first of any set is on that set's Pareto front. A trial
       without a finite combined objective ranks after those with one.
    3. Ties by trial number, the earlier first.

    Reads only `get_trials` and `directions`, so it also ranks the bracket view of the study
    that HyperbandPruner shows the sampler (which has no `best_trial`).
    """
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = 1 if minimizes(study) else -1
    multi = is_multi(study)

    def key(t: FrozenTrial) -> tuple:
        s = scalar(t, study)
        unscored = not math.isfinite(s) if multi else math.isnan(s)
        return (any(v > 0 for v in t.constraints.values()), unscored, 0.0 if unscored else sign * s, t.number)

    return sorted((t for t in trials if t.state == TrialState.COMPLETE), key=key)

def best_trial(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The best trial (of `trials`, default the study's): the first of `ranked`, the one rule for
    the best trial; None before any is COMPLETE. Multi-objective: the Pareto-front trial with the
    lowest combined objective, so that one model can be named best either way."""
    return next(iter(ranked(study, trials)), None)

def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (multi-objective, Optuna's
    `best_trials`: the feasible front), in the order of `ranked`, so that the first is
    `best_trial`; [] before any trial is COMPLETE."""
    top = ranked(study)
    if not is_multi(study):
        return top[:1]
    front = {t.number for t in study.best_trials}
    return [t for t in top if t.number in front] or top[:1]
