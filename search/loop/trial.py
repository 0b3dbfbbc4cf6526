"""One trial: sample configs from a space, train, and tell the study the outcome.

The work is split in three so that the same code runs in-process and under a driver that
owns the study while workers train (Ray):
  sample_configs(trial, ...)        -> (ModelConfig, TrainConfig)   where the study is
  train_configs(configs, data, ...) -> TrialOutcome                 where the GPU is
  tell_outcome(study, trial, ...)   -> FrozenTrial                  where the study is

`tell_outcome` is the only place where an outcome becomes a trial state (as Optuna's own
`_tell_with_warning` is for `optimize` and `tell`), and `fail_trial` the only place where a
trial that did not end by itself (worker died, Ctrl-C, left RUNNING) is failed and enqueued
again.
"""

from __future__ import annotations

import copy
import contextlib
import dataclasses
import os
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from agesearch.models.config import ModelConfig, TrainConfig
from agesearch.search.store.study import with_retries


@dataclass
class TrialOutcome:
    """What a trained trial gives back: plain data, picklable, JSON-able user attrs."""

    state: TrialState  # COMPLETE, PRUNED or FAIL
    values: list[float] | None = None  # [objective] or [val_age_mae, val_gender_accuracy]
    user_attrs: dict = field(default_factory=dict)
    artifact_id: str | None = None  # the model uploaded to the artifact store; attached when told


@dataclass(frozen=True)
class TrainJob:
    """One sampled trial as it travels to where it trains (this process or a Ray worker)."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    multi: bool
    artifacts: str | None = None  # artifact store spec: the trainer uploads the model there
    tensorboard: str | None = None  # this trial's TensorBoard folder (DIR/trial-N), written where it trains


class TrialRefused(Exception):
    """A sampled config the search will not train (over the cost cap); `str()` says why."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; `str()` is the one line to show the user."""


INTERRUPTED_EXIT = 130  # 128 + SIGINT

def interrupted_line(numbers: Sequence[int]) -> str:
    """The one line shown after Ctrl-C."""
    if not numbers:
        return "interrupted; no trial was running. Run the same command to resume."
    which = ", ".join(f"#{n}" for n in numbers)
    return (f"interrupted; running trial(s) {which} marked FAIL and enqueued again: they run first, "
            "and do not count toward --n-trials, when you run the same command to resume.")


@contextlib.contextmanager
def exit_on_second_interrupt() -> Iterator[None]:
    """While the block runs (the cleanup after a first Ctrl-C), a Ctrl-C ends the process at once.

    The previous SIGINT handler comes back afterwards, so a program that catches
    SearchInterrupted (a notebook) keeps its normal Ctrl-C.
    """

    def now(signum, frame) -> None:
        os.write(2, b"agesearch: interrupted again; stopped at once.\n")
        os._exit(INTERRUPTED_EXIT)

    try:
        previous = signal.signal(signal.SIGINT, now)
    except ValueError:  # not the main thread (a notebook's worker thread): nothing to guard
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def sample_configs(trial: optuna.Trial, space, image_size: int, epochs: int, *, seed: int | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Sample a trial's configs and record them in its user attrs.

    `seed` (the search passes `trial_seed(sampler seed, trial.number)`) seeds the trial's
    training: it goes into the TrainConfig, so it travels with the job to a Ray worker, and is
    recorded as the user attr `seed` too (`export` retrains with it).
    """
    model_cfg, train_cfg = space(trial, image_size)
    train_cfg = dataclasses.replace(train_cfg, epochs=epochs, seed=seed)
    trial.set_user_attr("model_config", model_cfg.to_dict())
    trial.set_user_attr("train_config", train_cfg.to_dict())
    if seed is not None:
        trial.set_user_attr("seed", seed)
    return model_cfg, train_cfg


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def train_configs(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data,
    reporter: Callable[[int, float], bool] | None,
    *,
    multi: bool = False,
    model_path: str | None = None,
    artifacts: str | None = None,
    tensorboard: str | None = None,
) -> TrialOutcome:
    """Clear state, build, fit with per-epoch reports, return the outcome.

    Never raises for a trial's own failure (NaN, out of memory, invalid config): those come
    back as a FAIL outcome with `fail_reason`. KeyboardInterrupt goes through.
    With `model_path`, a completed trial's model (best epoch's weights) is saved there as a
    .keras inference model (age in years, P(female); see `agesearch.models.inference`).
    With `artifacts` (a store spec, `artifacts.resolve_spec`), it is uploaded there instead,
    from this process (a Ray worker needs no shared folder), and the outcome carries its id.
    With `tensorboard` (a folder), Keras' TensorBoard callback writes the trial's curves there.
    """
    from agesearch.search.training.fit import PruneRequested, fit  # imports Keras

    history: dict = {}
    artifact_id = None
    keep = model_path is not None or artifacts is not None
    try:
        result = fit(model_cfg, train_cfg, data, reporter, on_history=history.update, keep_model=keep, tensorboard=tensorboard)
        if keep:
            from agesearch.models.inference import inference_model
            from agesearch.search.store.artifacts import save_model

            model = inference_model(result.model, model_cfg, data.baselines.age_scale)
            artifact_id = save_model(model, path=model_path, artifacts=artifacts)
    except PruneRequested as e:
        return TrialOutcome(TrialState.PRUNED, None, _partial_attrs(history) | {"pruned_at_epoch": e.epoch})
    except Exception as e:  # the trial failed; the study goes on
        attrs = _partial_attrs(history) | {"fail_reason": _reason(e)}
        attrs["fail_traceback"] = traceback.format_exc(limit=-3)[-2000:]
        return TrialOutcome(TrialState.FAIL, None, attrs)
    attrs = {
        "objective": result.objective,
        "val_age_mae": result.val_age_mae,
        "val_gender_accuracy": result.val_gender_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 3),
        "seconds_per_epoch": seconds_per_epoch(result.history),
        "params": result.params,
        "val_age_mae_by_decade": result.val_age_mae_by_decade,
        "history": result.history,
    }
    values = [result.val_age_mae, result.val_gender_accuracy] if multi else [result.objective]
    return TrialOutcome(TrialState.COMPLETE, values, attrs, artifact_id=artifact_id)


def _partial_attrs(history: dict) -> dict:
    attrs: dict = {"history": history}
    if history.get("val_objective"):
        attrs["epochs_run"] = len(history["val_objective"])
        attrs["seconds_per_epoch"] = seconds_per_epoch(history)
    return attrs


def seconds_per_epoch(history: dict) -> float | None:
    """The median wall time of an epoch after the first (which also compiles), or the first's."""
    times = history.get("seconds") or []
    rest = times[1:] or times
    return round(float(sorted(rest)[len(rest) // 2]), 3) if rest else None


def report_epoch(trial: optuna.Trial, epoch: int, value: float) -> bool:
    """Report an epoch's value at step=epoch and return the study's pruner's answer (prune?).

    A preset (user attr `preset`, kept by its retries) reports its curve but is never pruned:
    the presets are the baselines a search is read against, whenever they run (a pruner's
    start-up only protects them while they run first, and Hyperband has none).
    """
    with_retries(lambda a: trial.report(value, step=epoch), "report")
    if "preset" in trial.user_attrs:  # the trial's cached attrs: no storage read
        return False
    return bool(with_retries(lambda a: trial.should_prune(), "should_prune"))


def tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> FrozenTrial:
    """Record a trained trial's user attrs and tell the study its state (and values).

    Used by the in-process loop and the Ray driver alike. A FAIL outcome here is the trial's
    own failure (NaN, invalid config): not retried, it would fail again.
    """
    for key, value in outcome.user_attrs.items():
        with_retries(lambda a: trial.set_user_attr(key, value), f"set {key}")
    if outcome.artifact_id is not None:  # before the tell: a finished trial takes no attrs
        from agesearch.search.store.artifacts import attach, model_filename

        with_retries(lambda a: attach(study, trial.number, outcome.artifact_id, model_filename(trial.number)), "attach model")
    values = outcome.values if outcome.state == TrialState.COMPLETE else None
    return with_retries(
        lambda a: study.tell(trial.number, values, state=outcome.state, skip_if_finished=a > 0),
        f"tell trial {trial.number} {outcome.state.name}",
    )


def fail_trial(study: optuna.Study, trial: optuna.Trial, reason: str, *, max_retries: int | None) -> tuple[FrozenTrial, bool]:
    """Tell a trial FAIL with `fail_reason`, and enqueue its parameters again if retries are left.

    For trials that did not end by themselves: a worker that died, Ctrl-C. (A trial whose
    whole process died is failed by Optuna's heartbeat instead: loop.TrialLoop.fail_stale.) `max_retries=None` always enqueues again (an interrupted
    trial is the user's doing, not the trial's). The retry is Optuna's own
    RetryHeartbeatStaleTrialCallback (system attrs `failed_trial`, `retry_history`, which
    `finished_count` reads) with user attrs `retry_of` (the failed trial's number) and
    `retry_count` (1 for the first retry). Returns (frozen trial, retried).
    """
    with_retries(lambda a: trial.set_user_attr("fail_reason", reason[:500]), "set fail_reason")
    frozen = with_retries(lambda a: study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=a > 0), f"tell trial {trial.number} FAIL")
    history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    retry_count = len(history) + 1
    if max_retries is not None and retry_count > max_retries:
        return frozen, False
    view = copy.copy(frozen)  # the callback copies user attrs: give the retry its own
    view.user_attrs = {"retry_of": frozen.number, "retry_count": retry_count}
    if "preset" in frozen.user_attrs:  # a baseline stays named as its preset when run again
        view.user_attrs["preset"] = frozen.user_attrs["preset"]
    callback = RetryHeartbeatStaleTrialCallback(max_retry=retry_count if max_retries is None else max_retries)
    with_retries(lambda a: callback(study, view), f"re-enqueue trial {frozen.number}")
    return frozen, True


def train_job(job: TrainJob, data, reporter) -> TrialOutcome:
    """The work of one agesearch trial, wherever it runs (module-level: Ray pickles it by name)."""
    return train_configs(job.model_cfg, job.train_cfg, data, reporter, multi=job.multi, artifacts=job.artifacts, tensorboard=job.tensorboard)


def check_cost(trial: optuna.Trial, model_cfg: ModelConfig, cap: float | None) -> None:
    """Record the config's parameters and FLOPs per image; over `cap` FLOPs, refuse it.

    The cap is also an Optuna constraint (`trial.set_constraint`, > 0 infeasible), which TPE
    reads: refused draws rank below every feasible trial, so the sampler moves away from them.

    Raises:
        TrialRefused: the config is over the cap.
    """
    from agesearch.search.training.cost import model_cost  # imports Keras

    params, flops = model_cost(model_cfg)
    with_retries(lambda a: trial.set_user_attr("params", params), "set params")
    with_retries(lambda a: trial.set_user_attr("flops", flops), "set flops")
    if cap is None:
        return
    with_retries(lambda a: trial.set_constraint("flops", (flops - cap) / cap), "set constraint")
    if flops > cap:
        raise TrialRefused(f"{flops / 1e6:.1f} MFLOPs per image, over the cap of {cap / 1e6:.1f} MFLOPs (--max-flops / --max-flops-ratio)")
