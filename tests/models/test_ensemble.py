from __future__ import annotations

import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from agesearch.models import ModelConfig, build_model, ensemble_model, inference_model, load_model

SMALL = dict(image_size=16, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(4, 8), head="gap", age_dense=8, gender_dense=8)
IMAGES = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def members() -> list[keras.Model]:
    """Three untrained inference models, one per age head, each with its own random weights."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    out = []
    for head in ("regression", "coral", "dldl"):
        cfg = ModelConfig(**SMALL, age_head=head)
        out.append(inference_model(build_model(cfg), cfg, 30.0))
    return out


def _mean_prediction(members: list[keras.Model], images: np.ndarray, tta_flip: bool) -> dict[str, np.ndarray]:
    views = [images, images[:, :, ::-1]] if tta_flip else [images]
    outs = [m.predict(v, verbose=0) for m in members for v in views]
    return {key: np.mean([o[key] for o in outs], axis=0) for key in ("age", "gender")}


@pytest.mark.parametrize("tta_flip", [False, True])
def test_ensemble_model_is_the_mean_of_its_members(members, tta_flip):
    model = ensemble_model(members, tta_flip=tta_flip)
    assert model.output_names == ["age", "gender"] and model.output_shape == [(None, 1), (None, 1)]
    got = model.predict(IMAGES, verbose=0)
    expected = _mean_prediction(members, IMAGES, tta_flip)
    np.testing.assert_allclose(got["age"], expected["age"], rtol=1e-5)
    np.testing.assert_allclose(got["gender"], expected["gender"], rtol=1e-5)


def test_ensemble_model_flip_differs_from_no_flip(members):
    """The flipped view really is another input (untrained convs are not mirror-symmetric)."""
    plain = ensemble_model(members, tta_flip=False).predict(IMAGES, verbose=0)
    flipped = ensemble_model(members, tta_flip=True).predict(IMAGES, verbose=0)
    assert not np.allclose(plain["age"], flipped["age"])


def test_ensemble_model_of_one_member_without_flip_is_that_member(members):
    got = ensemble_model(members[:1], tta_flip=False).predict(IMAGES, verbose=0)
    np.testing.assert_allclose(got["age"], members[0].predict(IMAGES, verbose=0)["age"], rtol=1e-6)


def test_ensemble_model_survives_save_and_load(members, tmp_path):
    model = ensemble_model(members, tta_flip=True)
    path = tmp_path / "ensemble.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.output_names == ["age", "gender"]
    got, expected = loaded.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(got["age"], expected["age"], rtol=1e-6)
    np.testing.assert_allclose(got["gender"], expected["gender"], rtol=1e-6)


def test_saved_ensemble_loads_in_a_fresh_process(members, tmp_path):
    """`agesearch.models.load_model` alone registers every custom layer (flip, CORAL, DLDL)."""
    model = ensemble_model(members, tta_flip=True)
    path = tmp_path / "ensemble.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", IMAGES)
    code = (
        "import numpy as np\n"
        "from agesearch.models import load_model\n"
        f"out = load_model({str(path)!r}).predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        "print(' '.join(str(float(a)) for a in out['age'].ravel()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-1500:]
    np.testing.assert_allclose([float(v) for v in done.stdout.split()], model.predict(IMAGES, verbose=0)["age"].ravel(), rtol=1e-6)


def test_ensemble_model_rejects_no_members():
    with pytest.raises(ValueError, match=r"Invalid value for `members`: must hold at least one inference model. Received: members=\[\]"):
        ensemble_model([], tta_flip=False)


def test_ensemble_model_rejects_members_of_different_input_shapes(members):
    cfg = ModelConfig(**{**SMALL, "image_size": 32})
    other = inference_model(build_model(cfg), cfg, 30.0)
    with pytest.raises(ValueError, match=r"Invalid value for `members`: every member must take the same input shape. Received: input shapes \[\(16, 16, 3\), \(32, 32, 3\)\]"):
        ensemble_model([members[0], other], tta_flip=False)


def test_ensemble_model_rejects_a_bare_two_branch_model():
    core = build_model(ModelConfig(**SMALL, age_head="dldl"))
    with pytest.raises(ValueError, match=r"Invalid value for `members`: each must be an inference model, with outputs `age` and `gender` of one value per image. Received: outputs \{'age': \(None, 117\), 'gender': \(None, 1\)\} of 'agesearch_cnn'"):
        ensemble_model([core], tta_flip=False)


def test_ensemble_model_rejects_members_that_share_weights(members):
    with pytest.raises(ValueError, match=r"Invalid value for `members`: must not share weights \(the same model twice\?\). Received: members 0 and 2 share 'shared_block1_conv/kernel'"):
        ensemble_model([members[0], members[1], members[0]], tta_flip=False)


@pytest.mark.parametrize("tta_flip", [False, True])
def test_ensemble_model_weights_count_a_member_that_many_times(members, tmp_path, tta_flip):
    model = ensemble_model(members[:2], tta_flip=tta_flip, weights=[2, 1])
    expected = _mean_prediction([members[0], members[0], members[1]], IMAGES, tta_flip)
    got = model.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(got["age"], expected["age"], rtol=1e-5)
    np.testing.assert_allclose(got["gender"], expected["gender"], rtol=1e-5)
    model.save(tmp_path / "weighted.keras")
    np.testing.assert_allclose(load_model(tmp_path / "weighted.keras").predict(IMAGES, verbose=0)["age"], got["age"], rtol=1e-6)


@pytest.mark.parametrize("weights", [[1], [1, 0], [1, 1.5], [True, 1]])
def test_ensemble_model_rejects_weights_that_are_not_one_positive_integer_per_member(members, weights):
    message = f"Invalid value for `weights`: must be one positive integer per member (2). Received: weights={weights}"
    with pytest.raises(ValueError, match=re.escape(message)):
        ensemble_model(members[:2], tta_flip=False, weights=weights)
