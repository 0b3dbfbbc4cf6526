"""Model configurations and pure Keras builders.

`build_model` is imported lazily so that configs and spaces can be used (and `agesearch
--help` answers) without paying for the Keras backend import.
"""

from agesearch.models.config import ModelConfig, filter_schedule, max_depth

__all__ = ["ModelConfig", "build_model", "filter_schedule", "max_depth"]


def __getattr__(name: str):
    if name == "build_model":
        from agesearch.models.builder import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
