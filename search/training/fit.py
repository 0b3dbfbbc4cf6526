"""Training: the prepared arrays and one Keras fit with per-epoch reports (knows nothing of Optuna)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from agesearch.models import ModelConfig, build_model
from agesearch.models.coral import CoralMAE, coral_levels, coral_loss
from agesearch.models.label_distribution import DLDLLoss, ExpectedAgeMAE
from agesearch.search.data.images import FaceDataset, Split
from agesearch.models.config import TrainConfig
from agesearch.search.training.metrics import Baselines, combined_objective  # noqa: F401  (re-exported: training's callers use them)


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
    """Raised out of `fit` when the reporter says prune; `train_configs` turns it into a PRUNED outcome."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (objective {value:.4f})")
        self.epoch, self.value = epoch, value


class EpochReport(keras.callbacks.Callback):
    """Converts the epoch's val metrics to years and the objective, records them, reports them.

    optuna-integration's KerasPruningCallback only reads a logs key and talks to the trial
    directly; ours also keeps the per-epoch history for the study and reports through a plain
    function, so the same code runs under a driver that owns the study (Ray workers).
    It must come first in the callback list: it writes `val_objective` (and the age MAEs in years,
    for TensorBoard) into the logs the others read. A prune it is told is raised by
    `PruneAtEpochEnd`, last in the list, so that the loggers still write the trial's last epoch.
    """

    def __init__(self, baselines: Baselines, reporter: Reporter | None, age_scale: float):
        super().__init__()
        self.b = baselines
        self.reporter = reporter
        self.age_scale = age_scale  # years per unit of the age metrics in logs
        self.history: dict[str, list[float]] = {}
        self.prune: PruneRequested | None = None  # set when the reporter says prune

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        scale = self.age_scale
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
        row["learning_rate"] = _current_learning_rate(self.model.optimizer)
        row["seconds"] = time.perf_counter() - getattr(self, "epoch_start", time.perf_counter())  # with the val pass
        logs["val_objective"] = value
        logs["age_mae_years"], logs["val_age_mae_years"] = row["age_mae"], row["val_age_mae"]
        for key, v in row.items():
            self.history.setdefault(key, []).append(float(v))
        if self.reporter is not None and self.reporter(epoch, value):
            self.prune = PruneRequested(epoch, value)


class PruneAtEpochEnd(keras.callbacks.Callback):
    """Raises the prune EpochReport was told, once every other callback has seen the epoch."""

    def __init__(self, report: EpochReport):
        super().__init__()
        self.report = report

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.report.prune is not None:
            raise self.report.prune


def _current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


def make_optimizer(cfg: TrainConfig, learning_rate: float | None = None, *, decay_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The configured optimizer; with `lr_schedule="cosine"` its rate decays to 0 over `decay_steps`."""
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.lr_schedule == "cosine" and decay_steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=decay_steps)
    # Weight averaging is Keras' own (Polyak averaging in the optimizer); `_callbacks` swaps the
    # average in for validation and for what the fit keeps.
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if cfg.ema_momentum > 0 else {}
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, **ema)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, **ema)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **ema)


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


def build_trainable(
    model_cfg: ModelConfig, train_cfg: TrainConfig, *, age_scale: float = 1.0, learning_rate: float | None = None, age_weights: np.ndarray | None = None, decay_steps: int | None = None
) -> keras.Model:
    """The search model with augmentation in front, compiled.

    The regression head learns age / age_scale with the configured loss; the CORAL head
    learns rank levels with the CORAL loss, the DLDL head ages in years with the DLDL-v2 loss;
    their "mae" metrics are divided by age_scale too, so `val_age_mae * age_scale` is years for all.
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
    compile_model(model, model_cfg, train_cfg, age_scale=age_scale, learning_rate=learning_rate, age_weights=age_weights, decay_steps=decay_steps)
    return model


def compile_model(
    model: keras.Model,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    age_scale: float,
    learning_rate: float | None = None,
    age_weights: np.ndarray | None = None,
    decay_steps: int | None = None,
) -> None:
    """Compile with the configured losses; `age_weights` (per decade) weight the regression age loss.

    The total loss is `gender BCE + age_loss_weight * age loss`, the age loss per head:
    regression, the configured loss on age / age_scale; CORAL, its rank cross-entropy; DLDL,
    DLDL-v2 as the paper defines it, KL(label distribution || softmax) + |E - age| in years
    (lambda = 1, `age_scale` plays no part in it). Every head's "mae" metric is divided by
    `age_scale`, so EpochReport's `* age_scale` gives years for all.
    """
    if model_cfg.age_head == "coral":
        age_loss, age_metric = coral_loss, CoralMAE(scale=age_scale, name="mae")
    elif model_cfg.age_head == "dldl":
        age_loss = DLDLLoss(model_cfg.dldl_min_age, model_cfg.dldl_max_age, model_cfg.dldl_sigma)
        age_metric = ExpectedAgeMAE(model_cfg.dldl_min_age, scale=age_scale)
    else:
        age_loss = AGE_LOSS_FUNCTIONS[train_cfg.age_loss]
        if age_weights is not None:
            age_loss = DecadeWeightedLoss(age_loss, age_weights, age_scale)
        age_metric = "mae"
    # One batch per compiled call by default: measured on an H200 (JAX, write-up B, 64 px), 8 per
    # call gave no faster steady epoch (0.43 s vs 0.40 s bare) and a compile twice as long (20 s
    # vs 10 s, longer than 30 epochs of training); on TensorFlow's CPU 8 per call was 1.7x slower.
    # The PyTorch backend runs one step per call whatever is asked.
    spe = train_cfg.steps_per_execution if keras.backend.backend() != "torch" else 1
    model.compile(
        steps_per_execution=spe,
        optimizer=make_optimizer(train_cfg, learning_rate, decay_steps=decay_steps),
        loss={"age": age_loss, "gender": "binary_crossentropy"},
        loss_weights={"age": train_cfg.age_loss_weight, "gender": 1.0},
        metrics={"age": [age_metric], "gender": ["accuracy"]},
    )


# The age losses as per-image functions (Keras reduces them over the batch itself).
AGE_LOSS_FUNCTIONS = {"mse": keras.losses.mean_squared_error, "mae": keras.losses.mean_absolute_error, "huber": keras.losses.huber}


class DecadeWeightedLoss(keras.losses.Loss):
    """A regression age loss with each image weighted by its true age decade.

    Keras' `sample_weight` weighs every output's loss alike; this weighs the age loss only, so
    rare old faces pull on the age head without changing the gender head's balance.
    """

    def __init__(self, base: Callable, decade_weights: np.ndarray, age_scale: float, **kwargs):
        super().__init__(name=f"decade_weighted_{base.__name__}", **kwargs)
        self.base = base
        self.decade_weights = np.asarray(decade_weights, np.float32)
        self.age_scale = float(age_scale)

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1, 1))  # targets arrive as (batch,)
        y_pred = ops.reshape(y_pred, (-1, 1))
        decade = ops.clip(ops.cast(ops.floor(y_true[:, 0] * self.age_scale / 10.0), "int32"), 0, len(self.decade_weights) - 1)
        weight = ops.take(ops.convert_to_tensor(self.decade_weights), decade)
        per_image = self.base(y_true, y_pred)  # the per-image loss function, before any reduction
        return per_image * ops.cast(weight, per_image.dtype)


def decade_weights(ages: np.ndarray, weighting: str) -> np.ndarray | None:
    """Per-decade age-loss weights from the train ages: inverse (or its square root) frequency.

    Normalised so that the mean weight over the train images is 1 (the loss keeps its scale).
    Decades 0..11 (0-9 ... 110-119); a decade with no train image gets the largest weight seen.
    """
    if weighting == "none":
        return None
    counts = np.bincount(np.clip(ages // 10, 0, 11).astype(int), minlength=12).astype(np.float64)
    power = 0.5 if weighting == "sqrt_inverse" else 1.0
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    w[counts == 0] = w.max()
    w /= np.sum(w * counts) / np.sum(counts)
    return w.astype(np.float32)


def age_targets(model_cfg: ModelConfig, ages: np.ndarray, age_scale: float) -> np.ndarray:
    """What the age output learns: age / age_scale, CORAL rank levels, or (DLDL) the age in years."""
    if model_cfg.age_head == "coral":
        return coral_levels(ages, model_cfg.coral_min_age, model_cfg.coral_max_age)
    if model_cfg.age_head == "dldl":  # the DLDL loss builds the label distribution from the age itself
        return np.asarray(ages, dtype=np.float32)
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
    val_age_mae_by_decade: dict[str, float] = field(default_factory=dict)  # best epoch's val MAE per true-age decade
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
    tensorboard: str | None = None,
) -> FitResult:
    """Clear Keras state, build, fit with per-epoch reports and early stopping, return metrics.

    With `tensorboard` (a folder), Keras' TensorBoard callback writes the epochs' logs there
    (`train/` and `validation/`, the age MAEs also in years, `val_objective` as `objective`).
    Raises PruneRequested (after `on_history` saw the partial history) when the reporter
    says prune, TrialFailed on NaN, and whatever Keras raises (out of memory, ...).
    """
    keras.backend.clear_session()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Each trial builds new tf.functions by design; TensorFlow's "N out of the last N calls
        # triggered tf.function retracing" warning would greet every trial after the fifth.
        tf.get_logger().setLevel("ERROR")
    if train_cfg.seed is not None:
        # After clear_session, which forgets Keras' global seed: weights, fit's shuffling, the
        # augmentation layers and dropout all draw from the generators this seeds.
        keras.utils.set_random_seed(train_cfg.seed)
    keras.mixed_precision.set_global_policy(train_cfg.precision)
    try:
        return _fit(model_cfg, train_cfg, data, reporter, keep_model=keep_model, on_history=on_history, early_stopping=early_stopping,
                    tensorboard=tensorboard)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _callbacks(train_cfg: TrainConfig, report: EpochReport, early_stopping: bool, tensorboard: str | None = None) -> list[keras.callbacks.Callback]:
    """EpochReport first: it writes `val_objective` into the logs that the others read; a prune is
    raised last (PruneAtEpochEnd), after TensorBoard wrote the epoch.

    With `ema_momentum`, Keras' SwapEMAWeights comes before all of them: val is scored on the
    moving average, and (`swap_on_epoch`) the average is in the model at each epoch's end, so
    EarlyStopping keeps the best epoch's average and a fit that runs to its last epoch ends on it.
    """
    callbacks: list[keras.callbacks.Callback] = [report]
    if train_cfg.ema_momentum > 0:
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if tensorboard is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=tensorboard))
    if train_cfg.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_objective", mode="min", factor=0.5, patience=3, min_lr=train_cfg.learning_rate / 64))
    if early_stopping:  # off for a refit whose "val" is inside the training data: keep the last epoch
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_objective", mode="min", patience=train_cfg.early_stopping_patience, restore_best_weights=True)
        )
    return [*callbacks, PruneAtEpochEnd(report)]


def _close_boards(callbacks: list[keras.callbacks.Callback]) -> None:
    """Close TensorBoard's event files after a fit that raised (pruned, NaN): Keras calls
    `on_train_end`, which closes them, only after a fit that returns."""
    for board in callbacks:
        if isinstance(board, keras.callbacks.TensorBoard) and board.model is not None:
            board.on_train_end()


def _fit(model_cfg, train_cfg, data, reporter, *, keep_model, on_history, early_stopping, tensorboard=None) -> FitResult:
    start = time.perf_counter()
    scale = model_cfg.age_target_scale(data.baselines.age_scale)
    steps_per_epoch = math.ceil(len(data.x_train) / train_cfg.batch_size)
    steps = steps_per_epoch * train_cfg.epochs
    weights = decade_weights(data.age_train, train_cfg.age_weighting)
    model = build_trainable(model_cfg, train_cfg, age_scale=scale, age_weights=weights, decay_steps=steps)
    if model_cfg.age_head == "regression":
        start_age_at_mean(_core_model(model), float(np.mean(data.age_train)) / scale)
    report = EpochReport(data.baselines, reporter, scale)
    fit_kwargs = dict(
        x=data.x_train,
        y={"age": age_targets(model_cfg, data.age_train, scale), "gender": data.gender_train},
        validation_data=(data.x_val, {"age": age_targets(model_cfg, data.age_val, scale), "gender": data.gender_val}),
        batch_size=train_cfg.batch_size,
        callbacks=_callbacks(train_cfg, report, early_stopping, tensorboard),
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
            compile_model(model, model_cfg, train_cfg, age_scale=scale, age_weights=weights, decay_steps=steps)
            frozen = min(train_cfg.freeze_epochs, train_cfg.epochs)
            model.fit(epochs=frozen, **fit_kwargs)
            if frozen < train_cfg.epochs and not model.stop_training:
                backbone.trainable = True
                lr = train_cfg.learning_rate * train_cfg.finetune_lr_factor
                # A new optimizer starts counting at 0: its cosine decays over the epochs left.
                rest = steps_per_epoch * (train_cfg.epochs - frozen)
                compile_model(model, model_cfg, train_cfg, age_scale=scale, learning_rate=lr, age_weights=weights, decay_steps=rest)
                model.fit(epochs=train_cfg.epochs, initial_epoch=frozen, **fit_kwargs)
    except BaseException:
        _close_boards(fit_kwargs["callbacks"])
        raise
    finally:
        if on_history is not None:
            on_history(report.history)
    h = report.history
    best = int(np.argmin(h["val_objective"]))
    core = _core_model(model)
    return FitResult(
        history=h,
        best_epoch=best,
        val_age_mae=h["val_age_mae"][best],
        val_gender_accuracy=h["val_gender_accuracy"][best],
        objective=h["val_objective"][best],
        epochs_run=len(h["val_objective"]),
        seconds=time.perf_counter() - start,
        params=int(model.count_params()),
        val_age_mae_by_decade=_val_mae_by_decade(core, model_cfg, data),
        model=core if keep_model else None,
    )


def start_age_at_mean(core: keras.Model, mean_target: float) -> None:
    """Set the regression age output's bias to the mean train target, so training starts there.

    With the output in years and a zero bias, a model first spends hundreds of steps climbing
    from 0 to ~33 years, and a ReLU output can start (and stay) dead; starting at the mean costs
    nothing and removes both (the usual "init the output bias to the target mean" advice).
    """
    layer = core.get_layer("age")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, mean_target)])


def _val_mae_by_decade(core: keras.Model, model_cfg: ModelConfig, data: TrainingData) -> dict[str, float]:
    """The restored (best) weights' val age MAE per true-age decade, in years."""
    from agesearch.models.inference import inference_model
    from agesearch.search.training.metrics import per_decade_mae, predict_age_gender

    if model_cfg.age_head == "regression":  # no wrapper model: one predict compile fewer per trial
        out = core.predict(data.x_val, batch_size=256, verbose=0)["age"]
        pred_age = np.asarray(out, dtype=float).reshape(-1) * model_cfg.age_target_scale(data.baselines.age_scale)
    else:
        pred_age, _ = predict_age_gender(inference_model(core, model_cfg, data.baselines.age_scale), data.x_val)
    return {k: round(v, 3) for k, v in per_decade_mae(data.age_val, pred_age)[0].items()}


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
