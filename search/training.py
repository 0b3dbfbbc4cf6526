"""Training: the TrainConfig, the prepared arrays, and one Keras fit with per-epoch reports."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from agesearch.models import ModelConfig, build_model
from agesearch.models.coral import CoralMAE, coral_levels, coral_loss
from agesearch.search.data import FaceDataset, Split
from agesearch.models.config import TrainConfig
from agesearch.search.metrics import Baselines, combined_objective  # noqa: F401  (re-exported: training's callers use them)


@dataclass
class TrainingData:
    """Arrays for one search: train and val, with the baselines; test is never here."""

    x_train: np.ndarray
    age_train: np.ndarray
    gender_train: np.ndarray
    x_val: np.ndarray
    age_val: np.ndarray
    gender_val: np.ndarray
    baselines: Baselines

    @classmethod
    def from_split(cls, ds: FaceDataset, split: Split) -> "TrainingData":
        tr, va = split.train, split.val
        return cls(
            x_train=ds.images[tr],
            age_train=ds.ages[tr].astype(np.float32),
            gender_train=ds.genders[tr].astype(np.float32),
            x_val=ds.images[va],
            age_val=ds.ages[va].astype(np.float32),
            gender_val=ds.genders[va].astype(np.float32),
            baselines=Baselines.fit(ds.ages[tr], ds.genders[tr], ds.ages[va], ds.genders[va]),
        )


class TrialFailed(RuntimeError):
    """A trial that cannot produce a value (NaN loss, ...); the study marks it FAIL."""


# A reporter gets (epoch, objective) after every epoch and answers True to prune.
Reporter = Callable[[int, float], bool]


class PruneRequested(Exception):
    """Raised out of `fit` when the reporter says prune; the caller turns it into TrialPruned."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (objective {value:.4f})")
        self.epoch, self.value = epoch, value


class EpochReport(keras.callbacks.Callback):
    """Converts the epoch's val metrics to years and the objective, records them, reports them.

    optuna-integration's KerasPruningCallback only reads a logs key and talks to the trial
    directly; ours also keeps the per-epoch history for the study and reports through a plain
    function, so the same code runs under a driver that owns the study (Ray workers).
    It must come before EarlyStopping in the callback list: it writes `val_objective` into logs.
    """

    def __init__(self, baselines: Baselines, reporter: Reporter | None):
        super().__init__()
        self.b = baselines
        self.reporter = reporter
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        scale = self.b.age_scale
        row = {
            "loss": logs.get("loss"),
            "val_loss": logs.get("val_loss"),
            "age_mae": logs.get("age_mae", math.nan) * scale,
            "val_age_mae": logs.get("val_age_mae", math.nan) * scale,
            "gender_accuracy": logs.get("gender_accuracy"),
            "val_gender_accuracy": logs.get("val_gender_accuracy"),
        }
        if row["loss"] is None or not math.isfinite(row["loss"]) or not math.isfinite(row["val_age_mae"]):
            raise TrialFailed(f"loss became NaN or infinite at epoch {epoch}")
        value = combined_objective(row["val_age_mae"], row["val_gender_accuracy"], self.b)
        row["val_objective"] = value
        # Shows the backbone freeze schedule in the learning curves.
        row["trainable_params"] = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        logs["val_objective"] = value
        for key, v in row.items():
            self.history.setdefault(key, []).append(float(v))
        if self.reporter is not None and self.reporter(epoch, value):
            raise PruneRequested(epoch, value)


def make_optimizer(cfg: TrainConfig, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


def augmentation_layers(cfg: TrainConfig) -> list[keras.layers.Layer]:
    """Keras preprocessing layers (active in training only): backend-neutral augmentation."""
    out: list[keras.layers.Layer] = []
    if cfg.flip:
        out.append(keras.layers.RandomFlip("horizontal", name="aug_flip"))
    if cfg.rotation > 0:
        out.append(keras.layers.RandomRotation(cfg.rotation, name="aug_rotation"))
    if cfg.zoom > 0:
        out.append(keras.layers.RandomZoom(cfg.zoom, name="aug_zoom"))
    if cfg.translation > 0:
        out.append(keras.layers.RandomTranslation(cfg.translation, cfg.translation, name="aug_translation"))
    if cfg.brightness > 0:
        out.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), name="aug_brightness"))
    if cfg.contrast > 0:
        out.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), name="aug_contrast"))
    return out


def build_trainable(model_cfg: ModelConfig, train_cfg: TrainConfig, *, age_scale: float = 1.0, learning_rate: float | None = None) -> keras.Model:
    """The search model with augmentation in front, compiled.

    The regression head learns age / age_scale with the configured loss; the CORAL head
    learns rank levels with the CORAL loss, and its "mae" metric is divided by age_scale
    too, so `val_age_mae * age_scale` is years for both.
    """
    core = build_model(model_cfg)
    aug = augmentation_layers(train_cfg)
    if aug:
        inputs = keras.Input(core.input_shape[1:], name="image")
        x = inputs
        for layer in aug:
            x = layer(x)
        model = keras.Model(inputs, core(x), name="agesearch_train")
    else:
        model = core
    compile_model(model, model_cfg, train_cfg, age_scale=age_scale, learning_rate=learning_rate)
    return model


def compile_model(model: keras.Model, model_cfg: ModelConfig, train_cfg: TrainConfig, *, age_scale: float, learning_rate: float | None = None) -> None:
    if model_cfg.age_head == "coral":
        age_loss, age_metric = coral_loss, CoralMAE(scale=age_scale, name="mae")
    else:
        age_loss = {"mse": "mse", "mae": "mae", "huber": keras.losses.Huber()}[train_cfg.age_loss]
        age_metric = "mae"
    model.compile(
        optimizer=make_optimizer(train_cfg, learning_rate),
        loss={"age": age_loss, "gender": "binary_crossentropy"},
        loss_weights={"age": train_cfg.age_loss_weight, "gender": 1.0},
        metrics={"age": [age_metric], "gender": ["accuracy"]},
    )


def age_targets(model_cfg: ModelConfig, ages: np.ndarray, age_scale: float) -> np.ndarray:
    """What the age output learns: age / age_scale, or CORAL rank levels."""
    if model_cfg.age_head == "coral":
        return coral_levels(ages, model_cfg.coral_min_age, model_cfg.coral_max_age)
    return (ages / age_scale).astype(np.float32)


@dataclass
class FitResult:
    history: dict[str, list[float]]  # per epoch: loss, val_loss, (val_)age_mae (years), (val_)gender_accuracy, val_objective
    best_epoch: int
    val_age_mae: float  # years, at the best epoch
    val_gender_accuracy: float  # at the best epoch
    objective: float  # combined objective at the best epoch
    epochs_run: int
    seconds: float
    params: int
    model: keras.Model | None = None  # the bare two-branch model (no augmentation), with keep_model


def fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: TrainingData,
    reporter: Reporter | None = None,
    *,
    keep_model: bool = False,
    on_history: Callable[[dict], None] | None = None,
    early_stopping: bool = True,
) -> FitResult:
    """Clear Keras state, build, fit with per-epoch reports and early stopping, return metrics.

    Raises PruneRequested (after `on_history` saw the partial history) when the reporter
    says prune, TrialFailed on NaN, and whatever Keras raises (out of memory, ...).
    """
    keras.backend.clear_session()
    start = time.perf_counter()
    scale = data.baselines.age_scale
    model = build_trainable(model_cfg, train_cfg, age_scale=scale)
    report = EpochReport(data.baselines, reporter)
    callbacks: list[keras.callbacks.Callback] = [report]
    if early_stopping:  # off for a refit whose "val" is inside the training data: keep the last epoch
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_objective", mode="min", patience=train_cfg.patience, restore_best_weights=True)
        )
    fit_kwargs = dict(
        x=data.x_train,
        y={"age": age_targets(model_cfg, data.age_train, scale), "gender": data.gender_train},
        validation_data=(data.x_val, {"age": age_targets(model_cfg, data.age_val, scale), "gender": data.gender_val}),
        batch_size=train_cfg.batch_size,
        callbacks=callbacks,
        verbose=0,
    )
    freeze = model_cfg.backbone != "none" and train_cfg.freeze_epochs > 0
    try:
        if not freeze:
            model.fit(epochs=train_cfg.epochs, **fit_kwargs)
        else:
            # Freeze-then-unfreeze: Keras reads `trainable` at compile time, so the schedule is
            # two fits around a recompile (the Keras transfer-learning guide's recipe).
            backbone = _find_layer(model, "backbone")
            backbone.trainable = False
            compile_model(model, model_cfg, train_cfg, age_scale=scale)
            frozen = min(train_cfg.freeze_epochs, train_cfg.epochs)
            model.fit(epochs=frozen, **fit_kwargs)
            if frozen < train_cfg.epochs and not model.stop_training:
                backbone.trainable = True
                compile_model(model, model_cfg, train_cfg, age_scale=scale, learning_rate=train_cfg.learning_rate * train_cfg.finetune_lr_factor)
                model.fit(epochs=train_cfg.epochs, initial_epoch=frozen, **fit_kwargs)
    finally:
        if on_history is not None:
            on_history(report.history)
    h = report.history
    best = int(np.argmin(h["val_objective"]))
    return FitResult(
        history=h,
        best_epoch=best,
        val_age_mae=h["val_age_mae"][best],
        val_gender_accuracy=h["val_gender_accuracy"][best],
        objective=h["val_objective"][best],
        epochs_run=len(h["val_objective"]),
        seconds=time.perf_counter() - start,
        params=int(model.count_params()),
        model=_core_model(model) if keep_model else None,
    )


def _core_model(model: keras.Model) -> keras.Model:
    """The two-branch model without the augmentation wrapper that training put in front."""
    if model.name == "agesearch_train":
        return model.get_layer("agesearch_cnn")
    return model


def _find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            try:
                return _find_layer(layer, name)
            except KeyError:
                pass
    raise KeyError(name)
