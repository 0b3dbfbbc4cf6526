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
# The inverse of a space: the params that make it give back (model, training), for enqueue_trial.
ToParams = Callable[[ModelConfig, TrainConfig], dict]
Grid = Callable[[int], dict[str, list]]


@dataclasses.dataclass(frozen=True)
class SpaceEntry:
    fn: Space  # trial, image_size -> (ModelConfig, TrainConfig)
    grid: Grid | None = None  # image_size -> GridSampler grid, for a grid space (`ablate`)
    to_params: ToParams | None = None  # what makes a preset a point of the space


SPACES: dict[str, SpaceEntry] = {}


# Bumped when a space's distributions change, since Optuna refuses to resume a study whose
# categorical choices changed: a study made before says so in one line (StudyMismatch).
# 2: `age/head` gained "dldl" (and `age/dldl_sigma`).
SPACE_VERSIONS = {"arch": 2, "cnn": 2, "full": 2}


def register_space(name: str, *, grid: Grid | None = None, to_params: ToParams | None = None) -> Callable[[Space], Space]:
    """Register a space by name; a grid space gives its grid, a space that holds presets `to_params`."""

    def add(fn: Space) -> Space:
        if name in SPACES:
            raise ValueError(f"space {name!r} is already registered")
        SPACES[name] = SpaceEntry(fn, grid, to_params)
        return fn

    return add


def get_space(name: str) -> Space:
    return _entry(name).fn


def space_grid(name: str) -> Grid | None:
    """The grid of a grid space (`ablate`): its runs use Optuna's GridSampler; else None."""
    return _entry(name).grid


def _entry(name: str) -> SpaceEntry:
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
    return wrapped


def describe_space(name: str, image_size: int = 128, samples: int = 200) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every parameter a space can sample and its widest distribution, found by sampling it.

    Conditional parameters appear once some sample took their branch; ranges that depend on
    other parameters (the split point depends on the depth) are shown at their widest.
    """
    space = get_space(name)
    study = _scratch_study()
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


def baseline_trials(space_name: str, image_size: int, names: list[str] | None = None) -> list[tuple[str, dict]]:
    """(preset name, params for `study.enqueue_trial`) of the presets that are points of a space.

    A preset is a point of a space when the space, asked with those params fixed, samples every
    one of them inside its distributions and gives back the preset's configs (epochs and patience
    are the run's, not the space's). `names=None` means every preset that is a point of the space
    at this image size; an unknown name raises KeyError with the known ones, and a named preset
    that is not a point raises ValueError saying why.
    """
    from agesearch.models.presets import get_preset, preset_names

    for name in names or []:
        get_preset(name)
    entry = _entry(space_name)
    found = []
    for name in names if names is not None else preset_names():
        why, params = _preset_as_point(entry, get_preset(name), image_size)
        if why is None:
            found.append((name, params))
        elif names is not None:
            raise ValueError(f"preset {name!r} is not a point of space {space_name!r} at {image_size} px: {why}")
    return found


def _scratch_study() -> optuna.Study:
    """An in-memory study for replaying a space, without Optuna's "new study created" line."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(verbosity)


def _preset_as_point(entry: SpaceEntry, preset, image_size: int) -> tuple[str | None, dict]:
    """(None, params) when the preset is a point of the space; else (the reason, {})."""
    if entry.to_params is None:
        return "the space takes no presets", {}
    try:
        model_cfg, train_cfg = preset.configs(image_size)
    except ValueError as e:
        return str(e), {}
    params = entry.to_params(model_cfg, train_cfg)
    study = _scratch_study()
    study.enqueue_trial(params)
    trial = study.ask()
    got_model, got_train = entry.fn(trial, image_size)
    missing = [k for k in trial.distributions if k not in params]
    outside = missing or [k for k, d in trial.distributions.items() if not d._contains(d.to_internal_repr(params[k]))]
    if outside:
        return f"parameters outside the space: {', '.join(outside)}", {}
    run_level = {"epochs": train_cfg.epochs, "patience": train_cfg.patience}
    if (got_model, dataclasses.replace(got_train, **run_level)) != (model_cfg, train_cfg):
        return "the space gives back other configs", {}
    return None, {k: params[k] for k in trial.distributions}


# Import the space modules so they register themselves.
from agesearch.spaces import arch, train, full, ablate  # noqa: E402,F401

__all__ = ["SPACES", "Space", "baseline_trials", "describe_space", "get_space", "register_space", "space_grid", "space_names"]
