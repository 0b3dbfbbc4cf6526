"""`ablate`: the seed write-ups' one-knob questions, as a full grid for Optuna's GridSampler.

The write-ups changed one thing at a time on one network (Conv 128-64-32-32, BN then ReLU,
dense 512, dropout 0.6, RMSprop) and compared test losses. A grid over the same knobs answers
each question on the user's data, and better: every value of a knob is tried with every value of
the others, so the report's ablation table for a knob compares medians over the same mix of
everything else, not one lucky pairing.

`agesearch run --space ablate` uses `optuna.samplers.GridSampler(space_grid("ablate")(image_size))`
(registered with `register_space("ablate", grid=ablate_grid)`), so trials walk the grid without repeats, in a seeded
random order: stopping early with a smaller --n-trials still leaves a balanced random subset.
"""

from __future__ import annotations

import optuna

from agesearch.models.config import ModelConfig, TrainConfig, max_depth
from agesearch.spaces import register_space

# The write-ups' filter lists, from the input down; the shared trunk of the seed network.
FILTER_LISTS = ("128-64-32", "128-64-32-16", "128-64-32-32", "128-64-64-32", "128-64-64-32-32")
ABLATE_GRID: dict[str, list] = {
    "filters": list(FILTER_LISTS),
    "block_order": ["conv_bn_relu", "conv_relu_bn"],
    "dense": [512, 1024],
    "dropout": [0.4, 0.5, 0.6, 0.7],
    "optimizer": ["rmsprop", "adam"],
    "age/activation": ["linear", "relu"],
}


def ablate_grid(image_size: int) -> dict[str, list]:
    """The grid for this image size: filter lists deeper than the image allows are left out.

    Each block halves the image (`max_depth`), so at 16 px the five-block list cannot be
    built; at 32 px and more the whole grid fits (5 * 2 * 2 * 4 * 2 * 2 = 320 trials).
    """
    limit = max_depth(image_size)
    grid = dict(ABLATE_GRID)
    grid["filters"] = [f for f in FILTER_LISTS if len(f.split("-")) <= limit]
    if not grid["filters"]:
        raise ValueError(f"Invalid value for `image_size`: the `ablate` space needs at least {min(len(f.split('-')) for f in FILTER_LISTS)} blocks. Received: image_size={image_size}")
    return grid


@register_space("ablate", grid=ablate_grid)
def ablate(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
    """The write-ups' ablations as a grid (GridSampler): one knob per question, on the seed network.

    Parameters (every combination, 320 trials at 32 px and larger):
        filters: 128-64-32, 128-64-32-16, 128-64-32-32, 128-64-64-32, 128-64-64-32-32 (a shared
            trunk of conv blocks, both heads on top, as in the write-ups; lists deeper than the
            image allows are left out).
        block_order: conv_bn_relu (BN then ReLU), conv_relu_bn (ReLU then BN).
        dense: 512, 1024 (both heads' dense layer). dropout: 0.4, 0.5, 0.6, 0.7 (before it).
        optimizer: rmsprop, adam (learning rate 1e-3). age/activation: linear, relu.
    Fixed: max pooling, flatten head, batch 64, MAE age loss, flips.
    """
    grid = ablate_grid(image_size)
    # The same names and choices as the grid: GridSampler only serves values it holds.
    filters = tuple(int(f) for f in trial.suggest_categorical("filters", grid["filters"]).split("-"))
    dense = trial.suggest_categorical("dense", grid["dense"])
    model = ModelConfig(
        image_size=image_size,
        shared_blocks=len(filters),
        age_blocks=0,
        gender_blocks=0,
        filters=filters,
        block_order=trial.suggest_categorical("block_order", grid["block_order"]),
        pooling="max",
        head="flatten",
        dense_dropout=trial.suggest_categorical("dropout", grid["dropout"]),
        age_dense=dense,
        gender_dense=dense,
        age_activation=trial.suggest_categorical("age/activation", grid["age/activation"]),
    )
    return model, TrainConfig(optimizer=trial.suggest_categorical("optimizer", grid["optimizer"]))

