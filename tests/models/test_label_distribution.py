from __future__ import annotations

import keras
import numpy as np
import pytest

from agesearch.models import ModelConfig, TrainConfig, build_model, inference_model, load_model
from agesearch.models.label_distribution import DLDLLoss, ExpectedAge, ExpectedAgeMAE, label_log_distribution
from agesearch.search.data.images import load_faces, split_indices
from agesearch.search.training.fit import TrainingData, age_targets, compile_model, fit

SMALL = dict(image_size=32, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), head="gap", age_dense=16, gender_dense=16)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def data(synthetic_dir, cache_dir) -> TrainingData:
    ds = load_faces(synthetic_dir, 32, cache_dir=cache_dir)
    return TrainingData.from_split(ds, split_indices(len(ds), seed=0))


@pytest.mark.parametrize(
    "kwargs, age_units, params",
    [
        (dict(), 117, 5230),
        (dict(dldl_min_age=10, dldl_max_age=80), 71, 4448),
    ],
)
def test_dldl_head_output_shape_and_params(kwargs, age_units, params):
    keras.backend.clear_session()
    cfg = ModelConfig(**SMALL, age_head="dldl", **kwargs)
    model = build_model(cfg)
    assert cfg.age_units == age_units
    assert model.output_names == ["age", "gender"] and model.output_shape == [(None, age_units), (None, 1)]
    assert model.get_layer("age").dtype_policy.name == "float32"
    assert model.count_params() == params
    # The head alone: a dense layer of one logit per age on the 16-wide age features.
    assert params - build_model(ModelConfig(**SMALL)).count_params() == (age_units - 1) * (16 + 1)


@pytest.mark.parametrize("age, min_age, max_age, peak", [(30, 0, 116, 30), (0, 0, 116, 0), (116, 0, 116, 116), (-5, 10, 80, 10), (200, 10, 80, 80)])
def test_label_log_distribution_sums_to_one_and_peaks_at_the_clipped_age(age, min_age, max_age, peak):
    q = np.exp(_np(label_log_distribution(np.array([age]), min_age, max_age, 2.0)))
    assert q.shape == (1, max_age - min_age + 1)
    assert q.sum() == pytest.approx(1.0, rel=1e-5)
    assert min_age + int(np.argmax(q[0])) == peak


def test_label_log_distribution_tails_stay_finite_at_the_smallest_sigma():
    log_q = _np(label_log_distribution(np.array([0.0, 116.0]), 0, 116, 0.1))
    assert np.all(np.isfinite(log_q))


def test_dldl_loss_is_lowest_for_a_distribution_centred_at_the_true_age():
    loss = DLDLLoss(sigma=2.0)
    true = np.full(5, 40.0, dtype="float32")
    centres = np.array([40.0, 38.0, 45.0, 25.0, 80.0])
    # Logits whose softmax is the label distribution centred at each `centre`.
    logits = _np(label_log_distribution(centres, 0, 116, 2.0))
    per_image = _np(loss.call(true, logits))
    assert per_image[0] == pytest.approx(0.0, abs=1e-4)  # KL 0, expectation 40 by symmetry
    assert np.all(per_image[1:] > per_image[0])
    assert per_image[1] < per_image[2] < per_image[3] < per_image[4]  # further away, higher loss


def _dldl_reference(logits: np.ndarray, ages: np.ndarray, sigma: float, min_age: int = 0) -> np.ndarray:
    """DLDL-v2 per image in plain numpy: KL(Gaussian label distribution || softmax) + |E - age| in years."""
    grid = np.arange(min_age, min_age + logits.shape[1], dtype=np.float64)
    score = -((grid[None, :] - ages[:, None]) ** 2) / (2 * sigma**2)
    log_q = score - np.log(np.exp(score).sum(axis=1, keepdims=True))
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    kl = (np.exp(log_q) * (log_q - log_p)).sum(axis=1)
    return kl + np.abs((np.exp(log_p) * grid).sum(axis=1) - ages)


def test_dldl_loss_adds_the_l1_term_on_the_expectation_in_years():
    # A uniform prediction over 0..116: expectation 58; the L1 term is |58 - 20| = 38 years (lambda = 1).
    logits = np.zeros((1, 117), dtype="float32")
    with_l1 = _np(DLDLLoss(sigma=2.0).call(np.array([20.0]), logits))
    kl_only = _np(DLDLLoss(sigma=2.0, l1_weight=0.0).call(np.array([20.0]), logits))
    assert with_l1[0] - kl_only[0] == pytest.approx(38.0, rel=1e-5)
    logits = np.random.default_rng(0).normal(0.0, 3.0, (4, 117)).astype("float32")
    ages = np.array([3.0, 25.0, 47.0, 90.0])
    np.testing.assert_allclose(_np(DLDLLoss(sigma=3.0).call(ages, logits)), _dldl_reference(logits, ages, 3.0), rtol=1e-4)


def test_dldl_loss_from_an_old_config_with_age_scale_loads_and_ignores_it():
    """Losses saved when the L1 term was divided by `age_scale` still deserialize; the L1 is in years now."""
    old = {"name": "dldl", "reduction": "sum_over_batch_size", "min_age": 0, "max_age": 116, "sigma": 2.0, "age_scale": 33.0, "l1_weight": 1.0}
    loss = DLDLLoss.from_config(old)
    assert not hasattr(loss, "age_scale") and "age_scale" not in loss.get_config()
    logits = np.zeros((1, 117), dtype="float32")
    np.testing.assert_allclose(_np(loss.call(np.array([20.0]), logits)), _dldl_reference(logits, np.array([20.0]), 2.0), rtol=1e-4)


@pytest.mark.parametrize("age_output", ["normalised", "years"])
def test_compiled_dldl_age_loss_is_kl_plus_l1_in_years_for_either_age_output(age_output):
    """As search/training compiles it: total = BCE + age_loss_weight * (KL + |E - age|), age_scale not in it."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(**SMALL, age_head="dldl", dldl_sigma=3.0, age_output=age_output)
    scale = cfg.age_target_scale(33.0)
    assert scale == (33.0 if age_output == "normalised" else 1.0)
    model = build_model(cfg)
    compile_model(model, cfg, TrainConfig(age_loss_weight=0.5), age_scale=scale)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 32, 32, 3)).astype("float32")
    ages = rng.integers(1, 100, 8).astype("float32")
    genders = rng.integers(0, 2, 8).astype("float32")
    logs = model.evaluate(images, {"age": age_targets(cfg, ages, scale), "gender": genders}, batch_size=8, verbose=0, return_dict=True)
    out = model.predict(images, verbose=0)
    age_loss = _dldl_reference(out["age"], ages.astype(np.float64), 3.0).mean()
    p = np.clip(out["gender"].reshape(-1).astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -np.mean(genders * np.log(p) + (1 - genders) * np.log(1 - p))
    assert logs["loss"] == pytest.approx(0.5 * age_loss + bce, rel=1e-4)
    # The "mae" metric is divided by the age scale; times it, the years of the expectation.
    expectation = _np(ExpectedAge(cfg.dldl_min_age)(out["age"])).reshape(-1)
    assert logs["age_mae"] * scale == pytest.approx(np.abs(expectation - ages).mean(), rel=1e-4)


@pytest.mark.parametrize("age_output", ["normalised", "years"])
def test_fit_reports_the_dldl_val_age_mae_in_years_for_either_age_output(data, age_output):
    cfg = ModelConfig(**SMALL, age_head="dldl", age_output=age_output)
    result = fit(cfg, TrainConfig(epochs=1, flip=False), data, keep_model=True)
    pred = inference_model(result.model, cfg, data.baselines.age_scale).predict(data.x_val, verbose=0)["age"].reshape(-1)
    assert result.val_age_mae == pytest.approx(np.abs(pred - data.age_val).mean(), rel=1e-3)
    assert result.history["val_age_mae"] == [result.val_age_mae]


def test_expected_age_layer_and_metric_read_the_expectation_in_years():
    logits = np.zeros((2, 5), dtype="float32")
    logits[1, 3] = 50.0  # all the mass on the fourth age: min_age + 3
    np.testing.assert_allclose(_np(ExpectedAge(min_age=10)(logits)), [[12.0], [13.0]], rtol=1e-6)
    metric = ExpectedAgeMAE(min_age=10, scale=2.0)
    metric.update_state(np.array([14.0, 13.0]), logits)
    assert metric.name == "mae" and float(metric.result()) == pytest.approx((2.0 / 2.0 + 0.0) / 2)


def test_dldl_model_learns_synthetic_better_than_trivial(data):
    """Trained as search/training must train it: ages in years, DLDL loss, "mae" metric / age scale."""
    keras.utils.set_random_seed(0)
    keras.backend.clear_session()
    cfg = ModelConfig(image_size=32, shared_blocks=1, age_blocks=2, gender_blocks=2, filters=(16, 32, 64), dense_dropout=0.2, age_dense=64, gender_dense=64, age_head="dldl")
    scale = cfg.age_target_scale(data.baselines.age_scale)
    model = build_model(cfg)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"age": DLDLLoss(cfg.dldl_min_age, cfg.dldl_max_age, cfg.dldl_sigma), "gender": "binary_crossentropy"},
        metrics={"age": [ExpectedAgeMAE(cfg.dldl_min_age, scale=scale)], "gender": ["accuracy"]},
    )
    history = model.fit(data.x_train, {"age": data.age_train, "gender": data.gender_train}, validation_data=(data.x_val, {"age": data.age_val, "gender": data.gender_val}), batch_size=32, epochs=2, verbose=0)
    val_mae = history.history["val_age_mae"][-1] * scale
    assert val_mae < 0.8 * data.baselines.mae_trivial
    # The inference model answers in years and agrees with the training metric.
    pred = inference_model(model, cfg, data.baselines.age_scale).predict(data.x_val, verbose=0)
    assert np.abs(pred["age"].ravel() - data.age_val).mean() == pytest.approx(val_mae, rel=0.01)


def test_dldl_inference_model_save_load_round_trip(tmp_path):
    keras.backend.clear_session()
    cfg = ModelConfig(**SMALL, age_head="dldl", dldl_min_age=5, dldl_max_age=90, dldl_sigma=3.0)
    model = inference_model(build_model(cfg), cfg, 33.0)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    assert expected["age"].shape == (4, 1) and np.all((expected["age"] >= 5) & (expected["age"] <= 90))
    path = tmp_path / "dldl.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.output_names == ["age", "gender"]
    got = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(got["age"], expected["age"], rtol=1e-6)
    np.testing.assert_allclose(got["gender"], expected["gender"], rtol=1e-6)


def test_dldl_loss_and_metric_round_trip_through_their_configs():
    loss = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(DLDLLoss(3, 90, 2.5, l1_weight=0.5)))
    assert (loss.min_age, loss.max_age, loss.sigma, loss.l1_weight) == (3, 90, 2.5, 0.5)
    metric = ExpectedAgeMAE.from_config(ExpectedAgeMAE(min_age=3, scale=31.0).get_config())
    assert (metric.name, metric.min_age, metric.scale) == ("mae", 3, 31.0)


def test_model_config_dldl_round_trips_through_dict():
    cfg = ModelConfig(**SMALL, age_head="dldl", dldl_min_age=1, dldl_max_age=99, dldl_sigma=3)
    assert cfg.dldl_sigma == 3.0 and isinstance(cfg.dldl_sigma, float)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(age_head="softmax"), r"Invalid value for `age_head`: must be one of \('regression', 'coral', 'dldl'\). Received: age_head='softmax'"),
        (dict(dldl_sigma=0.0), r"Invalid value for `dldl_sigma`: must be a number of years in \[0.1, 30\]. Received: dldl_sigma=0.0"),
        (dict(dldl_sigma=31), r"Invalid value for `dldl_sigma`: must be a number of years in \[0.1, 30\]. Received: dldl_sigma=31"),
        (dict(dldl_sigma=float("nan")), r"Invalid value for `dldl_sigma`: must be a number of years in \[0.1, 30\]. Received: dldl_sigma=nan"),
        (dict(dldl_sigma="2"), r"Invalid value for `dldl_sigma`: must be a number of years in \[0.1, 30\]. Received: dldl_sigma='2'"),
        (dict(dldl_min_age=50, dldl_max_age=50), r"Invalid value for `dldl_max_age`: must satisfy 0 <= dldl_min_age \(50\) < dldl_max_age <= 116. Received: dldl_max_age=50"),
        (dict(dldl_max_age=120), r"Invalid value for `dldl_max_age`: must satisfy 0 <= dldl_min_age \(0\) < dldl_max_age <= 116. Received: dldl_max_age=120"),
    ],
)
def test_model_config_rejects_invalid_dldl_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)
