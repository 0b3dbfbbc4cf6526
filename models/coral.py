"""CORAL ordinal age head: K-1 binary "older than rank k" tasks with one shared weight vector
and K-1 independent biases, rank-consistent by construction.

Cao, Mirjalili, Raschka, "Rank consistent ordinal regression for neural networks with
application to age estimation" (arXiv 1901.07884). Keras has no CORAL layer, and the
coral-pytorch / coral-ordinal packages are tied to one framework, so the layer, loss, metric
and decoder are written here in backend-neutral `keras.ops`, registered as serialisable so a
saved model loads with `keras.saving.load_model` once `agesearch.models` is imported.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

PACKAGE = "agesearch"


def coral_levels(ages: np.ndarray, min_age: int, max_age: int) -> np.ndarray:
    """Encode ages as rank levels: row i, column k is 1 when age_i - min_age > k.

    Ages outside [min_age, max_age] are clipped. Shape (n, max_age - min_age).
    """
    ranks = np.clip(np.asarray(ages, dtype=np.int64), min_age, max_age) - min_age
    return (ranks[:, None] > np.arange(max_age - min_age)[None, :]).astype(np.float32)


def levels_to_age(levels_or_probs: np.ndarray, min_age: int) -> np.ndarray:
    """Decode: the predicted age is min_age plus the number of ranks passed (p > 0.5)."""
    return min_age + (np.asarray(levels_or_probs) > 0.5).sum(axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CoralLogits(keras.layers.Layer):
    """Features -> K-1 logits: one shared weight vector, one bias per rank threshold."""

    def __init__(self, num_thresholds: int, **kwargs):
        super().__init__(**kwargs)
        self.num_thresholds = int(num_thresholds)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 1), initializer="glorot_uniform", name="kernel")
        # Biases start decreasing, so the initial prediction is the middle rank rather than
        # all-or-nothing; the paper initialises them to zero, which trains too, just slower.
        start = np.linspace(2.0, -2.0, self.num_thresholds).astype("float32")
        self.bias = self.add_weight(shape=(self.num_thresholds,), initializer=keras.initializers.Constant(start), name="bias")

    def call(self, x):
        return ops.matmul(x, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_thresholds)

    def get_config(self):
        return {**super().get_config(), "num_thresholds": self.num_thresholds}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CoralAge(keras.layers.Layer):
    """K-1 logits -> age in years: min_age + number of thresholds with sigmoid > 0.5."""

    def __init__(self, min_age: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.min_age = int(min_age)

    def call(self, logits):
        passed = ops.cast(ops.greater(logits, 0.0), "float32")  # sigmoid(z) > 0.5  <=>  z > 0
        return self.min_age + ops.sum(passed, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "min_age": self.min_age}


@keras.saving.register_keras_serializable(package=PACKAGE)
def coral_loss(levels, logits):
    """Per-sample CORAL loss, averaged (not summed) over the K-1 tasks.

    The paper sums over tasks; the mean keeps the age loss on the scale of the gender
    cross-entropy, so `age_loss_weight` means the same for both age heads.
    """
    levels = ops.cast(levels, logits.dtype)
    log_p = ops.log_sigmoid(logits)
    log_not_p = log_p - logits  # log(1 - sigmoid(z)) = log_sigmoid(z) - z
    return -ops.mean(levels * log_p + (1.0 - levels) * log_not_p, axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CoralMAE(keras.metrics.Metric):
    """Mean absolute age error of the decoded ranks, divided by `scale`.

    Named "mae" and divided by the same age scale as the regression head's MAE, so the
    per-epoch reports convert both to years the same way.
    """

    def __init__(self, scale: float = 1.0, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true_rank = ops.sum(ops.cast(y_true, "float32"), axis=-1)
        pred_rank = ops.sum(ops.cast(ops.greater(y_pred, 0.0), "float32"), axis=-1)
        err = ops.abs(true_rank - pred_rank) / self.scale
        self.total.assign_add(ops.sum(err))
        self.count.assign_add(ops.cast(ops.shape(err)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
