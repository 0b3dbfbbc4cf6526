"""The training options of issue 11/12 are validated and reach the fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from agesearch.models import ModelConfig, TrainConfig
from agesearch.search.data.images import Split, load_faces, split_indices
from agesearch.search.training.fit import DecadeWeightedLoss, TrainingData, decade_weights, fit

TINY = ModelConfig(image_size=16, shared_blocks=1, age_blocks=2, gender_blocks=1, filters=(8, 16, 16), dense_dropout=0.0, age_dense=16, gender_dense=16)


@pytest.fixture(scope="module")
def data(synthetic_dir, cache_dir) -> TrainingData:
    """320 train and 96 val images drawn at random from the split, with their own trivial baselines.

    At random, not the first ones: the files sort by name, which starts with the age ("1_", "10_",
    "100_", ...), so the first 96 val images were all aged 1-37.
    """
    ds = load_faces(synthetic_dir, 16, cache_dir=cache_dir)
    split = split_indices(len(ds), seed=0)
    rng = np.random.default_rng(0)
    train, val = (np.sort(rng.choice(idx, n, replace=False)) for idx, n in ((split.train, 320), (split.val, 96)))
    return TrainingData.from_split(ds, Split(train=train, val=val, test=split.test))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr_schedule="step"), r"Invalid value for `lr_schedule`: must be one of \('constant', 'plateau', 'cosine'\). Received: lr_schedule='step'"),
        (dict(precision="float16"), r"Invalid value for `precision`: must be one of \('float32', 'mixed_bfloat16'\). Received: precision='float16'"),
        (dict(age_weighting="balanced"), r"Invalid value for `age_weighting`: must be one of \('none', 'sqrt_inverse', 'inverse'\)"),
        (dict(steps_per_execution=0), r"Invalid value for `steps_per_execution`: must be >= 1. Received: steps_per_execution=0"),
        (dict(patience=0), r"Invalid value for `patience`: must be >= 1 or None. Received: patience=0"),
    ],
)
def test_train_config_rejects_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shared_blocks=1, age_blocks=2, gender_blocks=1, filters=(8, 8, 8), gender_filters=(8, 8)),
         r"Invalid value for `gender_filters`: must be empty or have one entry per gender block \(1\). Received: gender_filters=\(8, 8\)"),
        (dict(shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 8), shared_convs=3), r"Invalid value for `shared_convs`: must be 1 or 2. Received: shared_convs=3"),
        (dict(age_output="decades"), r"Invalid value for `age_output`: must be one of \('normalised', 'years'\). Received: age_output='decades'"),
        (dict(gender_l2=-1.0), r"Invalid value for `gender_l2`: must be >= 0 or None. Received: gender_l2=-1.0"),
    ],
)
def test_model_config_rejects_invalid_new_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_patience_defaults_to_a_third_of_the_epochs():
    assert TrainConfig(epochs=30).early_stopping_patience == 10
    assert TrainConfig(epochs=6).early_stopping_patience == 5
    assert TrainConfig(epochs=30, patience=20).early_stopping_patience == 20


def test_plateau_schedule_halves_the_learning_rate_on_a_plateau(data):
    # A learning rate far too small to move anything: the objective plateaus from epoch 1.
    # Seeded: unseeded, it failed 3 of 6 runs on one machine (no plateau seen within 5 epochs).
    r = fit(TINY, TrainConfig(epochs=5, learning_rate=1e-9, lr_schedule="plateau", patience=10, seed=0), data)
    lrs = r.history["learning_rate"]
    assert lrs[0] == pytest.approx(1e-9) and lrs[-1] == pytest.approx(0.5e-9)


def test_constant_and_cosine_schedules(data):
    constant = fit(TINY, TrainConfig(epochs=3, learning_rate=1e-3), data).history["learning_rate"]
    cosine = fit(TINY, TrainConfig(epochs=3, learning_rate=1e-3, lr_schedule="cosine"), data).history["learning_rate"]
    assert constant == pytest.approx([1e-3] * 3)
    assert cosine[0] < 1e-3 and cosine[0] > cosine[1] > cosine[2] == pytest.approx(0.0, abs=1e-9)


def test_decade_weights_inverse_frequency_mean_one():
    ages = np.array([5, 25, 25, 25, 25, 65])
    w = decade_weights(ages, "inverse")
    assert w[2] == pytest.approx(w[0] / 4) and w[6] == pytest.approx(w[0])
    assert np.mean(w[np.clip(ages // 10, 0, 11)]) == pytest.approx(1.0)
    assert decade_weights(ages, "none") is None
    s = decade_weights(ages, "sqrt_inverse")
    assert s[2] == pytest.approx(s[0] / 2)


def test_decade_weighted_loss_weighs_each_image_by_its_decade():
    weights = np.zeros(12, np.float32)
    weights[2], weights[6] = 1.0, 3.0
    loss = DecadeWeightedLoss(keras.losses.mean_absolute_error, weights, age_scale=10.0)
    y_true = np.array([2.5, 6.5], np.float32)  # 25 and 65 years at scale 10
    y_pred = np.array([[3.5], [4.5]], np.float32)  # errors 1 and 2
    assert float(keras.ops.convert_to_numpy(loss(y_true, y_pred))) == pytest.approx((1 * 1 + 3 * 2) / 2)


def test_age_weighting_reaches_the_loss(data):
    """Same seed, same model: the weighted run's training loss differs from the plain one."""
    losses = []
    for weighting in ("none", "inverse"):
        keras.utils.set_random_seed(0)
        losses.append(fit(TINY, TrainConfig(epochs=1, age_weighting=weighting), data).history["loss"][0])
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_steps_per_execution_gives_the_plain_results(data):
    results = []
    for spe in (1, 4):
        keras.utils.set_random_seed(0)
        results.append(fit(TINY, TrainConfig(epochs=2, steps_per_execution=spe, flip=False), data).history["val_age_mae"])
    assert results[1] == pytest.approx(results[0], rel=1e-4)


def test_bfloat16_computes_in_bf16_keeps_float32_outputs_and_beats_the_trivial_predictor(data):
    """bf16 learns: well past the trivial predictors of the same images, on any CPU.

    Not compared with a float32 run: the two curves wander apart by rounding, and which epoch
    the objective keeps differs by CPU (an AMX CPU failed a 25 % tolerance on 3 epochs). Here, 5
    seeds, this model and data: kept val age MAE 7.0-8.1 y in bf16, 6.4-9.0 y in float32, against
    17.5 y for the train median; objective 0.48-0.64 and 0.50-0.65 (2.0 is guessing).
    """
    keras.utils.set_random_seed(0)
    bf16 = fit(TINY, TrainConfig(epochs=5, batch_size=16, precision="mixed_bfloat16"), data, keep_model=True)
    conv = bf16.model.get_layer("age_block1_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"  # bf16 maths, float32 weights
    assert bf16.model.get_layer("age").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # reset after the fit
    assert bf16.val_age_mae < 0.7 * data.baselines.mae_trivial
    assert bf16.objective < 1.0


def test_years_output_starts_at_the_mean_train_age(data):
    cfg = ModelConfig(**{**TINY.to_dict(), "age_output": "years", "age_activation": "relu"})
    r = fit(cfg, TrainConfig(epochs=1, learning_rate=1e-9, flip=False), data)
    trivial_mean_mae = float(np.mean(np.abs(data.age_val - np.mean(data.age_train))))
    assert r.val_age_mae == pytest.approx(trivial_mean_mae, rel=0.05)
    assert set(r.val_age_mae_by_decade) <= {f"{10 * d}-{10 * d + 9}" for d in range(12)} and r.val_age_mae_by_decade


def test_packed_ray_workers_cap_jax_memory_at_their_share(monkeypatch):
    pytest.importorskip("ray")
    from agesearch.search.loop.ray_executor import worker_env

    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    env = worker_env(None, 0.25)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in worker_env(None, 1.0)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # the user's own setting wins
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in worker_env(None, 0.25)
