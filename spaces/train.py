"""`train`: the training knobs, on a fixed model like the classic write-ups' network."""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig, TrainConfig
from agesearch.spaces import register_space


def seed_model(image_size: int) -> ModelConfig:
    """Conv 128-64-32-32, BN then ReLU, max pooling, shared trunk, dense 512, dropout 0.6."""
    return ModelConfig(
        image_size=image_size,
        shared_blocks=4,
        age_blocks=0,
        gender_blocks=0,
        filters=(128, 64, 32, 32),
        block_order="conv_bn_relu",
        pooling="max",
        head="flatten",
        dense_dropout=0.6,
        age_dense=512,
        gender_dense=512,
    )


def sample_training(trial: optuna.Trial) -> TrainConfig:
    """Sample how to train; see `train` for the values each parameter takes."""
    optimizer = trial.suggest_categorical("optimizer", ["adam", "adamw", "rmsprop", "sgd"])
    return TrainConfig(
        optimizer=optimizer,
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", [32, 64, 128]),
        age_loss_weight=trial.suggest_float("age_loss_weight", 0.1, 10.0, log=True),
        age_loss=trial.suggest_categorical("age_loss", ["mse", "mae", "huber"]),
        flip=trial.suggest_categorical("flip", [True, False]),
        rotation=trial.suggest_float("rotation", 0.0, 0.1, step=0.025),
        zoom=trial.suggest_float("zoom", 0.0, 0.2, step=0.05),
        brightness=trial.suggest_float("brightness", 0.0, 0.2, step=0.05),
        translation=trial.suggest_float("translation", 0.0, 0.1, step=0.05),
        contrast=trial.suggest_float("contrast", 0.0, 0.2, step=0.1),
    )


@register_space("train")
def train(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Training knobs on the fixed write-up model (Conv 128-64-32-32, BN-ReLU, dense 512, dropout 0.6).

    Parameters:
        optimizer: adam, adamw, rmsprop, sgd (Nesterov momentum 0.9).
        learning_rate: 1e-4-1e-2 (log). batch_size: 32, 64, 128.
        age_loss_weight: 0.1-10 (log), the gender loss weighs 1. age_loss: mse, mae, huber.
        flip: True, False. rotation: 0-0.1 of a turn, step 0.025. zoom: 0-0.2 step 0.05.
        brightness: 0-0.2 step 0.05. translation: 0-0.1 of the side, step 0.05.
        contrast: 0-0.2 step 0.1.
    """
    return seed_model(image_size), sample_training(trial)
