"""The write-ups' final models and recipes as named, validated presets (filled in by issue 11).

A preset is `Preset(name, summary, reported, configs)` where `configs(image_size)` returns the
`(ModelConfig, TrainConfig)` pair. `get_preset(name)` fails with the known names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agesearch.models.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str  # registry name, e.g. "writeup-b-deep-branches"
    summary: str  # one line: what the model is
    reported: str  # the write-up's own result, e.g. "val 6.95 y / 88 %"
    configs: Callable[[int], tuple[ModelConfig, TrainConfig]]  # image_size -> configs


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def preset_names() -> list[str]:
    return sorted(PRESETS)
