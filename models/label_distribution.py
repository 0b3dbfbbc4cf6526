"""DLDL-v2 age head: a softmax over the whole-year ages, read out as its expectation.

Gao, Zhou, Wu, Geng, "Age Estimation Using Expectation of Label Distribution Learning"
(IJCAI 2018, "DLDL-v2"). The age branch ends in one logit per age min_age..max_age; the
loss is the KL divergence from a Gaussian label distribution centred on the true age (width
`sigma` years) to the predicted distribution, plus an L1 term on the predicted expectation;
the predicted age is that expectation, sum_k p_k * age_k. DLDL-v2 was picked over the
mean-variance loss (Pan et al. 2018) because its two terms are plain and need no extra
weights to tune: one KL, one L1 with weight 1 as in the paper.

The layer, loss and metric are written in backend-neutral `keras.ops` and registered as
serialisable, as the CORAL head's are (models/coral.py).
"""

from __future__ import annotations

import keras
from keras import ops

from agesearch.models.coral import PACKAGE


def label_log_distribution(ages, min_age: int, max_age: int, sigma: float):
    """Log of the Gaussian label distribution over ages min_age..max_age, one row per age.

    Ages outside the range are clipped to it. Computed in log space, so the far tails are
    large negative numbers rather than exp() underflowing to 0 (0 * log 0 is NaN in the KL).
    Shape (n, max_age - min_age + 1).
    """
    ages = ops.clip(ops.reshape(ops.cast(ages, "float32"), (-1, 1)), float(min_age), float(max_age))
    grid = ops.cast(ops.arange(min_age, max_age + 1), "float32")[None, :]
    score = -ops.square(grid - ages) / (2.0 * sigma**2)
    return score - ops.logsumexp(score, axis=-1, keepdims=True)


def expected_age(logits, min_age: int):
    """The predicted age in years: the expectation of softmax(logits) over min_age, min_age+1, ..."""
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    grid = ops.cast(ops.arange(ops.shape(logits)[-1]), "float32") + float(min_age)
    return ops.sum(probs * grid, axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpectedAge(keras.layers.Layer):
    """Age logits -> age in years, shape (n, 1): the expectation of their softmax."""

    def __init__(self, min_age: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.min_age = int(min_age)

    def call(self, logits):
        return ops.expand_dims(expected_age(logits, self.min_age), -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)

    def get_config(self):
        return {**super().get_config(), "min_age": self.min_age}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DLDLLoss(keras.losses.Loss):
    """Per-image DLDL-v2 loss: KL(label distribution || softmax(logits)) + l1_weight * |E - age|, in years.

    `y_true` is the age in years, shape (n,) or (n, 1); `y_pred` the age logits. As in the
    paper (Gao et al. 2018, eq. 8) the L1 term is on the expectation in years with weight
    lambda = `l1_weight` = 1, whatever the model config's `age_output` says (that setting is
    the regression head's). The loss is therefore in years-sized units (|E - age| is ~5-10 at
    the start of training), larger than a normalised regression loss: the same
    `age_loss_weight` weighs the DLDL head's age loss more than the regression head's.

    `age_scale` is accepted and ignored: losses saved before it stopped dividing the L1 term
    (a compiled model's config holds it) still deserialize.
    """

    def __init__(self, min_age: int = 0, max_age: int = 116, sigma: float = 2.0, age_scale: float | None = None, l1_weight: float = 1.0, name: str = "dldl", **kwargs):
        super().__init__(name=name, **kwargs)
        del age_scale  # ignored; see the docstring
        self.min_age, self.max_age = int(min_age), int(max_age)
        self.sigma, self.l1_weight = float(sigma), float(l1_weight)

    def call(self, y_true, y_pred):
        log_q = label_log_distribution(y_true, self.min_age, self.max_age, self.sigma)
        log_p = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        kl = ops.sum(ops.exp(log_q) * (log_q - log_p), axis=-1)
        # The expectation lives in min_age..max_age, so it is compared with the clipped age.
        age = ops.clip(ops.reshape(ops.cast(y_true, "float32"), (-1,)), float(self.min_age), float(self.max_age))
        l1 = ops.abs(expected_age(y_pred, self.min_age) - age)  # years, as the paper's
        return kl + self.l1_weight * l1

    def get_config(self):
        return {
            **super().get_config(),
            "min_age": self.min_age,
            "max_age": self.max_age,
            "sigma": self.sigma,
            "l1_weight": self.l1_weight,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpectedAgeMAE(keras.metrics.Mean):
    """Mean absolute error of the expected age, divided by `scale`; `y_true` in years.

    Named "mae" and divided by the same age scale as the other heads' MAE, so the per-epoch
    reports convert every head's metric to years the same way (as CoralMAE does).
    """

    def __init__(self, min_age: int = 0, scale: float = 1.0, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.min_age, self.scale = int(min_age), float(scale)

    def update_state(self, y_true, y_pred, sample_weight=None):
        age = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        return super().update_state(ops.abs(expected_age(y_pred, self.min_age) - age) / self.scale, sample_weight)

    def get_config(self):
        return {**super().get_config(), "min_age": self.min_age, "scale": self.scale}
