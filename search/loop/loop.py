"""The one search loop: ask -> sample -> run -> tell, whichever executor runs the trials.

`TrialLoop` owns every decision about a trial's life, for both executors:
  - the stop rule: the study's `n_trials` across processes, the timeout, a grid used up, Ctrl-C,
    `study.stop()` from a callback;
  - the callbacks: Optuna-style `(study, frozen_trial)` calls after each trial is told, as
    `study.optimize(..., callbacks=[...])` makes them (the user's, the trackers', KeepBestModels);
  - sampling: a space that cannot sample is FAIL ("sampling failed: ..."), a draw over the cost
    cap is PRUNED before it trains (`TrialRefused`, user attr `refused`);
  - each epoch's report and the pruner's answer;
  - stale trials: Optuna's heartbeat (`optuna.storages.fail_stale_trials`) on both paths; the
    loop runs a heartbeat thread for every trial it runs, wherever the trial trains;
  - a process that died (retried within max_retries) and Ctrl-C (enqueued again).
An executor only runs work: `InProcessExecutor` here, one trial at a time in this process;
`RayExecutor` (ray_executor.py) in fresh Ray worker processes. Both take the same `work`
function `work(payload, data, reporter) -> TrialOutcome`. (The shape of Optuna's `_optimize`
with one `_tell_with_warning`, KerasTuner's Oracle as the only writer, Ray Tune's controller.)
"""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.loop.trial import (
    SearchInterrupted,
    TrialOutcome,
    TrialRefused,
    exit_on_second_interrupt,
    fail_trial,
    interrupted_line,
    report_epoch,
    tell_outcome,
)
from agesearch.search.store.study import active_count, best_trial, finished_count, heartbeat_seconds, with_retries

# work(payload, data, reporter) -> TrialOutcome, reporter(epoch, value) -> prune?
Work = Callable[[Any, Any, Callable[[int, float], bool] | None], TrialOutcome]


@dataclass
class Finished:
    """A trial an executor is done with: its outcome, or why its process died."""

    number: int
    outcome: TrialOutcome | None
    died: str = ""  # the reason, when outcome is None


class Executor(Protocol):
    """Where trials run. `wait` blocks until at least one trial finished, passing each epoch's
    (number, epoch, value) to `on_report` and the answer (prune?) back to the trial."""

    capacity: int

    def start(self, number: int, payload: Any, report: bool) -> None: ...

    def running(self) -> list[int]: ...

    def wait(self, on_report: Callable[[int, int, float], bool], on_started: Callable[[int, dict], None]) -> list[Finished]: ...

    def cancel_all(self) -> list[int]: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """One trial at a time, in this process (the TF session is cleared between trials)."""

    capacity = 1

    def __init__(self, work: Work, data: Any):
        self.work, self.data = work, data
        self.pending: dict[int, tuple[Any, bool]] = {}

    def start(self, number: int, payload: Any, report: bool) -> None:
        self.pending[number] = (payload, report)

    def running(self) -> list[int]:
        return list(self.pending)

    def wait(self, on_report, on_started) -> list[Finished]:
        number, (payload, report) = next(iter(self.pending.items()))
        reporter = (lambda epoch, value: on_report(number, epoch, value)) if report else None
        outcome = self.work(payload, self.data, reporter)  # KeyboardInterrupt goes through
        del self.pending[number]
        gc.collect()  # TF keeps a finished model's graph alive until the next collection
        return [Finished(number, outcome)]

    def cancel_all(self) -> list[int]:
        numbers, self.pending = list(self.pending), {}
        return numbers

    def close(self) -> None:
        self.pending.clear()


@dataclass
class LoopStats:
    """What one loop run did (this run only) and how the study stands after it."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0  # failed trials whose parameters were enqueued again
    finished: int = 0  # the study's finished_count at the end
    seconds: float = 0.0
    interrupted: bool = False
    reports: int = 0  # epoch reports received
    trial_numbers: list[int] = field(default_factory=list)


def _heartbeat(storage, trial: optuna.Trial):
    """Optuna's heartbeat thread for one asked trial, as `study.optimize` runs it, so that another
    process fails and retries the trial if this one dies (a null context without heartbeats).
    The helper has no public name; `_trial_id` is the one private field it needs."""
    from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled

    if is_heartbeat_enabled(storage):
        # The thread's first heartbeat comes a moment later, from the thread; a trial without
        # any is never found stale (Optuna joins on its heartbeat row), so a process killed in
        # that moment left a RUNNING trial forever. The first one is written here, at once.
        storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
    return get_heartbeat_thread(trial._trial_id, storage)  # noqa: SLF001


class TrialLoop:
    """Runs trials of `study` on `executor` until the study holds `n_trials` finished ones."""

    def __init__(self, study: optuna.Study, executor: Executor, sample: Callable[[optuna.Trial], Any], *, n_trials: int,
                 timeout: float | None = None, max_retries: int = 1, report_epochs: bool = True,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
                 on_start: Callable[[int], None] | None = None, on_epoch: Callable[[int, int, float], None] | None = None,
                 say: Callable[[str], None] | None = None):
        self.study, self.executor, self.sample = study, executor, sample
        self.n_trials, self.max_retries = n_trials, max_retries
        self.report = report_epochs and len(study.directions) == 1  # multi-objective studies cannot report
        self.callbacks, self.on_start, self.on_epoch, self.say = list(callbacks), on_start, on_epoch, say
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + timeout
        self.trials: dict[int, optuna.Trial] = {}
        self.beats: dict[int, contextlib.ExitStack] = {}
        self.stats = LoopStats()
        self.last_line = ""

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> LoopStats:
        # `study.stop()` from a callback works as under `study.optimize` (optuna's MaxTrialsCallback
        # and early-stopping callbacks call it): Optuna allows it only inside its optimize loop,
        # which it marks with these two private fields; this loop sets them the same way.
        self.study._stop_flag = False  # noqa: SLF001
        self.study._thread_local.in_optimize_loop = True  # noqa: SLF001
        try:
            while True:
                self.fail_stale()
                while self.may_start():
                    self.start_next()
                self.show()
                if self.executor.running():
                    for finished in self.executor.wait(self.on_report, self.on_worker):
                        self.on_finished(finished)
                elif self.others_may_finish():
                    self.waiting_line()
                    time.sleep(2.0)  # trials of other processes hold the last places
                else:
                    break
        except KeyboardInterrupt:
            self.on_interrupt()
        finally:
            self.study._thread_local.in_optimize_loop = False  # noqa: SLF001
            for stack in self.beats.values():
                stack.close()
            self.executor.close()
            self.stats.seconds = time.monotonic() - self.start
            self.stats.finished = finished_count(self.study)
        return self.stats

    def out_of_time(self) -> bool:
        """The timeout passed, or a callback called `study.stop()`: no trial starts any more."""
        stopped = getattr(self.study, "_stop_flag", False)
        return stopped or (self.deadline is not None and time.monotonic() >= self.deadline)

    def study_done(self) -> bool:
        sampler = self.study.sampler
        exhausted = hasattr(sampler, "is_exhausted") and sampler.is_exhausted(self.study)
        return exhausted or finished_count(self.study) >= self.n_trials

    def may_start(self) -> bool:
        """A trial may start: time left, a free slot here, a place left in the study's total."""
        if self.out_of_time() or len(self.executor.running()) >= self.executor.capacity or self.study_done():
            return False
        return active_count(self.study) < self.n_trials

    def others_may_finish(self) -> bool:
        """Nothing runs here, but other processes' trials could still bring the study to its total."""
        return not self.out_of_time() and not self.study_done()

    def waiting_line(self) -> None:
        """Once: which trials of other processes this run waits for."""
        if self.say is None or getattr(self, "said_waiting", False):
            return
        self.said_waiting = True
        others = [f"#{t.number}" for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        self.say(f"waiting for trial(s) {', '.join(others)} of another process: they hold the last places of --n-trials "
                 f"(a dead process's trials are failed {3 * heartbeat_seconds()} s after their last heartbeat)")

    def fail_stale(self) -> None:
        """Trials whose process stopped sending heartbeats: FAIL, retried by the storage's callback."""
        others = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in self.trials]
        if not others:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in others and self.say is not None:
                self.say(f"trial {t.number:>4} FAIL     its process stopped (no heartbeat for the grace period); its parameters are enqueued again within --max-retries")

    # -- the steps of a trial ---------------------------------------------------------------

    def start_next(self) -> None:
        """Ask for a trial (an enqueued one first), sample it, hand it to the executor."""
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for `optimize`: this loop runs them itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = with_retries(lambda a: self.study.ask(), "ask")
        # The heartbeat starts at once, as in Optuna's `_optimize`: a trial killed with its
        # process before its first heartbeat would never be found stale.
        self.trials[trial.number] = trial
        self.beats[trial.number] = stack = contextlib.ExitStack()
        stack.enter_context(_heartbeat(self.study._storage, trial))  # noqa: SLF001  (the study's own storage)
        self.stats.trial_numbers.append(trial.number)
        try:
            payload = self.sample(trial)
        except TrialRefused as e:  # over the cost cap: never trained
            self._end(trial.number)
            self._told(tell_outcome(self.study, trial, TrialOutcome(TrialState.PRUNED, None, {"refused": str(e)})), retried=False)
            return
        except Exception as e:  # a space that cannot sample: the trial fails, the search goes on
            self._end(trial.number)
            reason = (str(e).strip().splitlines() or [""])[0]
            outcome = TrialOutcome(TrialState.FAIL, None, {"fail_reason": f"sampling failed: {type(e).__name__}: {reason}"[:500]})
            self._told(tell_outcome(self.study, trial, outcome), retried=False)
            return
        if self.on_start is not None:
            self.on_start(trial.number)
        self.executor.start(trial.number, payload, self.report)

    def on_worker(self, number: int, where: dict) -> None:
        """An executor says where a trial runs (a Ray worker's pid and host)."""
        trial = self.trials.get(number)
        if trial is not None:
            with_retries(lambda a: trial.set_user_attr("worker", where), "set worker")

    def on_report(self, number: int, epoch: int, value: float) -> bool:
        """An epoch's value: to the progress line, to the study, and the pruner's answer back."""
        self.stats.reports += 1
        trial = self.trials.get(number)
        if trial is None:
            return False
        if self.on_epoch is not None:
            self.on_epoch(number, epoch, value)
        return report_epoch(trial, epoch, value)

    def on_finished(self, f: Finished) -> None:
        """Tell the trial's outcome; a trial whose process died is FAIL and retried."""
        trial = self._end(f.number)
        if f.outcome is None:
            frozen, retried = fail_trial(self.study, trial, f"worker died: {f.died}", max_retries=self.max_retries)
            self.stats.retried += retried
            self._told(frozen, retried=retried)
            if retried and self.say is not None:
                self.say(f"trial {trial.number:>4}: its parameters are enqueued again")
            return
        self._told(tell_outcome(self.study, trial, f.outcome), retried=False)

    def on_interrupt(self) -> None:
        """Ctrl-C: stop the running trials, fail them and enqueue them again; one line up."""
        self.stats.interrupted = True
        with exit_on_second_interrupt():
            numbers = self.executor.cancel_all()
            for number in numbers:
                frozen, retried = fail_trial(self.study, self._end(number), "interrupted (Ctrl-C)", max_retries=None)
                self.stats.retried += retried
                self._told(frozen, retried=retried)
        raise SearchInterrupted(interrupted_line(numbers))

    def _end(self, number: int) -> optuna.Trial:
        """The trial is done here: stop its heartbeat (before it is told)."""
        self.beats.pop(number).close()
        return self.trials.pop(number)

    def _told(self, frozen: FrozenTrial, *, retried: bool) -> None:
        if frozen.state == TrialState.COMPLETE:
            self.stats.complete += 1
        elif frozen.state == TrialState.PRUNED:
            self.stats.pruned += 1
        else:
            self.stats.failed += 1
        for callback in self.callbacks:
            callback(self.study, frozen)

    def show(self) -> None:
        """With several trials at once, the study's count and best, printed when they change."""
        if self.say is None or self.executor.capacity < 2:
            return
        trials = self.study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        best = best_trial(self.study)
        value = None if best is None else (best.value if len(self.study.directions) == 1 else best.user_attrs.get("objective"))
        b = f"best {value:.4f} (#{best.number})" if value is not None else "no best yet"
        line = (f"{finished_count(self.study)}/{self.n_trials} finished: {count[TrialState.COMPLETE]} complete, "
                f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed, {len(self.executor.running())} running; {b}")
        if line != self.last_line:
            self.last_line = line
            m, s = divmod(int(time.monotonic() - self.start), 60)
            self.say(f"[{m // 60}:{m % 60:02d}:{s:02d}] {line}")
