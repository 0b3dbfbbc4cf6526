"""`arch`: the model's knobs, per block; training fixed at write-up B's recipe."""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig, TrainConfig, max_depth
from agesearch.spaces import register_space

FILTERS = [16, 32, 64, 128, 256, 512]
DENSE = [64, 128, 256, 512]
L2 = [0.0, 1e-5, 1e-4, 1e-3]
# Parameters that a value of another parameter makes do nothing: {parameter: {value: ignored}}.
# A CORAL or DLDL age head brings its own age loss, so the training's `age_loss` and its decade
# weighting (`age_weighting`) are unused under it (search/training/fit.py's compile_model). The
# sampler's incumbent perturbation never spends a move on them (search/loop/sampling.py).
IGNORED_BY = {"age/head": {"coral": ("age_loss", "age_weighting"), "dldl": ("age_loss", "age_weighting")}}


def depth_range(image_size: int) -> tuple[int, int]:
    """Blocks from the input to the end of the age branch: down to a 1-px map, up to 4 fewer."""
    deepest = max_depth(image_size)
    return max(2, deepest - 4), deepest


def sample_blocks(trial: optuna.Trial, image_size: int) -> dict:
    """Depth, split point and per-block filters (`shared/filters_b1`, `age/filters_b2`, ...)."""
    low, high = depth_range(image_size)
    depth = trial.suggest_int("depth", low, high)
    shared = trial.suggest_int("shared_blocks", 0, depth)
    age_blocks = depth - shared
    gender_blocks = 0 if age_blocks == 0 else trial.suggest_int("gender_blocks", 1 if shared == 0 else 0, age_blocks)
    shared_filters = [trial.suggest_categorical(f"shared/filters_b{k + 1}", FILTERS) for k in range(shared)]
    age_filters = [trial.suggest_categorical(f"age/filters_b{k + 1}", FILTERS) for k in range(age_blocks)]
    gender_filters = [trial.suggest_categorical(f"gender/filters_b{k + 1}", FILTERS) for k in range(gender_blocks)]
    return dict(
        shared_blocks=shared,
        shared_convs=trial.suggest_int("shared_convs", 1, 2) if shared else 1,
        age_blocks=age_blocks,
        gender_blocks=gender_blocks,
        filters=tuple(shared_filters + age_filters),
        gender_filters=tuple(gender_filters),
    )


def sample_model(trial: optuna.Trial, image_size: int) -> ModelConfig:
    """Sample a two-branch CNN; see `arch` for the values each parameter takes."""
    return ModelConfig(
        image_size=image_size,
        **sample_blocks(trial, image_size),
        kernel_size=trial.suggest_categorical("kernel_size", [3, 5]),
        block_order=trial.suggest_categorical("block_order", ["conv_bn_relu", "conv_relu_bn", "conv_relu"]),
        pooling=trial.suggest_categorical("pooling", ["max", "avg"]),
        block_dropout=trial.suggest_float("block_dropout", 0.0, 0.3, step=0.05),
        head=trial.suggest_categorical("head", ["flatten", "gap"]),
        dense_dropout=trial.suggest_float("dense_dropout", 0.0, 0.7, step=0.1),
        age_dense=trial.suggest_categorical("age/dense", DENSE),
        gender_dense=trial.suggest_categorical("gender/dense", DENSE),
        l2=trial.suggest_categorical("age/l2", L2),
        gender_l2=trial.suggest_categorical("gender/l2", L2),
        **sample_age_head(trial),
    )


def sample_age_head(trial: optuna.Trial) -> dict:
    """The age head: regression (linear or ReLU output, on years or normalised), CORAL ranks or DLDL."""
    head = trial.suggest_categorical("age/head", ["regression", "coral", "dldl"])
    if head == "coral":
        return {"age_head": "coral"}
    if head == "dldl":
        return {"age_head": "dldl", "dldl_sigma": trial.suggest_float("age/dldl_sigma", 1.0, 4.0, step=0.5)}
    return {
        "age_head": "regression",
        "age_activation": trial.suggest_categorical("age/activation", ["linear", "relu"]),
        "age_output": trial.suggest_categorical("age/output", ["normalised", "years"]),
    }


def model_params(m: ModelConfig) -> dict:
    """The `arch` parameters that give back `m` (the inverse of `sample_model`)."""
    age_filters = m.filters[m.shared_blocks :]
    params = {
        "depth": m.shared_blocks + m.age_blocks,
        "shared_blocks": m.shared_blocks,
        "gender_blocks": m.gender_blocks,
        "shared_convs": m.shared_convs,
        **{f"shared/filters_b{k + 1}": f for k, f in enumerate(m.filters[: m.shared_blocks])},
        **{f"age/filters_b{k + 1}": f for k, f in enumerate(age_filters)},
        **{f"gender/filters_b{k + 1}": f for k, f in enumerate(m.gender_filters)},
        "kernel_size": m.kernel_size,
        "block_order": m.block_order,
        "pooling": m.pooling,
        "block_dropout": m.block_dropout,
        "head": m.head,
        "dense_dropout": m.dense_dropout,
        "age/dense": m.age_dense,
        "gender/dense": m.gender_dense,
        "age/l2": m.l2,
        "gender/l2": m.gender_l2,
        "age/head": m.age_head,
        "age/activation": m.age_activation,
        "age/output": m.age_output,
        "age/dldl_sigma": m.dldl_sigma,
    }
    return params


def arch_params(model: ModelConfig, train: TrainConfig) -> dict:
    return model_params(model)


@register_space("arch", to_params=arch_params)
def arch(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """Model architecture, block by block; training fixed (write-up B's: Adam 1e-3, batch 64, MAE, flips).

    Parameters:
        depth: conv blocks from the input to the end of the age branch, from 4 fewer than
            fit the image (at least 2) to a 1-px last map (32 px: 2-5, 64 px: 2-6, 128 px: 3-7).
        shared_blocks: blocks shared before the split, 0..depth (0 = independent branches,
            depth = split only at the heads). shared_convs (with shared blocks): 1, 2 convs per
            shared block (two: the first has half the filters).
        gender_blocks: blocks of the gender branch, 0..depth-shared_blocks (>= 1 when nothing
            is shared); the age branch takes depth-shared_blocks.
        shared/filters_bK, age/filters_bK, gender/filters_bK: 16, 32, 64, 128, 256, 512 per block.
        kernel_size: 3, 5. block_order: conv_bn_relu, conv_relu_bn, conv_relu (no BN).
        pooling: max, avg. head: flatten, gap (global average pooling).
        block_dropout: 0-0.3 step 0.05; dense_dropout: 0-0.7 step 0.1.
        age/dense, gender/dense: 64, 128, 256, 512. age/l2 (shared part and age branch),
        gender/l2: 0, 1e-5, 1e-4, 1e-3.
        age/head: regression, coral (ordinal ranks 0..116, CORAL loss), dldl (softmax over the
        ages 0..116, DLDL-v2 loss: KL to a Gaussian label distribution plus L1 on the expected
        age); regression only: age/activation: linear, relu; age/output: normalised (age /
        train mean), years; dldl only: age/dldl_sigma: 1-4 years, step 0.5.
    """
    return sample_model(trial, image_size), TrainConfig()
