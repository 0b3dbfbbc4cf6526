"""Pure Keras builders: `build_model(ModelConfig) -> keras.Model` with outputs `age` and `gender`.

Layers are named predictably (`shared_block1_conv`, `age_block2_bn`, `gender_dense`), as in
keras `applications/resnet.py`, so that tests and reports can find them.
"""

from __future__ import annotations

import keras
from keras import layers

from agesearch.models.coral import CoralLogits
from agesearch.models.config import ModelConfig


def _conv(x, filters: int, cfg: ModelConfig, l2: float, name: str):
    return layers.Conv2D(
        filters,
        cfg.kernel_size,
        padding="same",
        # BN right after the conv makes its bias redundant; BN after the ReLU does not.
        use_bias=cfg.block_order != "conv_bn_relu",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 > 0 else None,
        name=name,
    )(x)


def _activate(x, cfg: ModelConfig, name: str):
    """ReLU and BatchNorm in the configured order (BN momentum 0.9, see below)."""
    # BN momentum 0.9, not Keras' 0.99: search trials run few steps, and with 0.99 the
    # moving statistics used on validation are still mostly their initial values.
    if cfg.block_order == "conv_bn_relu":
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    if cfg.block_order == "conv_relu_bn":
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return x


def conv_block(x, filters: int, cfg: ModelConfig, name: str, *, l2: float | None = None, convs: int = 1):
    """`convs` convs (each with BN and ReLU in the configured order), 2x2 pooling, dropout.

    With two convs the first has half the filters (write-up B's stem: Conv 32 -> Conv 64).
    """
    l2 = cfg.l2 if l2 is None else l2
    if convs == 2:
        x = _conv(x, max(1, filters // 2), cfg, l2, f"{name}_conv0")
        x = _activate(x, cfg, f"{name}_0")
    x = _conv(x, filters, cfg, l2, f"{name}_conv")
    x = _activate(x, cfg, name)
    pool = layers.MaxPooling2D if cfg.pooling == "max" else layers.AveragePooling2D
    x = pool(2, name=f"{name}_pool")(x)
    if cfg.block_dropout > 0:
        x = layers.Dropout(cfg.block_dropout, name=f"{name}_dropout")(x)
    return x


def branch_head(x, width: int, cfg: ModelConfig, name: str, *, l2: float | None = None):
    """Feature map -> vector -> dropout -> dense(width, relu)."""
    l2 = cfg.l2 if l2 is None else l2
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
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
    Outputs: `age` (regression: 1 unit, normalised age or years, linear or ReLU; CORAL: one logit per
    rank threshold; DLDL: one logit per age dldl_min_age..dldl_max_age) and `gender` (1 unit,
    sigmoid, probability of label 1 = female).
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
        x = conv_block(x, cfg.filters[k], cfg, f"shared_block{k + 1}", convs=cfg.shared_convs)

    outputs = {}
    for branch, width in (("age", cfg.age_dense), ("gender", cfg.gender_dense)):
        y = x
        l2 = cfg.branch_l2(branch)
        for k, filters in enumerate(cfg.branch_filters(branch)):
            y = conv_block(y, filters, cfg, f"{branch}_block{k + 1}", l2=l2)
        y = branch_head(y, width, cfg, branch, l2=l2)
        # The outputs stay float32 under a mixed-precision policy (Keras' mixed precision guide).
        if branch == "gender":
            outputs[branch] = layers.Dense(1, activation="sigmoid", dtype="float32", name=branch)(y)
        elif cfg.age_head == "coral":
            outputs[branch] = CoralLogits(cfg.age_units, dtype="float32", name=branch)(y)
        elif cfg.age_head == "dldl":
            # Logits, not probabilities: the loss takes their log-softmax (stable), and the
            # inference model their softmax's expectation (models/label_distribution.py).
            outputs[branch] = layers.Dense(cfg.age_units, dtype="float32", name=branch)(y)
        else:
            outputs[branch] = layers.Dense(1, activation=cfg.age_activation, dtype="float32", name=branch)(y)
    return keras.Model(inputs, outputs, name="agesearch_cnn")
