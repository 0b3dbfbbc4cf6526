"""Model configurations and pure Keras builders.

`build_model`, `inference_model`, `ensemble_model` and `load_model` are imported lazily so that
configs and spaces can be used (and `agesearch --help` answers) without paying for the Keras import.
Saved models use custom layers registered by `agesearch.models.inference`: import it (or
call `agesearch.models.load_model`) before `keras.saving.load_model`.
"""

from agesearch.models.config import ModelConfig, TrainConfig, filter_schedule, max_depth

__all__ = ["ModelConfig", "TrainConfig", "build_model", "ensemble_model", "filter_schedule", "inference_model", "load_model", "max_depth"]


def __getattr__(name: str):
    if name == "build_model":
        from agesearch.models.builder import build_model

        return build_model
    if name == "ensemble_model":
        from agesearch.models.ensemble import ensemble_model

        return ensemble_model
    if name in ("inference_model", "load_model"):
        from agesearch.models import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
