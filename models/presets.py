"""The write-ups' final models and recipes as named, validated presets.

Published age/gender write-ups on the UTKFace 5k subset tuned one network each by hand. Each is a
`Preset`: a name, what it is, the write-up's own result, and `configs(image_size)` giving its
`(ModelConfig, TrainConfig)`. Where a write-up leaves a value open, the preset picks a plain one
and its docstring says so ("open: ..."); where agesearch's blocks cannot say exactly what the
write-up built, the docstring says what differs ("approximation: ..."). `agesearch run` enqueues
the presets that are points of its space as the study's first trials (`spaces.baseline_trials`),
so a search starts from the best known hand-made models instead of trying to rediscover them.

`agesearch presets --image-size PX` lists them with parameter counts. The counts in the
docstrings are at 64 px (`tests/models/test_presets.py` checks them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agesearch.models.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str  # registry name
    summary: str  # one line: what the model is
    reported: str  # the write-up's own result
    configs: Callable[[int], tuple[ModelConfig, TrainConfig]]  # image_size -> (model, training)


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, summary: str, reported: str) -> Callable:
    """Register `configs(image_size) -> (ModelConfig, TrainConfig)` as a preset named `name`."""

    def add(configs: Callable[[int], tuple[ModelConfig, TrainConfig]]) -> Callable:
        if name in PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        PRESETS[name] = Preset(name, summary, reported, configs)
        return configs

    return add


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def preset_names() -> list[str]:
    return list(PRESETS)


@register_preset("three-conv-mse", "3 convs (2 shared, 1 per branch), dropout, age MSE on years, gender BCE x500", "test 8.11 y / 87.7 % (128 px)")
def three_conv_mse(image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Write-up A: three conv layers with padding, the first two shared, one per branch.

    Each branch: one conv, one dense layer, its output. Dropout in the shared part and in each
    branch. Age MSE on years, gender BCE weighted 500x (age weight 1/500), 60 epochs, 128 px.
    Open: filters 32-64 shared and 128 per branch, 2x2 max pooling after each conv, no BatchNorm,
    dropout 0.2 after each conv block and 0.5 before the dense layers, dense 128, linear age
    output, Adam 1e-3, batch 64, horizontal flips.
    Parameters at 64 px: 2,264,770.
    """
    model = ModelConfig(
        image_size=image_size, shared_blocks=2, age_blocks=1, gender_blocks=1, filters=(32, 64, 128), gender_filters=(128,),
        block_order="conv_relu", block_dropout=0.2, dense_dropout=0.5, age_dense=128, gender_dense=128, age_output="years",
    )
    return model, TrainConfig(age_loss="mse", age_loss_weight=0.002, epochs=60)


@register_preset("deep-age-branch", "shared Conv32-Conv64 stem, age 5 blocks to 512, gender 3 blocks with L2", "val 6.95 y / 88 %")
def deep_age_branch(image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Write-up B: a two-conv shared stem, a deep age branch and a shallower regularised gender one.

    Stem: Conv 32 -> BN -> Conv 64 -> BN (3x3, same, ReLU in the conv), 2x2 max pooling.
    Age: 5 x (Conv -> ReLU -> BN -> MaxPool), filters 64, 64, 128, 256, 512; Flatten, Dense 128
    ReLU, Dropout 0.3, 1-unit ReLU output in years. Gender: 3 blocks, filters 64, 128, 256, L2 1e-3
    on its kernels; Flatten, Dense 128, Dropout 0.3, sigmoid. Adam 1e-3, MAE on years + BCE,
    horizontal flips, early stopping with patience 20 restoring the best weights.
    Open: batch 64, 30 epochs. Approximation: agesearch puts a branch's dropout before its dense
    layer, B after it; the L2 also covers the gender dense layer.
    Parameters at 64 px: 2,644,994.
    """
    model = ModelConfig(
        image_size=image_size, shared_blocks=1, shared_convs=2, age_blocks=5, gender_blocks=3,
        filters=(64, 64, 64, 128, 256, 512), gender_filters=(64, 128, 256), block_order="conv_relu_bn",
        dense_dropout=0.3, age_dense=128, gender_dense=128, gender_l2=1e-3, age_activation="relu", age_output="years",
    )
    return model, TrainConfig(patience=20, epochs=30)


@register_preset("independent-branches", "two independent branches 16-32-64-128, dropout per block, rotation", "val ~6.9 y / ~90 %")
def independent_branches(image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Write-up C: two branches straight from the input (split point 0).

    Blocks Conv -> ReLU -> BN -> MaxPool -> Dropout, filters 16, 32, 64, 128; Flatten, dense
    ReLU, linear age output on years; rotation and other augmentation.
    Open: one dense layer of 128 per branch with dropout 0.5 before it, block dropout 0.25, MAE
    age loss, Adam 1e-3, batch 64, flips, rotation +-18 degrees (0.05 turn), zoom 0.1.
    Parameters at 64 px: 721,602.
    """
    model = ModelConfig(
        image_size=image_size, shared_blocks=0, age_blocks=4, gender_blocks=4, filters=(16, 32, 64, 128),
        block_order="conv_relu_bn", block_dropout=0.25, dense_dropout=0.5, age_dense=128, gender_dense=128, age_output="years",
    )
    return model, TrainConfig(rotation=0.05, zoom=0.1, epochs=30)


@register_preset("double-conv-stem", "two shared double-conv blocks, 3 blocks per branch, age MSE x0.1", "val 6.93 y / 86 % (128 px)")
def double_conv_stem(image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Write-up D: a shared two-stage stem, then three conv stages per branch, at 128 px.

    Shared: Conv, Conv -> MaxPool -> BN, then Conv -> MaxPool. Each branch: 2 x (Conv -> MaxPool
    -> BN), a Conv, Flatten, dense and dropout. Adam, age MSE (on years) weighted 0.1, gender BCE
    weighted 1, batch 64, 50 epochs.
    Open: filters 32, 64 shared and 64, 128, 256 per branch, dense 128, dropout 0.5, Adam 1e-3.
    Approximation: each shared block has two convs (D's second has one) and every block is Conv
    -> ReLU -> BN -> pool (D normalises after pooling, and its last branch conv is not pooled).
    Parameters at 64 px: 1,111,554.
    """
    model = ModelConfig(
        image_size=image_size, shared_blocks=2, shared_convs=2, age_blocks=3, gender_blocks=3, filters=(32, 64, 64, 128, 256),
        block_order="conv_relu_bn", dense_dropout=0.5, age_dense=128, gender_dense=128, age_output="years",
    )
    return model, TrainConfig(age_loss="mse", age_loss_weight=0.1, epochs=50)


@register_preset("shared-trunk-128-64-32", "Conv 128-64-32-32 trunk, dense 512, dropout 0.6, split at the heads", "~7.8 y / 92.3 %")
def shared_trunk(image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Write-up E, the `train` space's model: a shared trunk, split only at the two heads.

    Conv 128-64-32-32, each Conv -> BN -> ReLU -> MaxPool; Flatten, Dropout 0.6, Dense 512.
    Age normalised, MSE weighted 2x.
    Open: Adam 1e-3, batch 64, flips. Approximation: E's Dense 512 -> BN -> ReLU has no BN here,
    and its age is scaled by the train mean age instead of to [0, 1] (a constant factor).
    Parameters at 64 px: 632,194.
    """
    model = ModelConfig(
        image_size=image_size, shared_blocks=4, age_blocks=0, gender_blocks=0, filters=(128, 64, 32, 32),
        block_order="conv_bn_relu", dense_dropout=0.6, age_dense=512, gender_dense=512,
    )
    return model, TrainConfig(age_loss="mse", age_loss_weight=2.0, epochs=30)
