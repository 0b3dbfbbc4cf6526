"""What a search prints while it runs: one line per finished trial, and live epoch progress.

Live progress shows each running trial's epoch, its val objective so far and its elapsed
time: one line that updates in place on a terminal (rich, which Keras already depends on),
plain lines when stdout is not a terminal (CI, logs), so that nothing is drawn into a file.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from optuna.trial import TrialState

from agesearch.search.store.study import best_trial, best_trials


class ProgressLine:
    """Optuna-style callback: one line per finished trial: number, state, value, seconds, best."""

    def __init__(self, multi: bool):
        self.multi = multi

    def __call__(self, study, trial) -> None:
        secs = trial.duration.total_seconds() if trial.duration else float("nan")
        if trial.state == TrialState.COMPLETE:
            value = " ".join(f"{v:.4f}" for v in trial.values)
        elif trial.state == TrialState.FAIL:
            value = trial.user_attrs.get("fail_reason", "failed")
        else:
            value = f"at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
        if self.multi:
            best = f"pareto {len(best_trials(study))} trials"
        else:
            b = best_trial(study)
            best = "no best yet" if b is None else f"best {b.value:.4f} (#{b.number})"
        print(f"trial {trial.number:>4} {trial.state.name:<8} {value}  {secs:.1f}s  {best}", flush=True)


class EpochProgress:
    """Live per-epoch progress of the running trials; a context manager around the search.

    Call `epoch(number, epoch, value)` after each epoch of a trial and `done(number)` when the
    trial is told. With `live=None` the choice follows `sys.stdout.isatty()`.
    """

    def __init__(self, epochs: int, *, live: bool | None = None):
        self.epochs = epochs
        self.live = sys.stdout.isatty() if live is None else live
        self.running: dict[int, tuple[int, float, float]] = {}  # number -> (epoch, value, start)
        self.started: dict[int, float] = {}
        self._live: Any = None

    def __enter__(self) -> EpochProgress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            # redirect_stdout: the per-trial lines print above the updating line.
            # The renderable is this object: each refresh redraws the elapsed times.
            self._live = Live(self, console=Console(), transient=True, redirect_stdout=True, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def start(self, number: int) -> None:
        self.started[number] = time.monotonic()

    def epoch(self, number: int, epoch: int, value: float) -> None:
        start = self.started.setdefault(number, time.monotonic())
        self.running[number] = (epoch, value, start)
        if self._live is None:
            print(f"  {self._describe(number)}", flush=True)

    def done(self, number: int) -> None:
        self.running.pop(number, None)
        self.started.pop(number, None)

    def __rich__(self) -> str:
        # Called from rich's refresh thread: read a snapshot, the search thread writes.
        running, started = dict(self.running), dict(self.started)
        now = time.monotonic()
        return " | ".join(
            self._describe(n, running) if n in running else f"#{n} starting {now - t:.0f}s" for n, t in sorted(started.items())
        )

    def _describe(self, number: int, running: dict | None = None) -> str:
        epoch, value, start = (running or self.running)[number]
        return f"#{number} epoch {epoch + 1}/{self.epochs} val objective {value:.4f} {time.monotonic() - start:.0f}s"
