"""`full`: the model's and the training's knobs together, plus pretrained backbones."""

from __future__ import annotations

import dataclasses

import optuna

from agesearch.models.config import BACKBONE_MIN_SIZE, ModelConfig, TrainConfig
from agesearch.spaces import register_space
from agesearch.spaces.arch import sample_age_head, sample_model
from agesearch.spaces.train import sample_training


def sample_backbone_model(trial: optuna.Trial, image_size: int, backbone: str) -> ModelConfig:
    """A Keras application as the shared trunk, with the two branch heads on top."""
    return ModelConfig(
        image_size=image_size,
        shared_blocks=0,
        age_blocks=0,
        gender_blocks=0,
        filters=(),
        backbone=backbone,
        head=trial.suggest_categorical("head", ["flatten", "gap"]),
        dense_dropout=trial.suggest_float("dense_dropout", 0.0, 0.7, step=0.1),
        age_dense=trial.suggest_categorical("age/dense", [64, 128, 256, 512]),
        gender_dense=trial.suggest_categorical("gender/dense", [64, 128, 256, 512]),
        l2=trial.suggest_float("l2", 1e-6, 1e-3, log=True),
        **sample_age_head(trial),
    )


def backbone_choices(image_size: int) -> list[str]:
    return ["none"] + [name for name, smallest in BACKBONE_MIN_SIZE.items() if image_size >= smallest]


@register_space("full")
def full(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Every parameter of `arch` and of `train`, plus a pretrained backbone as the trunk.

    Parameters (besides those of `arch` and `train`, same values):
        backbone: none (the two-branch CNN of `arch`), resnet50, mobilenetv3small,
            efficientnetb0, inceptionv3 (>= 75 px only). Weights come from
            `agesearch run --backbone-weights` (imagenet | none | PATH).
        freeze_epochs (backbone only): 0-3 epochs with the backbone frozen, then fine-tuning
            at 0.1x the learning rate.
    """
    backbone = trial.suggest_categorical("backbone", backbone_choices(image_size))
    if backbone == "none":
        model = sample_model(trial, image_size)
    else:
        model = sample_backbone_model(trial, image_size, backbone)
    train = sample_training(trial)
    if backbone != "none":
        train = dataclasses.replace(train, freeze_epochs=trial.suggest_int("freeze_epochs", 0, 3))
    return model, train
