"""export, evaluate, predict: from a tiny finished study to a model file others can load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from agesearch.search.cli import main
from conftest import run_cli

CARD_KEYS = {"model_config", "train_config", "data", "training", "test_metrics", "versions", "study", "outputs", "input"}
METRIC_KEYS = {"n", "age_mae", "gender_accuracy", "per_decade_mae", "confusion"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, finished):
    """The session's finished study (conftest) and its best trial exported into a folder of this module's."""
    root = tmp_path_factory.mktemp("export")
    assert main(["export", "--study", finished.name, "--storage", finished.url, "--out", str(root / "model.keras")]) == 0
    return root


@pytest.fixture
def study_args(finished) -> list[str]:
    return ["--study", finished.name, "--storage", finished.url]


def test_export_writes_model_and_card_with_test_metrics(exported):
    model, card_path = exported / "model.keras", exported / "model.json"
    assert model.is_file() and card_path.is_file()
    card = json.loads(card_path.read_text())
    assert CARD_KEYS <= set(card)
    assert card["data"]["image_size"] == 32 and len(card["data"]["fingerprint"]) == 16
    assert card["data"]["split_method"] == "grouped-phash"
    assert METRIC_KEYS <= set(card["test_metrics"]) and card["test_metrics"]["n"] == card["data"]["split_sizes"]["test"] > 0
    assert card["training"]["seconds"] > 0 and card["training"]["trained_on"] == "train"
    assert card["versions"]["keras"] and card["versions"]["backend"]
    assert card["reload_check_max_abs_diff"] < 1e-4


def test_export_model_loads_in_a_fresh_process_with_same_predictions(exported, tmp_path):
    import keras

    from agesearch.search.training.metrics import predict_age_gender

    path = exported / "model.keras"
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    np.save(tmp_path / "x.npy", x)
    here = predict_age_gender(keras.saving.load_model(path), x)
    code = textwrap.dedent(
        f"""
        import agesearch.models.inference  # registers agesearch's layers (models/__init__.py is lazy)
        import keras, numpy as np
        m = keras.saving.load_model({str(path)!r})
        out = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        np.save({str(tmp_path / 'y.npy')!r}, np.stack([np.ravel(out["age"]), np.ravel(out["gender"])]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    there = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(there[0], here[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(there[1], here[1], rtol=1e-5, atol=1e-5)
    assert np.isfinite(there).all() and ((there[1] >= 0) & (there[1] <= 1)).all()


def test_export_refit_on_train_val_and_chosen_trial(exported, study_args, capsys):
    out = exported / "refit" / "m.keras"
    code, stdout, err = run_cli(["export", *study_args, "--trial", "1", "--refit-on-train-val", "--out", str(out)], capsys)
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["study"]["trial"] == 1 and card["training"]["trained_on"] == "train+val"
    assert card["training"]["epochs_run"] == card["study"]["search_best_epoch"] + 1
    assert "age MAE per decade" in stdout and "gender confusion" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "nope"], r"no study database at"),
        (["STUDY", "--trial", "99"], r"study 'rep' has no trial 99"),
        (["STUDY", "--out", "m.h5"], r"--out must end in .keras"),
    ],
)
def test_export_bad_input_is_one_line_exit_2(exported, study_args, capsys, monkeypatch, args, message):
    monkeypatch.chdir(exported)
    args = [*study_args, *args[1:]] if args[0] == "STUDY" else args
    code, _, err = run_cli(["export", *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err)


def test_evaluate_json_on_synthetic_data_returns_the_fields(exported, synthetic_dir, capsys):
    model = exported / "model.keras"
    code, out, err = run_cli(["evaluate", "--model", str(model), "--data", str(synthetic_dir), "--limit", "60", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert METRIC_KEYS | {"skipped"} <= set(r)
    assert r["n"] == 60 and 0 <= r["gender_accuracy"] <= 1 and r["age_mae"] >= 0
    assert sum(map(sum, r["confusion"]["matrix"])) == 60
    assert r["skipped"] == {"malformed_names": 0, "unreadable_files": 0}


def test_evaluate_resizes_any_pixel_size_and_counts_malformed_names(exported, synthetic_dir, tmp_path, capsys):
    from PIL import Image

    for name in sorted(os.listdir(synthetic_dir))[:5]:
        Image.open(synthetic_dir / name).resize((77, 77)).save(tmp_path / name)
    (tmp_path / "55_0_0_20170116232725357jpg").write_bytes(b"x")
    code, out, err = run_cli(["evaluate", "--model", str(exported / "model.keras"), "--data", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 5 and r["skipped"]["malformed_names"] == 1 and r["image_size"] == 32


def test_predict_two_images_and_a_bad_file_reports_it_without_stopping(exported, synthetic_dir, tmp_path, capsys):
    model = exported / "model.keras"
    good = [str(synthetic_dir / n) for n in sorted(os.listdir(synthetic_dir))[:2]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    code, out, err = run_cli(["predict", "--model", str(model), good[0], str(bad), good[1], str(tmp_path / "missing.jpg")], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(good[0] + ": age ") and ("male (p=" in lines[1])
    assert f"agesearch: error: {bad}: cannot read as an image" in err and "missing.jpg: no such file" in err
    code, out, _ = run_cli(["predict", "--model", str(model), "--json", *good], capsys)
    rows = [json.loads(l) for l in out.strip().splitlines()]
    assert code == 0 and len(rows) == 2 and {"age", "gender", "probability", "p_female"} <= set(rows[0])
    assert all(0.5 <= r["probability"] <= 1 for r in rows)


def test_predict_missing_model_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["predict", "--model", str(tmp_path / "none.keras"), "x.jpg"], capsys)
    assert code == 2 and err.strip() == f"agesearch: error: no model file at {tmp_path / 'none.keras'}"
