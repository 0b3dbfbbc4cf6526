"""The Python API: `import agesearch` stays light, the README's example runs as written, search takes
Optuna callbacks (and `study.stop()`), export keeps the CLI's rules, load_model predicts from
arrays and files. Synthetic data at 16-32 px, 1 epoch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import agesearch
from agesearch.search.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Python API"
TINY = dict(epochs=1, image_size=16, limit=120, synthetic_count=200, baselines=False, sampler="random")


def readme_example() -> tuple[str, Path]:
    """The first ```python block under the heading "## Python API" of README.md. The test runs
    this text, so the README cannot show an example that does not work."""
    path = ROOT / "README.md"
    text = "\n" + path.read_text()
    assert f"\n{HEADING}\n" in text, f"README.md has no section {HEADING!r}"
    section = text.split(f"\n{HEADING}\n", 1)[1]
    block = re.search(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert block, f"README.md: no ```python block in its section {HEADING!r}"
    return block.group(1), path


def test_api_import_is_light_and_search_is_the_callable_package():
    code = ("import inspect, sys, agesearch; import agesearch.search.loop.options; "
            "print(callable(agesearch.search), agesearch.search.__name__, hasattr(agesearch.search, 'loop'), agesearch.export.__module__, "
            "list(inspect.signature(agesearch.search).parameters)[:4], "
            "sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'optuna', 'mlflow', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True agesearch.search True agesearch.search.api ['space', 'data', 'n_trials', 'callbacks'] []"


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mlflow"), reason='the README example logs to MLflow: pip install "agesearch[mlflow]"')
def test_api_readme_example_runs_as_written(in_tmp, capsys):
    code, source = readme_example()
    exec(compile(code, str(source), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "trial 0 is COMPLETE" in out and "trial 1 is COMPLETE" in out
    assert re.search(r"test age MAE [\d.]+ years", out)
    assert re.search(r"face\.jpg\s+[\d.]+\s+(fe)?male", out)  # the DataFrame of the file
    assert (in_tmp / "demo.keras").is_file() and (in_tmp / "demo.json").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"]


def test_api_search_calls_callbacks_after_each_trial_and_honours_study_stop(in_tmp):
    import optuna
    from optuna.trial import TrialState

    seen = []
    study = agesearch.search("train", "synthetic", n_trials=3, study_name="cb", **TINY,
                             callbacks=[lambda s, t: seen.append((s.study_name, t.number, t.state)),
                                        optuna.study.MaxTrialsCallback(1, states=(TrialState.COMPLETE,))])
    assert seen == [("cb", 0, TrialState.COMPLETE)]  # MaxTrialsCallback's study.stop() ended it at 1 of the 3
    assert len(study.trials) == 1 and isinstance(study, optuna.Study)
    assert agesearch.search is sys.modules["agesearch.search"]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_trial=3), TypeError, r"unexpected keyword argument\(s\) 'n_trial'; it takes .*epochs"),
    (dict(callbacks=print), TypeError, r"callbacks must be a list of callables"),
    (dict(image_size=8), UsageError, r"Invalid value for `image_size`: must be an integer >= 16. Received: image_size=8"),
    (dict(limit=0), UsageError, r"Invalid value for `limit`: must be a positive integer or None. Received: limit=0"),
    (dict(split=(0.5, 0.5, 0.5)), UsageError, r"Invalid value for `split`"),
    (dict(space="nope"), UsageError, r"nope"),
    (dict(pruner="median", objective="multi"), UsageError, r"--pruner median cannot be used with --objective multi"),
])
def test_api_search_bad_input_fails_before_anything_runs(in_tmp, kwargs, error, match):
    with pytest.raises(error, match=match):
        agesearch.search(**kwargs)
    assert not (in_tmp / "studies").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(trial=1, ensemble=2), r"--trial and --ensemble exclude each other"),
    (dict(ensemble=2, epochs=3), r"--epochs sets a retraining: with --ensemble it needs --refit-on-train-val"),
    (dict(ensemble=2, image_size=64), r"--image-size 64 retrains: with --ensemble it needs --refit-on-train-val"),
    (dict(tta="rotate"), r"--tta must be one of flip or None, got 'rotate'"),
])
def test_api_export_keeps_the_cli_rules(in_tmp, kwargs, match):
    with pytest.raises(UsageError, match=match):
        agesearch.export("some-study", **kwargs)


def test_api_export_unknown_study_is_one_line(in_tmp):
    with pytest.raises(Exception, match=r"no study database|no study"):
        agesearch.export("missing")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small inference model saved as `export` saves one (untrained: predictions only need to be consistent)."""
    import keras

    from agesearch.models import ModelConfig, build_model
    from agesearch.models.inference import inference_model

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(image_size=16, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_dense=16, gender_dense=16)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    inference_model(build_model(cfg), cfg, age_scale=30.0).save(path)
    return path


def test_api_load_model_predicts_arrays_and_files_alike(model_file, tmp_path):
    from PIL import Image

    model = agesearch.load_model(model_file)
    assert model.image_size == 16 and model.card is None and model.model.output_names
    faces = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    paths = [tmp_path / f"face{i}.png" for i in range(3)]  # PNG: lossless, so a file decodes to its array
    for face, path in zip(faces, paths):
        Image.fromarray(face).save(path)
    from_arrays, from_files = model.predict(faces), model.predict(paths)
    assert list(from_arrays.columns) == ["age", "gender", "p_female", "probability"]
    assert list(from_files.columns) == ["image", "age", "gender", "p_female", "probability"]
    assert from_files["image"].tolist() == [str(p) for p in paths]
    np.testing.assert_allclose(from_files["age"], from_arrays["age"], rtol=1e-5)
    np.testing.assert_allclose(from_files["p_female"], from_arrays["p_female"], rtol=1e-5)
    assert (from_arrays["gender"] == np.where(from_arrays["p_female"] >= 0.5, "female", "male")).all()
    assert (from_arrays["probability"] >= 0.5).all()
    np.testing.assert_allclose(model.predict(faces[0].astype(np.float32))["age"], from_arrays["age"][:1], rtol=1e-5)  # one (H, W, 3) float image
    assert len(model.predict(str(paths[0]))) == 1 and len(model.predict([])) == 0


def test_api_load_model_resizes_other_sizes_as_predict_does(model_file, tmp_path):
    from PIL import Image

    from agesearch.search.data.images import decode_image

    model = agesearch.load_model(model_file)
    big = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    expected = model.predict(decode_image(tmp_path / "big.png", 16)[None])
    np.testing.assert_allclose(model.predict(big[None])["age"], expected["age"], rtol=1e-5)
    np.testing.assert_allclose(model.predict(tmp_path / "big.png")["age"], expected["age"], rtol=1e-5)


def test_api_load_model_bad_inputs_are_one_line(model_file, tmp_path):
    model = agesearch.load_model(model_file)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read 2 image file\(s\): .*missing.jpg \(no such file\), .*notes.txt \(not an image\)"):
        model.predict([tmp_path / "missing.jpg", tmp_path / "notes.txt"])
    with pytest.raises(DataError, match=r"RGB array \(n, H, W, 3\).*got shape \(2, 16, 16\)"):
        model.predict(np.zeros((2, 16, 16)))
    with pytest.warns(UserWarning, match="expects RGB values 0-255"):
        model.predict(np.full((1, 16, 16, 3), 0.5, np.float32))
    with pytest.raises(UsageError, match=r"no model file at"):
        agesearch.load_model(tmp_path / "none.keras")
