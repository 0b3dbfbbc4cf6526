"""Pure Keras builders: `build_model(ModelConfig) -> keras.Model` with outputs `age` and `gender`.

Layers are named predictably (`shared_block1_conv`, `age_block2_bn`, `gender_dense`), as in
keras `applications/resnet.py`, so that tests and reports can find them.
"""

from __future__ import annotations

import keras
from keras import layers

from agesearch.models.coral import CoralLogits
from agesearch.models.config import ModelConfig


def conv_block(x, filters: int, cfg: ModelConfig, name: str):
    """Conv, then BN and ReLU in the configured order, then 2x2 pooling and optional dropout."""
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = layers.Conv2D(
        filters,
        cfg.kernel_size,
        padding="same",
        use_bias=cfg.block_order == "conv_relu",  # BN's beta makes a conv bias redundant
        kernel_regularizer=reg,
        name=f"{name}_conv",
    )(x)
    # BN momentum 0.9, not Keras' 0.99: search trials run few steps, and with 0.99 the
    # moving statistics used on validation are still mostly their initial values.
    if cfg.block_order == "conv_bn_relu":
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    elif cfg.block_order == "conv_relu_bn":
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    else:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    pool = layers.MaxPooling2D if cfg.pooling == "max" else layers.AveragePooling2D
    x = pool(2, name=f"{name}_pool")(x)
    if cfg.block_dropout > 0:
        x = layers.Dropout(cfg.block_dropout, name=f"{name}_dropout")(x)
    return x


def branch_head(x, width: int, cfg: ModelConfig, name: str):
    """Feature map -> vector -> dropout -> dense(width, relu)."""
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    if cfg.head == "flatten":
        x = layers.Flatten(name=f"{name}_flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    if cfg.dense_dropout > 0:
        x = layers.Dropout(cfg.dense_dropout, name=f"{name}_dropout")(x)
    return layers.Dense(width, activation="relu", kernel_regularizer=reg, name=f"{name}_dense")(x)


def build_model(cfg: ModelConfig) -> keras.Model:
    """Build the two-branch CNN described by `cfg`.

    The input is a uint8-range RGB image (0..255, any dtype); the model rescales it.
    Outputs: `age` (regression: 1 unit, normalised age, linear or ReLU; CORAL: one logit per
    rank threshold) and `gender` (1 unit, sigmoid, probability of label 1 = female).
    """
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    if cfg.backbone != "none":
        from agesearch.models.backbones import backbone_trunk

        net, prep = backbone_trunk(cfg.backbone, cfg.image_size, cfg.backbone_weights)
        x = prep(inputs) if prep is not None else inputs
        # Pretrained BatchNorm statistics stay in inference mode, also once unfrozen (the
        # Keras fine-tuning guide); a randomly initialised backbone trains its BN normally.
        x = net(x, training=False) if cfg.backbone_weights != "none" else net(x)
    else:
        x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for k in range(cfg.shared_blocks):
        x = conv_block(x, cfg.filters[k], cfg, f"shared_block{k + 1}")

    outputs = {}
    for branch, blocks, width in (
        ("age", cfg.age_blocks, cfg.age_dense),
        ("gender", cfg.gender_blocks, cfg.gender_dense),
    ):
        y = x
        for k in range(blocks):
            depth = cfg.shared_blocks + k
            y = conv_block(y, cfg.filters[depth], cfg, f"{branch}_block{k + 1}")
        y = branch_head(y, width, cfg, branch)
        if branch == "gender":
            outputs[branch] = layers.Dense(1, activation="sigmoid", name=branch)(y)
        elif cfg.age_head == "coral":
            outputs[branch] = CoralLogits(cfg.coral_max_age - cfg.coral_min_age, name=branch)(y)
        else:
            outputs[branch] = layers.Dense(1, activation=cfg.age_activation, name=branch)(y)
    return keras.Model(inputs, outputs, name="agesearch_cnn")
