"""Parallel trials on Ray: a driver that owns the study, one fresh worker process per trial.

The shape (see DESIGN.md, "Known pitfalls"):

    driver (this process)                         Ray workers (any machine of the cluster)
    ---------------------                         ----------------------------------------
    study.ask() -> sample the configs
    launch one task per trial  ------------------> fresh process (max_calls=1): train
    mailbox actor <---- (epoch, value) ---------- reporter(epoch, value)
    trial.report / should_prune --- prune? -----> raises PruneRequested when told to
    tell_outcome(...) <--------- TrialOutcome --- returns COMPLETE / PRUNED / FAIL

The driver is the only process that writes to the study's storage, so SQLite sees one writer
wherever the workers run, and `agesearch report` / optuna-dashboard can read the file (WAL) at
any time. Nothing else may run the same study while a driver does: a trial found RUNNING when
the driver starts was left by a driver that died, and is failed and retried.

Ray is imported only in this module, inside functions, so that the sequential search works
without it installed.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.errors import DistributedError  # raised here, caught by the CLI
from agesearch.search.study import best_trial, finished_count, with_retries
from agesearch.search.trial import (
    SearchInterrupted,
    TrialOutcome,
    exit_on_second_interrupt,
    fail_trial,
    interrupted_line,
    model_path,
    tell_outcome,
)

INSTALL_HINT = 'Ray is not installed; install it with: pip install "agesearch[ray]"'

# Set in every worker (Ray's runtime_env): packed trials must not grab a whole GPU each.
# Fractional GPUs in Ray are bookkeeping only; these make TF, JAX and torch allocate lazily.
GPU_MEMORY_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}


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
# The work of one agesearch trial in a worker. Module-level so Ray pickles it by name.


@dataclass(frozen=True)
class TrainPayload:
    """One agesearch trial as it travels to a worker."""

    model_cfg: Any  # ModelConfig
    train_cfg: Any  # TrainConfig
    multi: bool
    model_path: str | None  # absolute; on the worker's machine
    artifacts: str | None = None  # artifact store spec: the worker uploads the model there


def train_work(payload: TrainPayload, data, reporter) -> TrialOutcome:
    """Train one sampled config (in a fresh worker process); never raises for a trial failure."""
    from agesearch.search.trial import train_configs  # imports Keras, in the worker only

    if payload.model_path is not None:
        Path(payload.model_path).parent.mkdir(parents=True, exist_ok=True)
    return train_configs(payload.model_cfg, payload.train_cfg, data, reporter, multi=payload.multi, model_path=payload.model_path,
                          artifacts=payload.artifacts)


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


@dataclass(frozen=True)
class DriveOptions:
    """How a Driver runs trials; see `drive` for each field."""

    n_trials: int
    workers: int
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 1
    timeout: float | None = None
    fresh_process: bool = True
    env: dict[str, str] | None = None
    report_epochs: bool = True


def fail_stale_trials(study: optuna.Study, *, max_retries: int, progress: Callable[[str], None] = print) -> int:
    """Fail (and retry) every RUNNING trial of the study: left by a driver that died.

    Assumes this driver owns the study: no other process runs trials of it right now.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        _, retried = fail_trial(study, t, "left RUNNING by an earlier driver that stopped (killed or crashed)", max_retries=max_retries)
        progress(f"trial {t.number:>4} FAIL     left RUNNING by an earlier run{'; its parameters are enqueued again' if retried else ''}")
    return len(stale)


class Driver:
    """Owns the study while Ray workers train: a loop of named steps, its state in fields.

    `run()` repeats: `launch` trials up to the worker count, wait for Ray, then
    `on_reports` (epoch values -> pruner answers), `on_done` (a worker returned an outcome)
    or `on_worker_died`; Ctrl-C goes to `on_interrupt`. The shape of Ray Tune's
    `TuneController.step()`.
    """

    def __init__(self, study: optuna.Study, sample: Callable[[optuna.Trial], Any], work: Callable, data: Any,
                 options: DriveOptions, *, callbacks: Sequence[Callable] = (), on_epoch: Callable | None = None,
                 progress: Callable[[str], None] = print):
        import ray

        self.ray, self.study, self.sample, self.work, self.options = ray, study, sample, work, options
        self.callbacks, self.on_epoch, self.progress = list(callbacks), on_epoch, progress
        self.stats = DriveStats()
        self.start = time.monotonic()
        self.running: dict[Any, _Running] = {}  # Ray object ref -> trial
        self.by_number: dict[int, _Running] = {}
        self.single = len(study.directions) == 1
        self.counts = {s: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        self.best: tuple[float, int] | None = None
        self.last_line = ""
        self.remote = ray.remote(
            num_cpus=options.cpus_per_trial,
            num_gpus=options.gpus_per_trial,
            max_calls=1 if options.fresh_process else 0,
            # A dead worker must come back to the driver as an error, for the study to record the
            # FAIL and enqueue a new trial; Ray's own task retry would hide it.
            max_retries=0,
            retry_exceptions=False,
            runtime_env={"env_vars": dict(options.env or {})},
        )(_worker_main)
        self.mailbox = _mailbox_actor(ray)
        self.data_ref = ray.put(data)  # once: every trial reads the same object-store copy
        self.report = options.report_epochs and self.single

    def run(self) -> DriveStats:
        fail_stale_trials(self.study, max_retries=self.options.max_retries, progress=self.progress)
        self.finished = finished_count(self.study)
        for t in self.study.get_trials(deepcopy=False, states=tuple(self.counts)):
            self.counts[t.state] += 1
        self._update_best()
        take_ref = self.mailbox.take.remote(1.0)
        try:
            while True:
                while self._may_launch():
                    self.launch()
                self.show()
                if not self.running:
                    break
                ready, _ = self.ray.wait([take_ref, *self.running], num_returns=1, timeout=None)
                if take_ref in ready:
                    # Reports first: a worker returns only after its last report was answered.
                    self.on_reports(self.ray.get(take_ref))
                    take_ref = self.mailbox.take.remote(1.0)
                for ref in ready:
                    if ref in self.running:
                        self.on_done(ref)
                self.show()
        except KeyboardInterrupt:
            self.on_interrupt()
        finally:
            self.stats.seconds = time.monotonic() - self.start
            self.stats.finished = self.finished
            self.ray.kill(self.mailbox)
        return self.stats

    def _may_launch(self) -> bool:
        o = self.options
        out_of_time = o.timeout is not None and time.monotonic() - self.start > o.timeout
        return not out_of_time and len(self.running) < o.workers and self.finished + len(self.running) < o.n_trials

    def launch(self) -> None:
        """Ask the study for a trial (an enqueued one first), sample it, start its worker."""
        with warnings.catch_warnings():
            # The CLI's storage has heartbeats for the in-process path; ask/tell trials here have
            # none, and a dead worker is handled by this driver instead (Optuna warns about that).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = with_retries(lambda a: self.study.ask(), "ask")
        try:
            payload = self.sample(trial)
        except Exception as e:  # a space that cannot sample: the trial fails, the search goes on
            outcome = TrialOutcome(TrialState.FAIL, None, {"fail_reason": f"sampling failed: {type(e).__name__}: {e}"[:500]})
            self._told(tell_outcome(self.study, trial, outcome), retried=False)  # its FAIL line comes from the callbacks
            return
        ref = self.remote.remote(self.work, trial.number, payload, self.data_ref, self.mailbox, self.report)
        r = _Running(trial, time.monotonic())
        self.running[ref] = r
        self.by_number[trial.number] = r
        self.stats.trial_numbers.append(trial.number)

    def on_reports(self, messages: list[tuple]) -> None:
        """Workers' messages: where a trial runs, and epoch values answered with prune or not."""
        answers = []
        for m in messages:
            r = self.by_number.get(m[1])
            if m[0] == "started":
                if r is not None:
                    r.pid, r.host = m[2], m[3]
                    with_retries(lambda a: r.trial.set_user_attr("worker", {"pid": m[2], "host": m[3]}), "set worker")
                continue
            _, number, epoch, value = m
            self.stats.reports += 1
            prune = False
            if r is not None:
                if self.on_epoch is not None:
                    self.on_epoch(number, epoch, value)
                with_retries(lambda a: r.trial.report(value, step=epoch), "report")
                prune = with_retries(lambda a: r.trial.should_prune(), "should_prune")
            answers.append((number, epoch, bool(prune)))
        if answers:
            self.mailbox.answer.remote(answers)

    def on_done(self, ref) -> None:
        """A worker returned: tell its outcome, or handle the worker's death."""
        r = self.running.pop(ref)
        self.by_number.pop(r.trial.number, None)
        try:
            outcome: TrialOutcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            self.on_worker_died(r, e)
            return
        frozen = tell_outcome(self.study, r.trial, outcome)
        if frozen.state == TrialState.COMPLETE:
            self.stats.complete += 1
        elif frozen.state == TrialState.PRUNED:
            self.stats.pruned += 1
        else:
            self.stats.failed += 1
        self._told(frozen, retried=False)

    def on_worker_died(self, r: _Running, e: BaseException) -> None:
        """SIGKILL, out of memory, node lost: FAIL, and run the params again within max_retries."""
        self.mailbox.forget.remote(r.trial.number)
        reason = f"worker died: {_ray_reason(e)}"
        frozen, retried = fail_trial(self.study, r.trial, reason, max_retries=self.options.max_retries)
        self.stats.failed += 1
        self.stats.retried += retried
        self._told(frozen, retried=retried)  # the callbacks print its FAIL line with the reason
        if retried:
            self.progress(f"trial {r.trial.number:>4}: its parameters are enqueued again")

    def on_interrupt(self) -> None:
        """Ctrl-C: stop the workers, fail their trials and enqueue them again; one line up."""
        self.stats.interrupted = True
        numbers = []
        with exit_on_second_interrupt():
            for ref, r in list(self.running.items()):
                self.ray.cancel(ref, force=True)
                frozen, retried = fail_trial(self.study, r.trial, "interrupted (Ctrl-C)", max_retries=None)
                self.stats.failed += 1
                self.stats.retried += retried
                self._told(frozen, retried=retried)
                numbers.append(r.trial.number)
        self.running.clear()
        raise SearchInterrupted(interrupted_line(numbers))

    def _told(self, frozen: FrozenTrial, *, retried: bool) -> None:
        self.counts[frozen.state] += 1
        if not retried:
            self.finished += 1
        if frozen.state == TrialState.COMPLETE:
            self._update_best()
        for cb in self.callbacks:
            cb(self.study, frozen)

    def _update_best(self) -> None:
        b = best_trial(self.study)
        value = None if b is None else (b.value if self.single else b.user_attrs.get("objective"))
        self.best = None if value is None else (float(value), b.number)

    def show(self) -> None:
        """The driver's status line, printed when it changes."""
        b = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best else "no best yet"
        c = self.counts
        line = (
            f"{self.finished}/{self.options.n_trials} finished: {c[TrialState.COMPLETE]} complete, "
            f"{c[TrialState.PRUNED]} pruned, {c[TrialState.FAIL]} failed, {len(self.running)} running; {b}"
        )
        if line != self.last_line:  # print on change only, not every tick
            self.last_line = line
            self.progress(f"[{_clock(time.monotonic() - self.start)}] {line}")


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
    on_epoch: Callable[[int, int, float], None] | None = None,
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
        on_epoch: `(trial number, epoch, value)` after each reported epoch (live progress).
        progress: where progress lines go.

    Raises:
        SearchInterrupted: Ctrl-C; the running trials were failed and enqueued again.
    """
    options = DriveOptions(n_trials, workers, cpus_per_trial, gpus_per_trial, max_retries, timeout, fresh_process, env, report_epochs)
    return Driver(study, sample, work, data, options, callbacks=callbacks, on_epoch=on_epoch, progress=progress).run()


def _ray_reason(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# ---------------------------------------------------------------------------------------------
# The agesearch entry point


def worker_env(cache_dir: Path | None, gpus_per_trial: float = 1.0) -> dict[str, str]:
    """The environment of the workers: GPU memory set-up, Keras backend, cache folder.

    With a fraction of a GPU per trial, JAX's allocator is also capped at that fraction (less a
    tenth for the CUDA context): on an H200, 8 packed JAX trials with preallocation off only
    grew to 63-82 GB together (benchmarks/RESULTS.md), which an 80 GB card would not hold.
    """
    import keras

    from agesearch.search.data import default_cache_dir

    env = dict(GPU_MEMORY_ENV)
    if 0 < gpus_per_trial < 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpus_per_trial:.3f}"
    env["KERAS_BACKEND"] = keras.config.backend()
    env["AGESEARCH_CACHE_DIR"] = str(Path(cache_dir or default_cache_dir()).expanduser().resolve())
    env["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _check_resources(ray, workers: int, gpus_per_trial: float | None, cpus_per_trial: float, address: str | None, max_retries: int,
                     progress: Callable[[str], None]) -> float:
    """The GPUs per trial to use (default: 1 if the cluster has GPUs), or DistributedError."""
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
    return gpus_per_trial


def run_distributed(
    study: optuna.Study,
    task,
    *,
    n_trials: int,
    workers: int = 1,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
    address: str | None = None,
    max_retries: int = 1,
    timeout: float | None = None,
    cache_dir: Path | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_epoch: Callable[[int, int, float], None] | None = None,
    progress: Callable[[str], None] = print,
) -> DriveStats:
    """`agesearch run --workers N / --address`: the search's trials (`task`, a run.SearchTask) on Ray.

    Starts a local Ray runtime (or joins `address`), runs trials until the study holds
    `n_trials` finished ones, and leaves Ray as it found it. Completed trials' models are
    uploaded by the worker to the artifact store `task.artifacts` (nothing depends on a shared
    folder) and attached to their trial by the driver's `tell_outcome`; the callbacks
    (KeepBestModels, a progress line) run on the driver after each trial.

    Raises:
        DistributedError: Ray missing, cluster unreachable, resources the cluster lacks.
    """
    from agesearch.search.trial import sample_configs

    local_cpus = max(os.cpu_count() or 1, math.ceil(workers * cpus_per_trial))
    with ray_runtime(address, num_cpus=local_cpus) as ray:
        gpus_per_trial = _check_resources(ray, workers, gpus_per_trial, cpus_per_trial, address, max_retries, progress)
        directory = None if task.models_dir is None else Path(task.models_dir).resolve()

        def sample(trial: optuna.Trial) -> TrainPayload:
            model_cfg, train_cfg = sample_configs(trial, task.space, task.image_size, task.epochs)
            path = None if directory is None else str(model_path(directory, trial.number))
            return TrainPayload(model_cfg, train_cfg, task.multi, path, getattr(task, "artifacts", None))

        return drive(
            study, sample=sample, work=train_work, data=task.data, n_trials=n_trials, workers=workers,
            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_retries=max_retries, timeout=timeout,
            env=worker_env(cache_dir, gpus_per_trial), callbacks=callbacks, report_epochs=not task.multi, on_epoch=on_epoch, progress=progress,
        )
