"""Trials on Ray: the executor that runs the loop's trials in Ray worker processes.

The shape:

    this process (loop.py's TrialLoop)            Ray workers (any machine of the cluster)
    ----------------------------------            ----------------------------------------
    study.ask() -> sample the configs
    RayExecutor.start: one task per trial  ------> fresh process (max_calls=1): train
    mailbox actor <---- (epoch, value) ---------- reporter(epoch, value)
    loop.on_report: report / prune? ----- answer -> raises PruneRequested when told to
    loop.on_finished: tell <------ TrialOutcome -- returns COMPLETE / PRUNED / FAIL

This process is the only one that writes the trials it runs to the study's storage, so SQLite
sees one writer wherever the workers run, and `agesearch report` / optuna-dashboard can read
the file (WAL) at any time. It sends Optuna's heartbeat for each of its trials: if it dies,
another run on the study fails and retries them; trials of other live processes are left alone.

Ray is imported only in this module, inside functions, so that the sequential search works
without it installed.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from agesearch.search.errors import DistributedError  # raised here, caught by the CLI
from agesearch.search.loop.loop import Finished, LoopStats, TrialLoop
from agesearch.search.loop.trial import TrialOutcome

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
# The executor


class RayExecutor:
    """Runs each trial's `work` in a Ray task (a fresh worker process per trial by default).

    The loop (loop.py) owns the study; this only starts tasks, relays the mailbox's epoch
    reports to the loop's `on_report` and its answers back, and returns finished tasks, a task
    whose process died as `Finished(outcome=None, died=reason)`.
    """

    def __init__(self, ray, work: Callable, data: Any, *, workers: int, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 fresh_process: bool = True, env: dict[str, str] | None = None):
        self.ray, self.work, self.capacity = ray, work, workers
        self.remote = ray.remote(
            num_cpus=cpus_per_trial,
            num_gpus=gpus_per_trial,
            max_calls=1 if fresh_process else 0,
            # A dead worker must come back to the loop as an error, for the study to record the
            # FAIL and enqueue a new trial; Ray's own task retry would hide it.
            max_retries=0,
            retry_exceptions=False,
            runtime_env={"env_vars": dict(env or {})},
        )(_worker_main)
        self.mailbox = _mailbox_actor(ray)
        self.data_ref = ray.put(data)  # once: every trial reads the same object-store copy
        self.refs: dict[Any, int] = {}  # Ray object ref -> trial number
        self.take_ref = self.mailbox.take.remote(1.0)

    def start(self, number: int, payload: Any, report: bool) -> None:
        ref = self.remote.remote(self.work, number, payload, self.data_ref, self.mailbox, report)
        self.refs[ref] = number

    def running(self) -> list[int]:
        return list(self.refs.values())

    def wait(self, on_report: Callable[[int, int, float], bool], on_started: Callable[[int, dict], None]) -> list[Finished]:
        while True:
            ready, _ = self.ray.wait([self.take_ref, *self.refs], num_returns=1, timeout=None)
            if self.take_ref in ready:
                # Reports first: a worker returns only after its last report was answered.
                self._relay(self.ray.get(self.take_ref), on_report, on_started)
                self.take_ref = self.mailbox.take.remote(1.0)
            done = [self._finished(ref) for ref in ready if ref in self.refs]
            if done:
                return done

    def _relay(self, messages: list[tuple], on_report, on_started) -> None:
        answers = []
        for m in messages:
            if m[0] == "started":
                on_started(m[1], {"pid": m[2], "host": m[3]})
                continue
            _, number, epoch, value = m
            answers.append((number, epoch, bool(on_report(number, epoch, value))))
        if answers:
            self.mailbox.answer.remote(answers)

    def _finished(self, ref) -> Finished:
        number = self.refs.pop(ref)
        try:
            return Finished(number, self.ray.get(ref))
        except self.ray.exceptions.RayError as e:  # SIGKILL, out of memory, node lost
            self.mailbox.forget.remote(number)
            return Finished(number, None, died=_ray_reason(e))

    def cancel_all(self) -> list[int]:
        numbers = list(self.refs.values())
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        return numbers

    def close(self) -> None:
        self.ray.kill(self.mailbox)


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
    on_start: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    progress: Callable[[str], None] = print,
) -> LoopStats:
    """Run trials on Ray (already initialised) with the one loop until the study holds `n_trials`.

    Args:
        study: the study; this process is its only writer for the trials it runs.
        sample: here, `sample(trial) -> payload` (suggests the parameters).
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
        on_start, on_epoch: `(number)` when a trial starts, `(number, epoch, value)` per epoch.
        progress: where status lines go.

    Raises:
        SearchInterrupted: Ctrl-C; the running trials were failed and enqueued again.
    """
    executor = RayExecutor(import_ray(), work, data, workers=workers, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                           fresh_process=fresh_process, env=env)
    loop = TrialLoop(study, executor, sample, n_trials=n_trials, timeout=timeout, max_retries=max_retries, report_epochs=report_epochs,
                     callbacks=callbacks, on_start=on_start, on_epoch=on_epoch, say=progress)
    return loop.run()


def _ray_reason(e: BaseException) -> str:
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


# ---------------------------------------------------------------------------------------------
# The agesearch entry point


def worker_env(cache_dir: Path | None, gpus_per_trial: float = 1.0) -> dict[str, str]:
    """The environment of the workers: GPU memory set-up, Keras backend, cache folder.

    With a fraction of a GPU per trial, JAX's allocator is also capped at that fraction (less a
    tenth for the CUDA context): on an H200, 8 packed JAX trials with preallocation off only
    grew to 63-82 GB together (benchmarks/RESULTS.md), which an 80 GB card would not hold.
    """
    import keras

    from agesearch.search.data.images import default_cache_dir

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


def run_on_ray(study: optuna.Study, sample: Callable[[optuna.Trial], Any], data: Any, options, *, cache_dir: Path | None = None,
               callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (), on_start: Callable[[int], None] | None = None,
               on_epoch: Callable[[int, int, float], None] | None = None, progress: Callable[[str], None] = print) -> LoopStats:
    """`agesearch run --workers N / --address`: agesearch trials (`trial.train_job`) on Ray.

    Starts a local Ray runtime (or joins `options.address`), runs the one loop until the study
    holds `options.n_trials` finished trials, and leaves Ray as it found it. Completed trials'
    models are uploaded by the worker to the artifact store (nothing depends on a shared
    folder) and attached to their trial when told.

    Raises:
        DistributedError: Ray missing, cluster unreachable, resources the cluster lacks.
    """
    from agesearch.search.loop.trial import train_job

    o = options
    local_cpus = max(os.cpu_count() or 1, math.ceil(o.workers * o.cpus_per_trial))
    with ray_runtime(o.address, num_cpus=local_cpus) as ray:
        gpus = _check_resources(ray, o.workers, o.gpus_per_trial, o.cpus_per_trial, o.address, o.max_retries, progress)
        return drive(study, sample=sample, work=train_job, data=data, n_trials=o.n_trials, workers=o.workers, cpus_per_trial=o.cpus_per_trial,
                     gpus_per_trial=gpus, max_retries=o.max_retries, timeout=o.timeout, env=worker_env(cache_dir, gpus),
                     callbacks=callbacks, report_epochs=not o.multi, on_start=on_start, on_epoch=on_epoch, progress=progress)
