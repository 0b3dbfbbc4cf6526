"""Search spaces: plain functions `(trial, image_size) -> (ModelConfig, TrainConfig)`, by name.

A space only samples; it never builds a model or loads data. Register one with
`@register_space("name")`; `get_space("name")` finds it, and an unknown name fails with the
list of known ones (as timm's `register_model`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna

from agesearch.models.config import ModelConfig, TrainConfig

Space = Callable[[optuna.Trial, int], tuple[ModelConfig, TrainConfig]]
SPACES: dict[str, Space] = {}


def register_space(name: str) -> Callable[[Space], Space]:
    def add(fn: Space) -> Space:
        if name in SPACES:
            raise ValueError(f"space {name!r} is already registered")
        SPACES[name] = fn
        return fn

    return add


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise KeyError(f"unknown space {name!r}; known spaces: {', '.join(sorted(SPACES))}") from None


def space_names() -> list[str]:
    return sorted(SPACES)


def with_backbone_weights(space: Space, weights: str) -> Space:
    """The same space, its backbone models set to load `weights` (imagenet | none | PATH).

    Weights are a property of the run (what the machine has), not a search dimension.
    """

    def wrapped(trial: optuna.Trial, image_size: int) -> tuple[ModelConfig, TrainConfig]:
        model_cfg, train_cfg = space(trial, image_size)
        if model_cfg.backbone != "none":
            model_cfg = dataclasses.replace(model_cfg, backbone_weights=weights)
        return model_cfg, train_cfg

    wrapped.__doc__ = space.__doc__
    if hasattr(space, "grid"):  # a grid space (`ablate`) keeps its grid for the GridSampler
        wrapped.grid = space.grid
    return wrapped


def describe_space(name: str, image_size: int = 128, samples: int = 200) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every parameter a space can sample and its widest distribution, found by sampling it.

    Conditional parameters appear once some sample took their branch; ranges that depend on
    other parameters (the split point depends on the depth) are shown at their widest.
    """
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    for _ in range(samples):
        trial = study.ask()
        space(trial, image_size)
        for key, dist in trial.distributions.items():
            seen[key] = _widest(seen.get(key), dist)
    return dict(sorted(seen.items()))


def _widest(old, new):
    if old is None or type(old) is not type(new):
        return new
    if isinstance(new, (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)):
        return type(new)(low=min(old.low, new.low), high=max(old.high, new.high), log=new.log, step=new.step)
    return new


# Import the space modules so they register themselves.
from agesearch.spaces import arch, train, full, ablate  # noqa: E402,F401

__all__ = ["SPACES", "Space", "describe_space", "get_space", "register_space", "space_names"]


def baseline_trials(space_name: str, image_size: int, names: list[str] | None = None) -> list[tuple[str, dict]]:
    """(preset name, params for `study.enqueue_trial`) of the presets that are points of a space.

    `names=None` means every preset that fits the space and the image size; an unknown name
    raises KeyError with the known ones. Filled in by issue 11; returns [] until then.
    """
    return []
