"""`full`: the model's and the training's knobs together."""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig
from agesearch.search.train_config import TrainConfig
from agesearch.spaces import register_space
from agesearch.spaces.arch import sample_model
from agesearch.spaces.train import sample_training


@register_space("full")
def full(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Every parameter of `arch` and of `train`, with the same values."""
    return sample_model(trial, image_size), sample_training(trial)
