"""`train`: the training knobs, on a fixed model (write-up E's network)."""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig, TrainConfig
from agesearch.models.presets import get_preset
from agesearch.spaces import register_space

TRAIN_PRESET = "shared-trunk-128-64-32"


def seed_model(image_size: int) -> ModelConfig:
    """Write-up E: Conv 128-64-32-32, BN then ReLU, max pooling, shared trunk, dense 512, dropout 0.6."""
    return get_preset(TRAIN_PRESET).configs(image_size)[0]


def sample_training(trial: optuna.Trial) -> TrainConfig:
    """Sample how to train; see `train` for the values each parameter takes."""
    return TrainConfig(
        optimizer=trial.suggest_categorical("optimizer", ["adam", "adamw", "rmsprop", "sgd"]),
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        lr_schedule=trial.suggest_categorical("lr_schedule", ["constant", "plateau", "cosine"]),
        batch_size=trial.suggest_categorical("batch_size", [32, 64, 128]),
        age_loss_weight=trial.suggest_float("age_loss_weight", 1e-3, 10.0, log=True),
        age_loss=trial.suggest_categorical("age_loss", ["mse", "mae", "huber"]),
        age_weighting=trial.suggest_categorical("age_weighting", ["none", "sqrt_inverse", "inverse"]),
        flip=trial.suggest_categorical("flip", [True, False]),
        rotation=trial.suggest_float("rotation", 0.0, 0.1, step=0.025),
        zoom=trial.suggest_float("zoom", 0.0, 0.2, step=0.05),
        brightness=trial.suggest_float("brightness", 0.0, 0.2, step=0.05),
        translation=trial.suggest_float("translation", 0.0, 0.1, step=0.05),
        contrast=trial.suggest_float("contrast", 0.0, 0.2, step=0.1),
        precision=trial.suggest_categorical("precision", ["float32", "mixed_bfloat16"]),
    )


TRAINING_PARAMS = ("optimizer", "learning_rate", "lr_schedule", "batch_size", "age_loss_weight", "age_loss", "age_weighting",
                   "flip", "rotation", "zoom", "brightness", "translation", "contrast", "precision")
# The optimisation recipe: what a write-up tuned for its own epochs and image size, and so what
# least carries over to a run with other ones (the sampler moves these most often).
RECIPE_PARAMS = ("learning_rate", "lr_schedule", "batch_size", "optimizer")


def training_params(t: TrainConfig) -> dict:
    """The `train` parameters that give back `t` (the inverse of `sample_training`)."""
    return {name: getattr(t, name) for name in TRAINING_PARAMS}


def train_params(model: ModelConfig, train: TrainConfig) -> dict:
    return training_params(train)


@register_space("train", to_params=train_params)
def train(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Training knobs on the fixed write-up model (Conv 128-64-32-32, BN-ReLU, dense 512, dropout 0.6).

    Parameters:
        optimizer: adam, adamw, rmsprop, sgd (Nesterov momentum 0.9).
        learning_rate: 1e-4-1e-2 (log). lr_schedule: constant, plateau (halve after 3 epochs
            without improvement), cosine (decay to 0 over the epochs). batch_size: 32, 64, 128.
        age_loss_weight: 1e-3-10 (log), the gender loss weighs 1. age_loss: mse, mae, huber.
        age_weighting: none, sqrt_inverse, inverse (age loss weighted by the inverse train
            frequency of the image's age decade, or its square root: the old-age tail).
        flip: True, False. rotation: 0-0.1 of a turn, step 0.025. zoom: 0-0.2 step 0.05.
        brightness: 0-0.2 step 0.05. translation: 0-0.1 of the side, step 0.05.
        contrast: 0-0.2 step 0.1. precision: float32, mixed_bfloat16.
    """
    return seed_model(image_size), sample_training(trial)
