"""What a configuration costs before it trains: parameters and FLOPs of one forward pass.

Keras 3 has no backend-neutral FLOP counter (TensorFlow's profiler is TF-only), so the count is
written here from each layer's shapes: 2 * multiply-adds of the convolutions and dense layers,
which is where a CNN's time goes; pooling, normalisation and activations are left out.
"""

from __future__ import annotations

import dataclasses
import math

from agesearch.models.config import ModelConfig


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model (a backbone)
            yield from _layers(layer)
        else:
            yield layer


def _layer_flops(layer) -> int:
    name = type(layer).__name__
    try:
        out = layer.output.shape
        kernel = layer.kernel.shape if hasattr(layer, "kernel") else None
    except (AttributeError, ValueError):
        return 0
    if kernel is None:
        return 0
    if name in ("Conv2D", "DepthwiseConv2D", "Conv2DTranspose", "SeparableConv2D"):
        positions = math.prod(int(d) for d in out[1:-1])
        return 2 * positions * math.prod(int(d) for d in kernel)
    if name == "Dense":
        return 2 * math.prod(int(d) for d in kernel)
    return 0


def model_cost(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, FLOPs per image) of the model `cfg` builds; builds it, trains nothing.

    Pretrained backbones are built without their weights (same shapes, no download).
    """
    import keras

    from agesearch.models.builder import build_model

    if getattr(cfg, "backbone_weights", None) not in (None, "none"):
        cfg = dataclasses.replace(cfg, backbone_weights="none")
    keras.backend.clear_session()
    model = build_model(cfg)
    flops = sum(_layer_flops(layer) for layer in _layers(model))
    params = int(model.count_params())
    del model
    keras.backend.clear_session()
    return params, int(flops)
