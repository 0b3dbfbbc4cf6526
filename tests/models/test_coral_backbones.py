from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from agesearch.models import ModelConfig, build_model, inference_model, load_model
from agesearch.models.backbones import BackboneWeightsError
from agesearch.models.coral import CoralAge, coral_levels, coral_loss, levels_to_age
from agesearch.search.data.images import load_faces, split_indices
from agesearch.models.config import TrainConfig
from agesearch.search.training.fit import TrainingData, fit


@pytest.fixture(scope="module")
def data(synthetic_dir, cache_dir) -> TrainingData:
    ds = load_faces(synthetic_dir, 32, cache_dir=cache_dir)
    return TrainingData.from_split(ds, split_indices(len(ds), seed=0))


@pytest.mark.parametrize("min_age, max_age", [(0, 116), (10, 20), (0, 5)])
def test_coral_levels_round_trip(min_age, max_age):
    ages = np.arange(min_age, max_age + 1)
    levels = coral_levels(ages, min_age, max_age)
    assert levels.shape == (len(ages), max_age - min_age)
    # Rank-consistent: each row is ones, then zeros.
    assert np.all(np.diff(levels, axis=1) <= 0)
    np.testing.assert_array_equal(levels_to_age(levels, min_age), ages)


def test_coral_levels_clip_out_of_range_ages():
    np.testing.assert_array_equal(levels_to_age(coral_levels(np.array([3, 50]), 10, 20), 10), [10, 20])


def test_coral_loss_matches_hand_computation():
    # Two thresholds; true age rank 1 -> levels [1, 0]; logits [0, 2].
    # -(log s(0) + log(1 - s(2))) / 2 = (ln 2 + ln(1 + e^2)) / 2
    loss = keras.ops.convert_to_numpy(coral_loss(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]], dtype="float32")))
    assert loss.shape == (1,)
    assert loss[0] == pytest.approx((np.log(2) + np.log(1 + np.e**2)) / 2, rel=1e-5)


def test_coral_age_layer_counts_positive_logits():
    out = keras.ops.convert_to_numpy(CoralAge(min_age=10)(np.array([[3.0, 0.5, -1.0, -2.0], [-1.0, -1.0, -1.0, -1.0]], dtype="float32")))
    np.testing.assert_array_equal(out, [[12.0], [10.0]])


def test_coral_model_learns_synthetic_better_than_trivial(data):
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(image_size=32, shared_blocks=1, age_blocks=2, gender_blocks=2, filters=(16, 32, 64), dense_dropout=0.2, age_dense=64, gender_dense=64, age_head="coral")
    result = fit(cfg, TrainConfig(epochs=3, batch_size=32), data, keep_model=True)
    assert result.model.get_layer("age").output.shape == (None, 116)
    assert result.val_age_mae < 0.8 * data.baselines.mae_trivial
    # The saved inference model answers in years and agrees with the training metric.
    pred = inference_model(result.model, cfg, data.baselines.age_scale).predict(data.x_val, verbose=0)
    assert np.abs(pred["age"].ravel() - data.age_val).mean() == pytest.approx(result.val_age_mae, rel=0.02)


def test_resnet50_trunk_builds_with_both_heads():
    """ResNet50 as the trunk (MobileNetV3Small below shows a trunk trains; ResNet50's compile
    for one training step costs a minute on 2 cores)."""
    keras.backend.clear_session()
    cfg = ModelConfig(image_size=32, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone="resnet50", head="gap", age_dense=16, gender_dense=16)
    model = build_model(cfg)
    assert model.get_layer("backbone").count_params() > 23_000_000
    assert [tuple(o.shape) for o in model.outputs] == [(None, 1), (None, 1)]


@pytest.mark.parametrize("backbone", ["mobilenetv3small"])
def test_backbone_trunk_builds_and_trains_one_step(backbone, data):
    keras.backend.clear_session()
    cfg = ModelConfig(image_size=32, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone=backbone, head="gap", age_dense=16, gender_dense=16)
    model = build_model(cfg)
    assert model.get_layer("backbone") is not None
    # Eagerly: one step on 16 images; tracing MobileNet's training graph would cost half a minute
    # here, and what is tested is that gradients reach the trunk (fit() compiles the graph elsewhere).
    model.compile(optimizer="adam", loss={"age": "mae", "gender": "binary_crossentropy"}, run_eagerly=True)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()[:2]]
    model.fit(data.x_train[:16], {"age": data.age_train[:16] / 30, "gender": data.gender_train[:16]}, batch_size=16, epochs=1, verbose=0)
    after = model.get_layer("backbone").get_weights()[:2]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    out = model.predict(data.x_val[:3], verbose=0)
    assert out["age"].shape == (3, 1) and out["gender"].shape == (3, 1)


@pytest.fixture
def eager_tensorflow():
    """TensorFlow's functions run eagerly for one test: a few steps of MobileNetV3Small cost less
    than tracing its training graph twice (frozen, then not). The schedule is the same either way."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


def test_backbone_freeze_schedule_unfreezes_at_epoch_k(data, eager_tensorflow):
    cfg = ModelConfig(image_size=32, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone="mobilenetv3small", head="gap", age_dense=16, gender_dense=16)
    small = TrainingData(data.x_train[:64], data.age_train[:64], data.gender_train[:64], data.x_val[:32], data.age_val[:32], data.gender_val[:32], data.baselines)
    result = fit(cfg, TrainConfig(epochs=3, freeze_epochs=2, patience=5, batch_size=32), small)
    trainable = result.history["trainable_params"]
    assert len(trainable) == 3
    assert trainable[0] == trainable[1] < trainable[2]
    assert trainable[2] - trainable[1] > 400_000  # MobileNetV3Small's own weights joined at epoch 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=64, backbone="inceptionv3", shared_blocks=0, age_blocks=0, gender_blocks=0, filters=()), r"Invalid value for `image_size`: must be >= 75 for backbone='inceptionv3'. Received: image_size=64"),
        (dict(backbone="resnet50", shared_blocks=2, age_blocks=0, gender_blocks=0, filters=(8, 8)), r"Invalid value for `shared_blocks`: must be 0 with backbone='resnet50' \(the backbone is the trunk\). Received: shared_blocks=2"),
        (dict(backbone="vgg"), r"Invalid value for `backbone`: must be one of \('none', 'resnet50', 'mobilenetv3small', 'efficientnetb0', 'inceptionv3'\). Received: backbone='vgg'"),
        (dict(age_head="softmax"), r"Invalid value for `age_head`: must be one of \('regression', 'coral', 'dldl'\). Received: age_head='softmax'"),
        (dict(coral_min_age=30, coral_max_age=20), r"Invalid value for `coral_max_age`: must satisfy 0 <= coral_min_age \(30\) < coral_max_age <= 116. Received: coral_max_age=20"),
    ],
)
def test_model_config_rejects_invalid_heads_and_backbones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_backbone_weights_from_a_local_file(tmp_path):
    """`--backbone-weights PATH`: a weights file of the same backbone loads into the trunk."""
    keras.backend.clear_session()
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mnv3.weights.h5"
    source.save_weights(path)
    cfg = ModelConfig(image_size=32, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone="mobilenetv3small", backbone_weights=str(path), head="gap")
    model = build_model(cfg)
    for a, b in zip(source.get_weights(), model.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)
    bad = ModelConfig(**{**cfg.to_dict(), "backbone": "resnet50"})
    with pytest.raises(BackboneWeightsError, match=r"could not load backbone weights .* into resnet50"):
        build_model(bad)


def test_backbone_imagenet_without_network_says_what_to_do(tmp_path, monkeypatch):
    """The download fails as it does offline (Keras' get_file raises): one actionable error."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(file_utils, "get_file", offline)
    cfg = ModelConfig(image_size=32, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone="mobilenetv3small", backbone_weights="imagenet", head="gap")
    with pytest.raises(BackboneWeightsError, match=r"could not get ImageNet weights for mobilenetv3small \(Exception: URL fetch failure.*needs network access: pass --backbone-weights PATH \(a local weights file\) or --backbone-weights none"):
        build_model(cfg)


def test_saved_coral_model_loads_in_a_fresh_process(tmp_path, data):
    cfg = ModelConfig(image_size=32, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_head="coral", coral_min_age=1, coral_max_age=90)
    model = inference_model(build_model(cfg), cfg, data.baselines.age_scale)
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", data.x_val[:4])
    expected = model.predict(data.x_val[:4], verbose=0)
    code = (
        "import sys, numpy as np, keras, agesearch.models.inference\n"
        f"m = keras.saving.load_model({str(path)!r}, compile=False)\n"
        f"out = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        "print(' '.join(str(float(a)) for a in out['age'].ravel()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-1500:]
    ages = [float(v) for v in done.stdout.split()]
    np.testing.assert_allclose(ages, expected["age"].ravel())
    assert load_model(path).output_names == ["age", "gender"]
