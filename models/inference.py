"""The model users get: outputs in years and probabilities, loadable with keras.saving.

`inference_model` wraps a trained two-branch model so that `age` is in years (regression:
times the training's age scale; CORAL: the lowest age plus the ranks passed; DLDL: the
expectation of the softmax over the ages) and `gender` is P(female). It adds no training-only
parts. Importing this module (or `agesearch.models`) registers the custom layers, so plain
`keras.saving.load_model(path)` loads the file.
"""

from __future__ import annotations

from pathlib import Path

import keras

from agesearch.models import backbones, coral, ensemble, label_distribution  # noqa: F401  (registers the serialisable layers)
from agesearch.models.config import ModelConfig


def inference_model(core: keras.Model, cfg: ModelConfig, age_scale: float) -> keras.Model:
    """Wrap a trained model: input uint8-range images, outputs {"age": years, "gender": P(female)}.

    `age_scale` is the training's train mean age; a model whose age output is already in years
    (`cfg.age_output == "years"`) ignores it.
    """
    inputs = keras.Input(core.input_shape[1:], name="image")
    out = core(inputs)
    if cfg.age_head == "coral":
        age = coral.CoralAge(cfg.coral_min_age, name="age")(out["age"])
    elif cfg.age_head == "dldl":
        age = label_distribution.ExpectedAge(cfg.dldl_min_age, name="age")(out["age"])
    else:
        age = keras.layers.Rescaling(float(cfg.age_target_scale(age_scale)), name="age")(out["age"])
    gender = keras.layers.Identity(name="gender")(out["gender"])
    return keras.Model(inputs, {"age": age, "gender": gender}, name="agesearch_model")


def load_model(path: str | Path) -> keras.Model:
    """Load a saved agesearch model (inference or training) without compiling it."""
    return keras.saving.load_model(path, compile=False)
