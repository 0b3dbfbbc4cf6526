"""export --format: ONNX, LiteRT and SavedModel files beside the .keras one, that run without agesearch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

# Runs in a fresh interpreter that imports only NumPy and onnxruntime: the ONNX file must need
# neither agesearch nor Keras (nor TensorFlow). argv: model.onnx, images.npy, answers.npy.
ORT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(names, {image.name: np.load(sys.argv[2]).astype(np.float32)})))
    np.save(sys.argv[3], np.stack([out["age"].reshape(-1), out["gender"].reshape(-1)]))
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"agesearch", "keras", "tensorflow", "jax", "torch"})
    assert "agesearch" not in sys.modules and not loaded, loaded
    print(json.dumps({"input": [image.name, image.shape[1:], image.type], "outputs": sorted(names)}))
    """
)


def _keras_and_onnx(out: Path, finished, cache_dir, tmp_path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(the .keras model's answers, the .onnx file's from a process without agesearch, what that process saw) on 12 test images."""
    import optuna

    from agesearch.models.inference import load_model
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.training.metrics import predict_age_gender

    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    ds, split = study_dataset(study.user_attrs["agesearch"], cache_dir=cache_dir)
    x = ds.images[split.test[:12]]  # uint8 RGB, as UTKFace's crops are decoded
    np.save(tmp_path / "x.npy", x)
    keras_age, keras_gender = predict_age_gender(load_model(out), x)
    done = subprocess.run([sys.executable, "-c", ORT_SCRIPT, str(out.with_suffix(".onnx")), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    y = np.load(tmp_path / "y.npy")
    return np.stack([keras_age, keras_gender]), y, json.loads(done.stdout)


@pytest.mark.parametrize(
    "what, args",
    [
        ("single", ["--epochs", "1"]),  # the best trial, retrained for one epoch
        ("ensemble", ["--ensemble", "2", "--tta", "flip"]),  # stored models, no retraining; flip and averaging in the graph
    ],
)
def test_export_onnx_runs_in_onnxruntime_without_agesearch_and_matches_keras(what, args, finished, cache_dir, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / what / "model.keras"
    code, stdout, err = run_cli(["export", "--study", finished.name, "--storage", finished.url, *args, "--format", "onnx", "--out", str(out)], capsys)
    assert code == 0, err
    assert out.is_file() and out.with_suffix(".onnx").is_file() and out.with_suffix(".md").is_file()
    assert f"onnx: {out.with_suffix('.onnx')}  (largest difference from the Keras model" in stdout
    want, got, seen = _keras_and_onnx(out, finished, cache_dir, tmp_path)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert ((got[1] >= 0) & (got[1] <= 1)).all()
    assert seen == {"input": ["image", [32, 32, 3], "tensor(float)"], "outputs": ["age", "gender"]}
    card = json.loads(out.with_suffix(".json").read_text())
    (entry,) = card["exports"]
    assert entry["format"] == "onnx" and entry["file"] == "model.onnx" and entry["checked_with"].startswith("onnxruntime ")
    assert entry["inputs"] == [{"name": "image", "shape": [None, 32, 32, 3], "dtype": "float32"}]
    assert sorted(o["name"] for o in entry["outputs"]) == ["age", "gender"] and entry["max_abs_diff"] < 1e-4
    assert ("ensemble" in card) == (what == "ensemble")


@pytest.mark.parametrize("fmt, name", [("litert", "model.tflite"), ("saved_model", "model_saved_model")])
def test_export_litert_and_saved_model_are_written_beside_and_checked_against_keras(fmt, name, finished, tmp_path, capsys):
    out = tmp_path / "model.keras"
    code, stdout, err = run_cli(["export", "--study", finished.name, "--storage", finished.url, "--ensemble", "1", "--format", fmt, "--out", str(out)], capsys)
    assert code == 0, err
    assert (tmp_path / name).exists() and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.keras", "model.json", "model.md", name])  # no temporary left
    (entry,) = json.loads(out.with_suffix(".json").read_text())["exports"]
    assert entry["file"] == name and 0 < entry["checked_on"] <= 16
    assert entry["max_abs_diff"] < 1e-4 and entry["checked_with"]
    assert [i["name"] for i in entry["inputs"]] == ["image"] and entry["inputs"][0]["shape"][1:] == [32, 32, 3]
    assert sorted(o["name"] for o in entry["outputs"]) == ["age", "gender"]
    assert f"`{name}`: {fmt}, runs without agesearch or Keras" in out.with_suffix(".md").read_text()


def test_export_format_choices_are_the_formats_module_ones(capsys):
    from agesearch.search.cli import build_parser
    from agesearch.search.export.formats import FORMATS

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    (action,) = [a for a in export._actions if a.dest == "format"]
    assert tuple(action.choices) == FORMATS and action.default == "keras"
    code, _, err = run_cli(["export", "--study", "s", "--format", "pt"], capsys)
    assert code == 2 and err == "agesearch export: error: argument --format: invalid choice: 'pt' (choose from 'keras', 'onnx', 'litert', 'saved_model')\n"


def test_export_onnx_without_tf2onnx_names_the_extra_in_one_line_before_the_study_opens(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    monkeypatch.chdir(tmp_path)  # no studies/ here: the format is checked first
    code, out, err = run_cli(["export", "--study", "nope", "--format", "onnx"], capsys)
    assert code == 2 and out == ""
    assert err == "agesearch: error: --format onnx needs the tf2onnx package: pip install 'agesearch[onnx]'\n"


@pytest.mark.parametrize(
    "fmt, backend, message",
    [
        ("onnx", "jax", "--format onnx is written through TensorFlow; Keras runs on jax here: run export with KERAS_BACKEND=tensorflow"),
        ("tflite", None, "unknown --format 'tflite': choose from keras, onnx, litert, saved_model"),
    ],
)
def test_check_format_refuses_what_cannot_be_written(fmt, backend, message):
    from agesearch.search.errors import UsageError
    from agesearch.search.export.formats import check_format

    with pytest.raises(UsageError, match=f"^{__import__('re').escape(message)}$"):
        check_format(fmt, backend=backend)
    check_format("keras", backend="jax")  # the .keras file is every backend's


def test_format_paths_sit_beside_the_keras_file():
    from agesearch.search.export.formats import format_path

    out = Path("/m/best.keras")
    assert [format_path(out, f) for f in ("keras", "onnx", "litert", "saved_model")] == [
        out, Path("/m/best.onnx"), Path("/m/best.tflite"), Path("/m/best_saved_model")]


def test_a_saved_model_folder_exported_again_replaces_the_old_one_whole(tmp_path):
    from agesearch.search.export.formats import _replacing_folder

    dest = tmp_path / "m_saved_model"
    dest.mkdir()
    (dest / "old.pb").write_text("old")
    with pytest.raises(RuntimeError), _replacing_folder(dest) as tmp:
        (tmp / "saved_model.pb").write_text("half")
        raise RuntimeError("the export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_saved_model"] and (dest / "old.pb").is_file()  # the old one stays, no temporary
    with _replacing_folder(dest) as tmp:
        (tmp / "saved_model.pb").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_saved_model"] and [p.name for p in dest.iterdir()] == ["saved_model.pb"]


@pytest.mark.parametrize("fmt", ["litert", "saved_model"])
def test_an_exported_file_that_computes_other_answers_is_not_left_behind(fmt, tmp_path, monkeypatch):
    from agesearch.models import ModelConfig
    from agesearch.models.builder import build_model
    from agesearch.models.inference import inference_model
    from agesearch.search.errors import UsageError
    from agesearch.search.export import formats

    cfg = ModelConfig(image_size=16, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(4, 4), age_dense=4, gender_dense=4)
    model = inference_model(build_model(cfg), cfg, 30.0)
    monkeypatch.setattr(formats, "_check", lambda *a: {"checked_with": "test", "checked_on": 2, "max_abs_diff": 0.5})
    with pytest.raises(UsageError, match=rf"^the {fmt} file does not reproduce the model \(largest difference 0.5\); nothing was exported$"):
        formats.export_format(model, tmp_path / "m.keras", fmt, np.zeros((2, 16, 16, 3), "uint8"))
    assert list(tmp_path.iterdir()) == []
