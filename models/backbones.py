"""Keras applications as the shared trunk of the two-branch model.

Each backbone gets its own input preprocessing from the raw 0..255 images, as its ImageNet
weights expect. Weights: "imagenet" (Keras downloads and caches them on first use, which
needs the network), "none" (random init) or a path to a weights file of the same
architecture without its top.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from agesearch.models.coral import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffePreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet means: `resnet50.preprocess_input` as a layer."""

    def call(self, x):
        x = ops.cast(x, "float32")
        bgr = ops.flip(x, axis=-1)
        return bgr - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype="float32")


def _resnet50(input_shape, weights):
    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape), CaffePreprocess(name="backbone_preprocess")


def _mobilenetv3small(input_shape, weights):
    # include_preprocessing=True: the model rescales 0..255 itself.
    net = keras.applications.MobileNetV3Small(include_top=False, weights=weights, input_shape=input_shape, include_preprocessing=True)
    return net, None


def _efficientnetb0(input_shape, weights):
    return keras.applications.EfficientNetB0(include_top=False, weights=weights, input_shape=input_shape), None  # rescales itself


def _inceptionv3(input_shape, weights):
    net = keras.applications.InceptionV3(include_top=False, weights=weights, input_shape=input_shape)
    return net, layers.Rescaling(1 / 127.5, offset=-1, name="backbone_preprocess")


# name -> constructor; the smallest input side each accepts is BACKBONE_MIN_SIZE in config.py.
BACKBONES = {
    "resnet50": _resnet50,
    "mobilenetv3small": _mobilenetv3small,
    "efficientnetb0": _efficientnetb0,
    "inceptionv3": _inceptionv3,
}


class BackboneWeightsError(RuntimeError):
    """ImageNet weights could not be fetched (no network) or a weights file does not fit."""


def backbone_trunk(name: str, image_size: int, weights: str):
    """The backbone model (named "backbone") and its preprocessing layer (or None)."""
    make = BACKBONES[name]
    keras_weights = None if weights == "none" else weights
    try:
        net, prep = make((image_size, image_size, 3), keras_weights)
    except Exception as e:
        if weights == "imagenet":
            raise BackboneWeightsError(
                f"could not get ImageNet weights for {name} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                "Keras downloads them on first use, which needs network access: pass --backbone-weights PATH "
                "(a local weights file) or --backbone-weights none"
            ) from e
        if weights != "none":
            raise BackboneWeightsError(f"could not load backbone weights {weights!r} into {name}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from e
        raise
    net.name = "backbone"
    return net, prep
