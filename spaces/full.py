"""`full` and `cnn`: the model's and the training's knobs together (`full` adds pretrained backbones)."""

from __future__ import annotations

import dataclasses

import optuna

from agesearch.models.config import BACKBONE_MIN_SIZE, ModelConfig, TrainConfig
from agesearch.spaces import register_space
from agesearch.spaces.arch import DENSE, L2, model_params, sample_age_head, sample_model
from agesearch.spaces.train import sample_training, training_params


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
        age_dense=trial.suggest_categorical("age/dense", DENSE),
        gender_dense=trial.suggest_categorical("gender/dense", DENSE),
        l2=trial.suggest_categorical("age/l2", L2),
        gender_l2=trial.suggest_categorical("gender/l2", L2),
        **sample_age_head(trial),
    )


def backbone_choices(image_size: int) -> list[str]:
    return ["none"] + [name for name, smallest in BACKBONE_MIN_SIZE.items() if image_size >= smallest]


def full_params(model: ModelConfig, train: TrainConfig) -> dict:
    return {"backbone": model.backbone, **model_params(model), **training_params(train)}


def cnn_params(model: ModelConfig, train: TrainConfig) -> dict:
    return {**model_params(model), **training_params(train)}


@register_space("full", to_params=full_params)
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


@register_space("cnn", to_params=cnn_params)
def cnn(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Every parameter of `arch` and of `train` together: the two-branch CNN, no pretrained backbone.

    The space to search when no ImageNet weights can be had (offline machines) or the images are
    small: every write-up preset is a point of it. Parameters and values: those of `arch` and `train`.
    """
    return sample_model(trial, image_size), sample_training(trial)
