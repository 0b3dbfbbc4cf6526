"""`arch`: the model's knobs; training fixed at good defaults."""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig, TrainConfig, filter_schedule, max_depth
from agesearch.spaces import register_space


def depth_range(image_size: int) -> tuple[int, int]:
    """Blocks from input to the end of a branch: the last map is 2-16 px, at most 6 blocks."""
    deepest = min(6, max_depth(image_size))
    return max(2, min(deepest, max_depth(image_size) - 3)), deepest


def sample_model(trial: optuna.Trial, image_size: int) -> ModelConfig:
    """Sample a two-branch CNN; see `arch` for the values each parameter takes."""
    low, high = depth_range(image_size)
    depth = trial.suggest_int("depth", low, high)
    shared = trial.suggest_int("shared_blocks", 0, depth - 1)
    age_blocks = depth - shared
    gender_blocks = trial.suggest_int("gender_blocks", 1 if shared == 0 else 0, depth - shared)
    base = trial.suggest_categorical("base_filters", [16, 32, 64, 128])
    order = trial.suggest_categorical("filter_order", ["increasing", "decreasing", "constant"])
    return ModelConfig(
        image_size=image_size,
        shared_blocks=shared,
        age_blocks=age_blocks,
        gender_blocks=gender_blocks,
        filters=filter_schedule(base, order, depth),
        kernel_size=trial.suggest_categorical("kernel_size", [3, 5]),
        block_order=trial.suggest_categorical("block_order", ["conv_bn_relu", "conv_relu_bn", "conv_relu"]),
        pooling=trial.suggest_categorical("pooling", ["max", "avg"]),
        block_dropout=trial.suggest_float("block_dropout", 0.0, 0.3, step=0.05),
        head=trial.suggest_categorical("head", ["flatten", "gap"]),
        dense_dropout=trial.suggest_float("dense_dropout", 0.0, 0.7, step=0.1),
        age_dense=trial.suggest_categorical("age/dense", [64, 128, 256, 512]),
        gender_dense=trial.suggest_categorical("gender/dense", [64, 128, 256, 512]),
        l2=trial.suggest_float("l2", 1e-6, 1e-3, log=True),
        **sample_age_head(trial),
    )


def sample_age_head(trial: optuna.Trial) -> dict:
    """The age head: regression (with a linear or ReLU output) or CORAL ordinal ranks 0..116."""
    head = trial.suggest_categorical("age/head", ["regression", "coral"])
    if head == "coral":
        return {"age_head": "coral"}
    return {"age_head": "regression", "age_activation": trial.suggest_categorical("age/activation", ["linear", "relu"])}


@register_space("arch")
def arch(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Model architecture; training fixed (Adam 1e-3, batch 64, MAE age loss, flips).

    Parameters:
        depth: conv blocks from input to the end of the age branch, 2..6, limited so the
            last feature map is 2-16 px (32 px: 2-5, 64 px: 3-6, 128 px: 4-6).
        shared_blocks: blocks shared before the split, 0..depth-1 (0 = independent branches).
        gender_blocks: blocks of the gender branch, 0..depth-shared_blocks (>= 1 when nothing
            is shared); the age branch takes depth-shared_blocks.
        base_filters: 16, 32, 64, 128; filter_order: increasing (x2, at most 256),
            decreasing (/2, at least 8), constant.
        kernel_size: 3, 5. block_order: conv_bn_relu, conv_relu_bn, conv_relu (no BN).
        pooling: max, avg. head: flatten, gap (global average pooling).
        block_dropout: 0-0.3 step 0.05; dense_dropout: 0-0.7 step 0.1.
        age/dense, gender/dense: 64, 128, 256, 512. l2: 1e-6-1e-3 (log).
        age/head: regression, coral (ordinal ranks 0..116, CORAL loss);
        age/activation (regression only): linear, relu.
    """
    return sample_model(trial, image_size), TrainConfig()
