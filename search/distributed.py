"""Parallel trials on Ray: a driver that owns the study, one fresh worker process per trial.

The shape (see DESIGN.md, "Known pitfalls"):

    driver (this process)                         Ray workers (any machine of the cluster)
    ---------------------                         ----------------------------------------
    study.ask() -> sample the configs
    launch one task per trial  ------------------> fresh process (max_calls=1): train
    mailbox actor <---- (epoch, value) ---------- reporter(epoch, value)
    trial.report / should_prune --- prune? -----> raises PruneRequested when told to
    study.tell(outcome) <------- TrialOutcome --- returns COMPLETE / PRUNED / FAIL

The driver is the only process that writes to the study's storage, so SQLite sees one writer
wherever the workers run, and `agesearch report` / optuna-dashboard can read the file (WAL) at
any time. Nothing else may run the same study while a driver does: a trial found RUNNING when
the driver starts was left by a driver that died, and is failed and retried.

Ray is imported only in this module, inside functions, so that the sequential search works
without it installed.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.objective import COMPLETE, PRUNED, TrialOutcome

INSTALL_HINT = 'Ray is not installed; install it with: pip install "agesearch[ray]"'

# Set in every worker (Ray's runtime_env): packed trials must not grab a whole GPU each.
# Fractional GPUs in Ray are bookkeeping only; these make TF, JAX and torch allocate lazily.
GPU_MEMORY_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}

# Storage calls that fail this way are retried: a locked or briefly unreachable database.
RETRY_ATTEMPTS = 6


from agesearch.search.errors import DistributedError  # noqa: E402  (raised here, caught by the CLI)


def import_ray():
    """Import Ray, or fail with the install hint."""
    try:
        import ray
    except ImportError:
        raise DistributedError(INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------------------------------------
# Ray runtime


def _enable_token_auth_for_address(address: str) -> None:
    """Turn on Ray token authentication for an explicit cluster address when a token is here.

    Ray 2.60 does this by itself only for `address="auto"`; a driver given `host:port` is
    refused with InvalidAuthToken unless RAY_AUTH_MODE=token is set before `ray.init`.
    An explicit RAY_AUTH_MODE (e.g. "disabled") is respected.
    """
    if address in ("auto", "local") or os.environ.get("RAY_AUTH_MODE"):
        return
    try:  # Ray's own check: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: the same rule by hand
        token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if os.environ.get("RAY_AUTH_TOKEN") or (token_path and Path(token_path).is_file()) or (Path.home() / ".ray" / "auth_token").is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextmanager
def ray_runtime(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the length of the block and yield the `ray` module.

    - Ray already initialised in this process (a notebook, a test): used as it is and left
      running.
    - `address` given ("auto", "HOST:PORT", "ray://HOST:PORT"): joins that cluster; leaving
      the block disconnects this driver and leaves the cluster running.
    - Otherwise: starts a local runtime with `num_cpus` CPU slots and shuts it down after.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        # Workers' TensorFlow start-up chatter would bury the progress line; it stays in the
        # session's logs (/tmp/ray/session_latest/logs on the worker's machine).
        log_to_driver=False,
        logging_level="WARNING",
    )
    if address:
        _enable_token_auth_for_address(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError, ...
            text = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = ""
            if "auth" in text.lower() or "token" in text.lower():
                hint = " (the cluster wants its token: run `ray get-auth-token` on the head node and put it in ~/.ray/auth_token or RAY_AUTH_TOKEN here)"
            raise DistributedError(f"cannot join the Ray cluster at {address}: {text}{hint}") from None
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The mailbox: epoch reports from the workers to the driver and the prune answers back.
# Ray has no request/reply channel from a task to its driver; an async actor gives one: the
# worker awaits `report`, the driver long-polls `take` and resolves the answers.


class _Mailbox:
    """Async Ray actor (made remote in `_mailbox_actor`); all methods run on one event loop."""

    def __init__(self) -> None:
        self.inbox: list[tuple] = []
        self.waiting: dict[tuple[int, int], asyncio.Future] = {}
        self.arrived = asyncio.Event()

    async def started(self, number: int, pid: int, host: str) -> None:
        self._post(("started", number, pid, host))

    async def report(self, number: int, epoch: int, value: float) -> bool:
        answer = asyncio.get_running_loop().create_future()
        self.waiting[(number, epoch)] = answer
        self._post(("report", number, epoch, value))
        return await answer

    async def take(self, timeout: float) -> list[tuple]:
        """The messages that arrived, waiting up to `timeout` seconds for the first one."""
        if not self.inbox:
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        out, self.inbox = self.inbox, []
        self.arrived.clear()
        return out

    async def answer(self, answers: list[tuple[int, int, bool]]) -> None:
        for number, epoch, prune in answers:
            fut = self.waiting.pop((number, epoch), None)
            if fut is not None and not fut.done():
                fut.set_result(prune)

    async def forget(self, number: int) -> None:
        """Drop a dead trial's unanswered report."""
        for key in [k for k in self.waiting if k[0] == number]:
            self.waiting.pop(key).cancel()

    def _post(self, message: tuple) -> None:
        self.inbox.append(message)
        self.arrived.set()


def _mailbox_actor(ray):
    # num_cpus=0: the mailbox must never take a slot a trial could use.
    return ray.remote(num_cpus=0, max_restarts=0)(_Mailbox).remote()


def _worker_main(work: Callable, number: int, payload: Any, data: Any, mailbox, report: bool) -> TrialOutcome:
    """The body of one Ray task: say where it runs, then run `work` with a mailbox reporter."""
    import ray

    # Awaited so that the driver knows the worker (pid, host) before training starts.
    ray.get(mailbox.started.remote(number, os.getpid(), socket.gethostname()))

    def reporter(epoch: int, value: float) -> bool:
        return ray.get(mailbox.report.remote(number, epoch, float(value)))

    return work(payload, data, reporter if report else None)


# ---------------------------------------------------------------------------------------------
# Work functions: what a worker runs for one trial. Module-level so Ray pickles them by name.


@dataclass(frozen=True)
class TrainPayload:
    """One agesearch trial as it travels to a worker."""

    model_cfg: Any  # ModelConfig
    train_cfg: Any  # TrainConfig
    multi: bool
    model_path: str | None  # absolute; on the worker's machine


def train_work(payload: TrainPayload, data, reporter) -> TrialOutcome:
    """Train one sampled config (in a fresh worker process); never raises for a trial failure."""
    from agesearch.search.objective import train_configs  # imports Keras, in the worker only

    if payload.model_path is not None:
        Path(payload.model_path).parent.mkdir(parents=True, exist_ok=True)
    return train_configs(payload.model_cfg, payload.train_cfg, data, reporter, multi=payload.multi, model_path=payload.model_path)


def sleep_work(payload: dict, data, reporter) -> TrialOutcome:
    """A trial without Keras for load tests of the driver and storage: `steps` reports.

    `payload`: {"x": float, "steps": int, "seconds": float per step, "crash": bool}.
    """
    value = 0.0
    for step in range(payload.get("steps", 5)):
        time.sleep(payload.get("seconds", 0.0))
        value = (payload["x"] - 0.3) ** 2 + 1.0 / (step + 1)
        if reporter is not None and reporter(step, value):
            return TrialOutcome(PRUNED, None, {"pruned_at_epoch": step})
    if payload.get("crash"):
        os._exit(1)  # like a SIGKILL'd worker: no exception, the process is gone
    return TrialOutcome(COMPLETE, [value], {"objective": value, "pid": os.getpid()})


# ---------------------------------------------------------------------------------------------
# Storage calls with retries


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError)


def _retry(call: Callable[[int], Any], what: str) -> Any:
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


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class _Running:
    trial: optuna.Trial
    started: float
    pid: int | None = None
    host: str | None = None


@dataclass
class DriveStats:
    """What one `drive` call did (this run only) and how the study stands after it."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0  # failed trials whose parameters were enqueued again
    finished: int = 0  # the study's finished_count at the end
    seconds: float = 0.0
    interrupted: bool = False
    reports: int = 0  # epoch reports received
    trial_numbers: list[int] = field(default_factory=list)


def fail_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial, reason: str, *, max_retries: int) -> tuple[FrozenTrial, bool]:
    """Tell a trial FAIL with `fail_reason`, and enqueue its parameters again if retries are left.

    The retry is Optuna's own RetryHeartbeatStaleTrialCallback (system attrs `failed_trial`,
    `retry_history`, which `finished_count` reads) with user attrs `retry_of` (the failed
    trial's number) and `retry_count` (1 for the first retry). Returns (frozen trial, retried).
    """
    if isinstance(trial, FrozenTrial):
        # A trial of a dead driver: only its id is known. Trial(study, id) is Optuna's public
        # constructor; `_trial_id` is the one private field needed to reach it.
        trial = optuna.Trial(study, trial._trial_id)  # noqa: SLF001
    _retry(lambda a: trial.set_user_attr("fail_reason", reason[:500]), "set fail_reason")
    frozen = _retry(lambda a: study.tell(trial, state=TrialState.FAIL, skip_if_finished=a > 0), f"tell trial {trial.number} FAIL")
    history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    retry_count = len(history) + 1
    if retry_count > max_retries:
        return frozen, False
    view = copy.copy(frozen)  # the callback copies user attrs: give the retry its own
    view.user_attrs = {"retry_of": frozen.number, "retry_count": retry_count}
    _retry(lambda a: RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, view), f"re-enqueue trial {frozen.number}")
    return frozen, True


def fail_stale_trials(study: optuna.Study, *, max_retries: int, progress: Callable[[str], None] = print) -> int:
    """Fail (and retry) every RUNNING trial of the study: left by a driver that died.

    Assumes this driver owns the study: no other process runs trials of it right now.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        _, retried = fail_trial(study, t, "left RUNNING by an earlier driver that stopped (killed or crashed)", max_retries=max_retries)
        progress(f"trial {t.number:>4} FAIL     left RUNNING by an earlier run{'; its parameters are enqueued again' if retried else ''}")
    return len(stale)


def drive(
    study: optuna.Study,
    *,
    sample: Callable[[optuna.Trial], Any],
    work: Callable[[Any, Any, Any], TrialOutcome],
    data: Any,
    n_trials: int,
    workers: int,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_retries: int = 1,
    timeout: float | None = None,
    fresh_process: bool = True,
    env: dict[str, str] | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    report_epochs: bool = True,
    progress: Callable[[str], None] = print,
) -> DriveStats:
    """Run trials on Ray (already initialised) until the study holds `n_trials` finished ones.

    Args:
        study: the study; this driver is its only writer while it runs.
        sample: on the driver, `sample(trial) -> payload` (suggests the parameters).
        work: in a worker, `work(payload, data, reporter) -> TrialOutcome`; module-level.
        data: put once in Ray's object store and handed to every trial.
        n_trials: the study's total of finished trials (`finished_count`) to reach.
        workers: most trials in flight at once.
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (fractions allowed).
        max_retries: how often a trial whose worker died is run again with the same params.
        timeout: seconds after which no new trial starts (running ones finish).
        fresh_process: one worker process per trial (`max_calls=1`); TF needs it.
        env: environment variables of the workers (Ray runtime_env).
        callbacks: Optuna-style `(study, frozen_trial)` calls after each trial is told.
        report_epochs: send each epoch's value to the study (single-objective only).
        progress: where progress lines go.

    Ctrl-C fails the running trials (and enqueues them again within `max_retries`) and
    re-raises KeyboardInterrupt.
    """
    import ray

    from agesearch.search.study import finished_count

    start = time.monotonic()
    stats = DriveStats()
    fail_stale_trials(study, max_retries=max_retries, progress=progress)
    finished = finished_count(study)
    counts = {s: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False, states=tuple(counts)):
        counts[t.state] += 1
    single = len(study.directions) == 1
    minimize = study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    best: tuple[float, int] | None = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = _better(best, t, single, minimize)

    remote = ray.remote(
        num_cpus=cpus_per_trial,
        num_gpus=gpus_per_trial,
        max_calls=1 if fresh_process else 0,
        # A dead worker must come back to the driver as an error, for the study to record the
        # FAIL and enqueue a new trial; Ray's own task retry would hide it.
        max_retries=0,
        retry_exceptions=False,
        runtime_env={"env_vars": dict(env or {})},
    )(_worker_main)
    mailbox = _mailbox_actor(ray)
    data_ref = ray.put(data)  # once: every trial reads the same object-store copy
    report = report_epochs and single

    running: dict[Any, _Running] = {}
    by_number: dict[int, _Running] = {}
    take_ref = mailbox.take.remote(1.0)
    last_line = ""

    def show() -> None:
        nonlocal last_line
        b = f"best {best[0]:.4f} (#{best[1]})" if best else "no best yet"
        line = (
            f"[{_clock(time.monotonic() - start)}] {finished}/{n_trials} finished: "
            f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed, {len(running)} running; {b}"
        )
        if line.split("] ", 1)[1] != last_line:  # print on change only, not every tick
            last_line = line.split("] ", 1)[1]
            progress(line)

    def launch() -> None:
        with warnings.catch_warnings():
            # The CLI's storage has heartbeats for the sequential path; ask/tell trials have
            # none, and a dead worker is handled here instead (Optuna warns about exactly that).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = _retry(lambda a: study.ask(), "ask")
        try:
            payload = sample(trial)
        except Exception as e:  # a space that cannot sample: the trial fails, the search goes on
            frozen = _retry(lambda a: study.tell(trial, state=TrialState.FAIL, skip_if_finished=a > 0), "tell FAIL")
            finish_bookkeeping(frozen, retried=False)
            progress(f"trial {trial.number:>4} FAIL     sampling failed: {type(e).__name__}: {e}")
            return
        ref = remote.remote(work, trial.number, payload, data_ref, mailbox, report)
        r = _Running(trial, time.monotonic())
        running[ref] = r
        by_number[trial.number] = r
        stats.trial_numbers.append(trial.number)

    def finish_bookkeeping(frozen: FrozenTrial, *, retried: bool) -> None:
        nonlocal finished, best
        counts[frozen.state] += 1
        if not retried:
            finished += 1
        if frozen.state == TrialState.COMPLETE:
            best = _better(best, frozen, single, minimize)
        for cb in callbacks:
            cb(study, frozen)

    def handle_messages(messages: list[tuple]) -> None:
        answers = []
        for m in messages:
            r = by_number.get(m[1])
            if m[0] == "started":
                if r is not None:
                    r.pid, r.host = m[2], m[3]
                    trial = r.trial
                    _retry(lambda a: trial.set_user_attr("worker", {"pid": m[2], "host": m[3]}), "set worker")
                continue
            _, number, epoch, value = m
            stats.reports += 1
            prune = False
            if r is not None:
                trial = r.trial
                _retry(lambda a: trial.report(value, step=epoch), "report")
                prune = _retry(lambda a: trial.should_prune(), "should_prune")
            answers.append((number, epoch, bool(prune)))
        if answers:
            mailbox.answer.remote(answers)

    def handle_done(ref) -> None:
        r = running.pop(ref)
        by_number.pop(r.trial.number, None)
        trial = r.trial
        try:
            outcome: TrialOutcome = ray.get(ref)
        except ray.exceptions.RayError as e:
            # The worker died (SIGKILL, out of memory, node lost) or the task could not run.
            mailbox.forget.remote(trial.number)
            reason = f"worker died: {_ray_reason(e)}"
            frozen, retried = fail_trial(study, trial, reason, max_retries=max_retries)
            stats.failed += 1
            stats.retried += retried
            finish_bookkeeping(frozen, retried=retried)
            progress(f"trial {trial.number:>4} FAIL     {reason}{'; its parameters are enqueued again' if retried else ''}")
            return
        for key, value in outcome.user_attrs.items():
            _retry(lambda a: trial.set_user_attr(key, value), f"set {key}")
        if outcome.state == COMPLETE:
            frozen = _retry(lambda a: study.tell(trial, outcome.values, skip_if_finished=a > 0), "tell COMPLETE")
            stats.complete += 1
        elif outcome.state == PRUNED:
            frozen = _retry(lambda a: study.tell(trial, state=TrialState.PRUNED, skip_if_finished=a > 0), "tell PRUNED")
            stats.pruned += 1
        else:  # the trial's own failure (NaN, out of memory): not retried, it would fail again
            frozen = _retry(lambda a: study.tell(trial, state=TrialState.FAIL, skip_if_finished=a > 0), "tell FAIL")
            stats.failed += 1
        finish_bookkeeping(frozen, retried=False)

    try:
        while True:
            out_of_time = timeout is not None and time.monotonic() - start > timeout
            while not out_of_time and len(running) < workers and finished + len(running) < n_trials:
                launch()
            show()
            if not running:
                break
            ready, _ = ray.wait([take_ref, *running], num_returns=1, timeout=None)
            if take_ref in ready:
                # Reports first: a worker returns only after its last report was answered.
                handle_messages(ray.get(take_ref))
                take_ref = mailbox.take.remote(1.0)
            for ref in ready:
                if ref in running:
                    handle_done(ref)
            show()
    except KeyboardInterrupt:
        stats.interrupted = True
        for ref, r in list(running.items()):
            ray.cancel(ref, force=True)
            frozen, retried = fail_trial(study, r.trial, "interrupted (Ctrl-C)", max_retries=max_retries)
            stats.failed += 1
            stats.retried += retried
            finish_bookkeeping(frozen, retried=retried)
        running.clear()
        show()
        raise
    finally:
        stats.seconds = time.monotonic() - start
        stats.finished = finished
        ray.kill(mailbox)
    return stats


def _better(best: tuple[float, int] | None, t: FrozenTrial, single: bool, minimize: bool) -> tuple[float, int] | None:
    """Best so far: the value for single-objective studies, the combined objective otherwise."""
    value = t.values[0] if single and t.values else t.user_attrs.get("objective")
    if value is None or not math.isfinite(value):
        return best
    if best is None or (value < best[0] if (minimize or not single) else value > best[0]):
        return (float(value), t.number)
    return best


def _ray_reason(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# ---------------------------------------------------------------------------------------------
# The agesearch entry point


def worker_env(cache_dir: Path | None) -> dict[str, str]:
    """The environment of the workers: GPU memory set-up, Keras backend, cache folder."""
    import keras

    from agesearch.search.data import default_cache_dir

    env = dict(GPU_MEMORY_ENV)
    env["KERAS_BACKEND"] = keras.config.backend()
    env["AGESEARCH_CACHE_DIR"] = str(Path(cache_dir or default_cache_dir()).expanduser().resolve())
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_distributed(
    study: optuna.Study,
    space,
    data,
    *,
    n_trials: int,
    image_size: int,
    epochs: int,
    multi: bool,
    workers: int = 1,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
    address: str | None = None,
    max_retries: int = 1,
    timeout: float | None = None,
    models_dir: Path | None = None,
    cache_dir: Path | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    progress: Callable[[str], None] = print,
) -> DriveStats:
    """`agesearch run --workers N / --address`: the search's trials on Ray.

    Starts a local Ray runtime (or joins `address`), runs trials until the study holds
    `n_trials` finished ones, and leaves Ray as it found it. Completed trials' models are
    written by the worker to `models_dir/trial-N.keras` (an absolute path: on a cluster, the
    file lands on the worker's machine under that path unless the folder is shared), and the
    callbacks (BestModelKeeper, a progress line) run on the driver after each trial.

    Raises:
        DistributedError: Ray missing, cluster unreachable, resources the cluster lacks.
    """
    from agesearch.search.objective import sample_configs

    local_cpus = max(os.cpu_count() or 1, math.ceil(workers * cpus_per_trial))
    with ray_runtime(address, num_cpus=local_cpus) as ray:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if gpus >= 1 else 0.0
        if gpus_per_trial > gpus:
            raise DistributedError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs")
        if cpus_per_trial > resources.get("CPU", 0.0):
            raise DistributedError(f"--cpus-per-trial {cpus_per_trial:g} but the Ray cluster has {resources.get('CPU', 0.0):g} CPUs")
        where = f"Ray cluster at {address}" if address else "local Ray runtime"
        progress(
            f"ray: {where} with {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs; up to {workers} trials at once, "
            f"{cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU each, retries {max_retries}"
        )
        directory = None if models_dir is None else Path(models_dir).resolve()

        def sample(trial: optuna.Trial) -> TrainPayload:
            model_cfg, train_cfg = sample_configs(trial, space, image_size, epochs)
            path = None if directory is None else str(directory / f"trial-{trial.number}.keras")
            return TrainPayload(model_cfg, train_cfg, multi, path)

        return drive(
            study,
            sample=sample,
            work=train_work,
            data=data,
            n_trials=n_trials,
            workers=workers,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_retries=max_retries,
            timeout=timeout,
            env=worker_env(cache_dir),
            callbacks=callbacks,
            report_epochs=not multi,
            progress=progress,
        )
