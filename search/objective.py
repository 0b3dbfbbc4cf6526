"""One trial: sample configs from a space, train, and turn the result into an outcome.

The work is split in three so that the same code runs in-process and under a driver that
owns the study while workers train (Ray):
  sample_configs(trial, ...)        -> (ModelConfig, TrainConfig)   where the study is
  train_configs(configs, data, ...) -> TrialOutcome                 where the GPU is
  tell / raise from the outcome                                      where the study is
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from agesearch.models.config import ModelConfig, TrainConfig

COMPLETE, PRUNED, FAIL = "complete", "pruned", "fail"


@dataclass
class TrialOutcome:
    """What a trained trial gives back: plain data, picklable, JSON-able user attrs."""

    state: str  # complete | pruned | fail
    values: list[float] | None = None  # [objective] or [val_age_mae, val_gender_accuracy]
    user_attrs: dict = field(default_factory=dict)


def sample_configs(trial: optuna.Trial, space, image_size: int, epochs: int) -> tuple[ModelConfig, TrainConfig]:
    """Sample a trial's configs and record them in its user attrs."""
    model_cfg, train_cfg = space(trial, image_size)
    train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    trial.set_user_attr("model_config", model_cfg.to_dict())
    trial.set_user_attr("train_config", train_cfg.to_dict())
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
) -> TrialOutcome:
    """Clear state, build, fit with per-epoch reports, return the outcome.

    Never raises for a trial's own failure (NaN, out of memory, invalid config): those come
    back as a FAIL outcome with `fail_reason`. KeyboardInterrupt goes through.
    With `model_path`, a completed trial's model (best epoch's weights) is saved there as a
    .keras inference model (age in years, P(female); see `agesearch.models.inference`).
    """
    from agesearch.search.training import PruneRequested, fit  # imports Keras

    history: dict = {}
    try:
        result = fit(model_cfg, train_cfg, data, reporter, on_history=history.update, keep_model=model_path is not None)
        if model_path is not None:
            from agesearch.models.inference import inference_model

            inference_model(result.model, model_cfg, data.baselines.age_scale).save(model_path)
    except PruneRequested as e:
        return TrialOutcome(PRUNED, None, _partial_attrs(history) | {"pruned_at_epoch": e.epoch})
    except Exception as e:  # the trial failed; the study goes on
        attrs = _partial_attrs(history) | {"fail_reason": _reason(e)}
        attrs["fail_traceback"] = traceback.format_exc(limit=-3)[-2000:]
        return TrialOutcome(FAIL, None, attrs)
    attrs = {
        "objective": result.objective,
        "val_age_mae": result.val_age_mae,
        "val_gender_accuracy": result.val_gender_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 3),
        "params": result.params,
        "history": result.history,
    }
    values = [result.val_age_mae, result.val_gender_accuracy] if multi else [result.objective]
    return TrialOutcome(COMPLETE, values, attrs)


def _partial_attrs(history: dict) -> dict:
    attrs: dict = {"history": history}
    if history.get("val_objective"):
        attrs["epochs_run"] = len(history["val_objective"])
    return attrs


def trial_reporter(trial: optuna.Trial) -> Callable[[int, float], bool]:
    """Report at step=epoch and ask the study's pruner."""

    def report(epoch: int, value: float) -> bool:
        trial.report(value, step=epoch)
        return trial.should_prune()

    return report


def make_objective(space, image_size: int, epochs: int, data, *, multi: bool, models_dir=None) -> Callable[[optuna.Trial], object]:
    """The in-process Optuna objective: sample, train, record, return the value(s).

    With `models_dir`, each completed trial's model is saved as `trial-N.keras` there, for
    `BestModelKeeper` to keep or delete.
    """

    def objective(trial: optuna.Trial):
        model_cfg, train_cfg = sample_configs(trial, space, image_size, epochs)
        path = None if models_dir is None else str(models_dir / f"trial-{trial.number}.keras")
        reporter = None if multi else trial_reporter(trial)
        outcome = train_configs(model_cfg, train_cfg, data, reporter, multi=multi, model_path=path)
        for key, value in outcome.user_attrs.items():
            trial.set_user_attr(key, value)
        if outcome.state == PRUNED:
            raise optuna.TrialPruned(f"pruned at epoch {outcome.user_attrs.get('pruned_at_epoch')}")
        if outcome.state == FAIL:
            from agesearch.search.training import TrialFailed  # already loaded by train_configs

            raise TrialFailed(outcome.user_attrs["fail_reason"])  # Optuna (catch=Exception) marks it FAIL
        return outcome.values[0] if len(outcome.values) == 1 else tuple(outcome.values)

    return objective
