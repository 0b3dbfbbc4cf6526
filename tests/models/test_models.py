from __future__ import annotations

import keras
import numpy as np
import pytest

from agesearch.models import ModelConfig, build_model, filter_schedule, max_depth

TWO_INDEPENDENT = dict(image_size=32, shared_blocks=0, age_blocks=2, gender_blocks=2, filters=(8, 16), age_dense=16, gender_dense=16)


@pytest.mark.parametrize(
    "cfg, params",
    [
        # conv 3*3*3*8 (no bias, BN) + BN 4*8, conv 3*3*8*16 + BN 4*16, flatten 8*8*16 -> dense 16, -> 1; twice.
        (ModelConfig(**TWO_INDEPENDENT), 2 * (216 + 32 + 1152 + 64 + (1024 * 16 + 16) + 17)),
        (ModelConfig(**TWO_INDEPENDENT, block_order="conv_relu"), 2 * (224 + 1168 + (1024 * 16 + 16) + 17)),
        (ModelConfig(**TWO_INDEPENDENT, head="gap"), 2 * (216 + 32 + 1152 + 64 + (16 * 16 + 16) + 17)),
        # shared trunk of 2 blocks, both heads straight on it (the write-ups' network, shrunk).
        (
            ModelConfig(image_size=32, shared_blocks=2, age_blocks=0, gender_blocks=0, filters=(8, 16), age_dense=16, gender_dense=8),
            216 + 32 + 1152 + 64 + (1024 * 16 + 16) + 17 + (1024 * 8 + 8) + 9,
        ),
    ],
)
def test_build_model_parameter_count(cfg, params):
    assert build_model(cfg).count_params() == params


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(image_size=32, shared_blocks=1, age_blocks=3, gender_blocks=1, filters=(16, 32, 64, 128), pooling="avg"),
        ModelConfig(image_size=64, shared_blocks=3, age_blocks=1, gender_blocks=0, filters=(32, 16, 8, 8), block_order="conv_relu_bn", block_dropout=0.1, age_activation="relu", l2=1e-4),
        ModelConfig(image_size=32, shared_blocks=5, age_blocks=0, gender_blocks=0, filters=(8, 8, 8, 8, 8), kernel_size=5, head="gap"),
    ],
)
def test_build_model_output_shapes_and_names(cfg):
    model = build_model(cfg)
    out = model.predict(np.zeros((3, cfg.image_size, cfg.image_size, 3), np.uint8), verbose=0)
    assert set(out) == {"age", "gender"}
    assert out["age"].shape == (3, 1) and out["gender"].shape == (3, 1)
    assert np.all((out["gender"] >= 0) & (out["gender"] <= 1))
    names = {layer.name for layer in model.layers}
    for k in range(cfg.shared_blocks):
        assert f"shared_block{k + 1}_conv" in names
    for k in range(cfg.age_blocks):
        assert f"age_block{k + 1}_conv" in names
    assert {"age_dense", "gender_dense", "age", "gender"} <= names
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert has_bn == (cfg.block_order != "conv_relu")


def test_build_model_block_order_puts_bn_where_asked():
    def order(block_order):
        m = build_model(ModelConfig(**{**TWO_INDEPENDENT, "block_order": block_order}))
        return [l.name for l in m.layers if l.name.startswith("age_block1_")]

    assert order("conv_bn_relu") == ["age_block1_conv", "age_block1_bn", "age_block1_relu", "age_block1_pool"]
    assert order("conv_relu_bn") == ["age_block1_conv", "age_block1_relu", "age_block1_bn", "age_block1_pool"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=32, shared_blocks=4, age_blocks=2, gender_blocks=1, filters=(8,) * 6),
         r"Invalid value for `shared_blocks \+ max\(age_blocks, gender_blocks\)`: each block halves the image, so at most 5 blocks fit image_size=32. Received: shared_blocks \+ max\(age_blocks, gender_blocks\)=6"),
        (dict(shared_blocks=0, age_blocks=0, gender_blocks=2, filters=(8, 16)),
         r"Invalid value for `age_blocks`: must be >= 1 when shared_blocks=0, else >= 0. Received: age_blocks=0"),
        (dict(shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16, 32)),
         r"Invalid value for `filters`: must have one entry per block depth \(2\). Received: filters=\(8, 16, 32\)"),
        (dict(block_order="bn_conv_relu"),
         r"Invalid value for `block_order`: must be one of \('conv_bn_relu', 'conv_relu_bn', 'conv_relu'\). Received: block_order='bn_conv_relu'"),
        (dict(dense_dropout=1.0), r"Invalid value for `dense_dropout`: must be in \[0, 1\). Received: dense_dropout=1.0"),
        (dict(kernel_size=4), r"Invalid value for `kernel_size`: must be an odd integer >= 1. Received: kernel_size=4"),
        (dict(pooling="median"), r"Invalid value for `pooling`: must be one of \('max', 'avg'\). Received: pooling='median'"),
        (dict(l2=-1.0), r"Invalid value for `l2`: must be >= 0. Received: l2=-1.0"),
        (dict(image_size=4), r"Invalid value for `image_size`: must be an integer >= 8. Received: image_size=4"),
    ],
)
def test_model_config_rejects_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "base, order, depth, expected",
    [
        (16, "increasing", 4, (16, 32, 64, 128)),
        (128, "increasing", 3, (128, 256, 256)),
        (128, "decreasing", 4, (128, 64, 32, 16)),
        (32, "decreasing", 4, (32, 16, 8, 8)),
        (64, "constant", 3, (64, 64, 64)),
    ],
)
def test_filter_schedule(base, order, depth, expected):
    assert filter_schedule(base, order, depth) == expected


def test_max_depth():
    assert [max_depth(s) for s in (32, 64, 100, 128)] == [5, 6, 6, 7]


def test_model_config_round_trips_through_dict():
    cfg = ModelConfig(image_size=64, shared_blocks=2, age_blocks=2, gender_blocks=1, filters=(8, 16, 32, 64))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
