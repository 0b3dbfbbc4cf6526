"""export, evaluate, predict: from a tiny finished study to a model file others can load."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _test_split_check(out: Path, storage_url: str, study_name: str, cache_dir: Path) -> tuple[dict, dict]:
    """(the card's test metrics, the trivial predictors' on the same images), after checking that
    the card's metrics are the saved file's, recomputed here on the study's test split."""
    import optuna

    from agesearch.models.inference import load_model
    from agesearch.search.data.study_data import study_dataset

    card = json.loads(out.with_suffix(".json").read_text())
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    ds, split = study_dataset(study.user_attrs["agesearch"], cache_dir=cache_dir)
    assert card["data"]["split_sizes"] == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    test = split.test
    pred = load_model(out).predict(ds.images[test], verbose=0)
    age, p_female = np.ravel(pred["age"]), np.ravel(pred["gender"])
    true_age = np.array([int(ds.names[i].split("_")[0]) for i in test])  # from the file names, not the loader
    true_gender = np.array([int(ds.names[i].split("_")[1]) for i in test])
    got = card["test_metrics"]
    assert got["n"] == len(test) > 0
    assert got["age_mae"] == pytest.approx(float(np.mean(np.abs(age - true_age))), abs=1e-3)
    assert got["gender_accuracy"] == pytest.approx(float(np.mean((p_female >= 0.5) == true_gender)))
    assert got["confusion"]["matrix"] == [[int(np.sum((true_gender == t) & ((p_female >= 0.5) == p))) for p in (0, 1)] for t in (0, 1)]
    decades = {f"{d}-{d + 9}": true_age // 10 * 10 == d for d in sorted(set(true_age // 10 * 10))}
    assert got["per_decade_mae"] == pytest.approx({k: float(np.mean(np.abs(age - true_age)[m])) for k, m in decades.items()}, abs=1e-3)
    train_age, train_gender = ds.ages[split.train], ds.genders[split.train]
    trivial = {
        "age_mae": float(np.mean(np.abs(true_age - np.median(train_age)))),
        "gender_accuracy": float(np.mean(true_gender == int(np.mean(train_gender) >= 0.5))),
    }
    return got, trivial


def test_export_card_test_metrics_are_the_saved_models_on_the_test_split(exported, finished, cache_dir):
    # The search's 2-epoch model is no better than the trivial predictors: `learned` below checks that.
    _test_split_check(exported / "model.keras", finished.url, finished.name, cache_dir)


def test_export_writes_a_markdown_card_with_counts_per_decade_gender_and_race_and_the_data_terms(exported, finished, cache_dir):
    import optuna

    from agesearch.search.data.images import RACES
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.export.model_card import SYNTHETIC_TERMS

    card = json.loads((exported / "model.json").read_text())
    md = (exported / "model.md").read_text()
    assert card["model_card"] == "model.md" and card["data"]["terms"] == SYNTHETIC_TERMS and card["exports"] == []
    groups, m = card["test_metrics_by_group"], card["test_metrics"]
    assert groups["split"] == "test" and groups["n"] == m["n"] > 0
    # The race of each test face, read from its file name (AGE_GENDER_RACE_STAMP), not by the loader.
    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    ds, split = study_dataset(study.user_attrs["agesearch"], cache_dir=cache_dir)
    races = [int(ds.names[i].split("_")[2]) for i in split.test]
    assert {k: r["n"] for k, r in groups["race"].items()} == {name: races.count(code) for code, name in enumerate(RACES)}
    assert {k: r["n"] for k, r in groups["decade"].items()} == m["per_decade_n"]
    assert {k: r["age_mae"] for k, r in groups["decade"].items()} == pytest.approx(m["per_decade_mae"], abs=1e-3)
    assert [r["n"] for r in groups["gender"].values()] == [sum(row) for row in m["confusion"]["matrix"]]
    # The Markdown: a row per group with its count, the small groups flagged, the terms, the use, the sizes.
    for kind in ("decade", "gender", "race"):
        for group, r in groups[kind].items():
            assert f"| {group} | {r['n']} | " in md, (kind, group)
    assert "few faces (< 30)" in md and "> **Warning:** few faces (fewer than 30) in " in md  # 30 test faces cannot fill a group
    assert f"**Terms:** {SYNTHETIC_TERMS}" in md
    assert "**Not for identifying anyone**" in md and "**Gender is binary here, as UTKFace labels it**" in md
    assert "| searched at | 32 px, 2 epochs |" in md and "| trained at | 32 px, 2 epochs (ran " in md
    assert f"age MAE **{m['age_mae']:.2f} years**" in md


@pytest.fixture(scope="module")
def learned(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """A study whose one trial is a small model that learns (16 px, 5 epochs, batch 16), exported.

    Its configs and data are fixed here, unlike the search's trials (whose 2-epoch models score
    like the trivial predictors): (the exported .keras path, the storage URL).
    """
    import optuna
    from optuna.trial import create_trial

    from agesearch.models import ModelConfig, TrainConfig
    from agesearch.search.loop.run import DataSpec, load_data, study_meta

    root = tmp_path_factory.mktemp("learned")
    spec = DataSpec(image_size=16, limit=600, cache_dir=cache_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        ds, split, data = load_data(spec)
    url = f"sqlite:///{root / 'learned.db'}"
    study = optuna.create_study(study_name="learned", storage=url)
    study.set_user_attr("agesearch", study_meta(spec, "hand", "combined", ds, split, data.baselines))
    model = ModelConfig(image_size=16, shared_blocks=1, age_blocks=2, gender_blocks=1, filters=(8, 16, 16), dense_dropout=0.0, age_dense=16, gender_dense=16)
    train = TrainConfig(epochs=5, batch_size=16)
    study.add_trial(create_trial(value=1.0, user_attrs={"model_config": model.to_dict(), "train_config": train.to_dict(), "objective": 1.0}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "--study", "learned", "--storage", url, "--out", str(root / "model.keras")]) == 0
    return root / "model.keras", url


def test_export_of_a_model_that_learns_beats_the_trivial_predictors_on_the_test_split(learned, cache_dir):
    out, url = learned
    got, trivial = _test_split_check(out, url, "learned", cache_dir)
    assert got["age_mae"] < 0.6 * trivial["age_mae"]  # measured: 5.8 y against 15.3 y
    assert got["gender_accuracy"] > trivial["gender_accuracy"] + 0.25  # 0.97 against 0.46


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


def test_evaluate_json_on_synthetic_data_returns_the_fields(exported, synthetic_dir, cache_dir, capsys):
    from agesearch.models.inference import load_model
    from agesearch.search.data.images import load_faces

    model = exported / "model.keras"
    code, out, err = run_cli(["evaluate", "--model", str(model), "--data", str(synthetic_dir), "--limit", "60", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert METRIC_KEYS | {"skipped"} <= set(r)
    # The model's own answers on the same 60 images (--limit: the seeded subset, seed 0), labels
    # read from the file names.
    ds = load_faces(synthetic_dir, 32, limit=60, seed=0, cache_dir=cache_dir)
    pred = load_model(model).predict(ds.images, verbose=0)
    true_age = np.array([int(n.split("_")[0]) for n in ds.names])
    true_gender = np.array([int(n.split("_")[1]) for n in ds.names])
    assert r["n"] == len(ds) == 60
    assert r["age_mae"] == pytest.approx(float(np.mean(np.abs(np.ravel(pred["age"]) - true_age))), abs=1e-3)
    assert r["gender_accuracy"] == pytest.approx(float(np.mean((np.ravel(pred["gender"]) >= 0.5) == true_gender)))
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


# --- export --ensemble K, --tta flip --------------------------------------------------------------


def _complete_by_value(finished):
    """The study's COMPLETE trials, best (lowest objective) first: the order of the ensemble's candidates."""
    import optuna

    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study, sorted(done, key=lambda t: (t.value, t.number))


@pytest.fixture(scope="module")
def ensembled(tmp_path_factory, finished):
    """`export --ensemble 3 --tta flip` of the session's finished study: (folder, stdout)."""
    import contextlib
    import io

    _, done = _complete_by_value(finished)
    assert len(done) >= 3, "the shared finished study should hold 3 COMPLETE trials, each with its stored model"
    root = tmp_path_factory.mktemp("ensemble")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--study", finished.name, "--storage", finished.url, "--ensemble", "3", "--tta", "flip", "--out", str(root / "ens.keras")])
    assert code == 0
    return root, stdout.getvalue()


def test_export_ensemble_predicts_the_mean_of_its_members_flip_averaged(ensembled, finished, tmp_path):
    import keras
    import optuna

    from agesearch.models.inference import load_model  # registers agesearch's layers (flip, CORAL, DLDL)
    from agesearch.search.store.artifacts import STORE_ATTR, model_artifacts

    root, _ = ensembled
    card = json.loads((root / "ens.json").read_text())
    study, done = _complete_by_value(finished)
    by_number = {t.number: t for t in done}
    weights = {m["trial"]: m["weight"] for m in card["members"]}
    assert card["study"]["trials"] == list(weights) and card["ensemble"]["tta"] == "flip"
    assert 1 <= sum(weights.values()) <= 3  # at most K picks
    # The members' own stored models, fetched with Optuna's API rather than export's; a member
    # of weight w counts w times in the mean.
    store = optuna.artifacts.FileSystemArtifactStore(study.user_attrs[STORE_ATTR])
    x = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype("float32")
    ages, genders = [], []
    for number, weight in weights.items():
        path = tmp_path / f"trial-{number}.keras"
        optuna.artifacts.download_artifact(artifact_store=store, file_path=str(path), artifact_id=model_artifacts(by_number[number])[-1]["artifact_id"])
        member = load_model(path)
        for view in (x, x[:, :, ::-1]):
            out = member.predict(view, verbose=0)
            ages += [out["age"]] * weight
            genders += [out["gender"]] * weight
    got = keras.saving.load_model(root / "ens.keras", compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(got["age"], np.mean(ages, axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got["gender"], np.mean(genders, axis=0), rtol=1e-5, atol=1e-6)


def test_export_ensemble_card_lists_members_and_sets_the_best_single_beside_the_ensemble(ensembled, finished):
    root, stdout = ensembled
    card = json.loads((root / "ens.json").read_text())
    _, done = _complete_by_value(finished)
    by_number = {t.number: t for t in done}
    members = card["members"]
    assert [m["trial"] for m in members] == list(dict.fromkeys(card["ensemble"]["selection"]["picks"]))  # by first pick
    for m in members:
        t = by_number[m["trial"]]
        assert m["objective"] == pytest.approx(t.user_attrs["objective"]) and m["preset"] == t.user_attrs.get("preset")
        assert METRIC_KEYS <= set(m["test_metrics"]) and m["test_metrics"]["n"] == card["data"]["split_sizes"]["test"]
    cmp = card["side_by_side"]
    best, ens = cmp["best_single"], cmp["ensemble"]
    assert cmp["split"] == "test" and best["trial"] == members[0]["trial"] and best["tta"] is None
    assert best["age_mae"] == members[0]["test_metrics"]["age_mae"] and best["gender_accuracy"] == members[0]["test_metrics"]["gender_accuracy"]
    assert best["per_decade_mae"] == members[0]["test_metrics"]["per_decade_mae"]
    assert ens["age_mae"] == card["test_metrics"]["age_mae"] and ens["per_decade_mae"] == card["test_metrics"]["per_decade_mae"]
    assert ens["trials"] == [m["trial"] for m in members] and ens["tta"] == "flip"
    assert card["reload_check_max_abs_diff"] < 1e-4
    # The command prints the same comparison: both models, a row per decade.
    assert f"A = best single model: trial {members[0]['trial']}, stored model" in stdout
    listed = ", ".join(f"trial {m['trial']}" + (f" x{m['weight']}" if m["weight"] > 1 else "") for m in members)
    assert f"B = exported model:    ensemble of {len(members)} ({listed}) + flip TTA" in stdout
    rows = [l.split() for l in stdout.splitlines()]
    assert ["age", "MAE", "(years)", f"{best['age_mae']:.2f}", f"{ens['age_mae']:.2f}"] in rows
    for decade, n in cmp["per_decade_n"].items():
        assert [decade, str(n), "images", f"{best['per_decade_mae'][decade]:.2f}", f"{ens['per_decade_mae'][decade]:.2f}"] in rows


def test_export_ensemble_markdown_card_lists_the_members_with_why_each_got_in(ensembled):
    root, _ = ensembled
    card = json.loads((root / "ens.json").read_text())
    md = (root / "ens.md").read_text()
    assert md.startswith(f"# Model card: age and gender from a face crop (rep, ensemble of {len(card['members'])})")
    assert card["test_metrics_by_group"]["n"] == card["test_metrics"]["n"] and "| Others | " in md
    for m in card["members"]:
        name = f"| trial {m['trial']}" + (f" (preset {m['preset']})" if m.get("preset") else "")
        assert f"{name} | {m['weight']} | 32 px, 2 epochs | 32 px, 2 epochs | {m['why']} | " in md  # stored models: trained as searched


def test_export_ensemble_members_each_have_a_reason_and_the_val_average_is_no_worse_than_its_best_member(ensembled, finished, cache_dir):
    """Greedy selection on val: the card's numbers, recomputed from the members' stored models."""
    import optuna

    from agesearch.models.inference import load_model
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.export.ensemble import pool_size, stored_model
    from agesearch.search.export.selection import average_objective
    from agesearch.search.store.artifacts import download_model, study_store
    from agesearch.search.training.metrics import Baselines, predict_age_gender

    root, stdout = ensembled
    card = json.loads((root / "ens.json").read_text())
    selection, members = card["ensemble"]["selection"], card["members"]
    _, done = _complete_by_value(finished)
    assert [c["trial"] for c in selection["candidates"]] == [t.number for t in done][: pool_size(3)]
    assert len(selection["picks"]) == sum(m["weight"] for m in members) <= 3
    # Each member says why it got in: the first is the best single candidate, each later pick
    # lowered the val objective of the average.
    assert members[0]["picks"][0]["step"] == 1 and members[0]["why"].startswith("step 1: first: best single candidate")
    for m in members:
        assert m["why"] and m["picks"] and m["why"] in stdout
        for pick in m["picks"]:
            assert pick["step"] == 1 or pick["val_objective_after"] < pick["val_objective_before"]
    # The same numbers from the stored models on the study's val split.
    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    meta = study.user_attrs["agesearch"]
    ds, split = study_dataset(meta, cache_dir=cache_dir)
    truth = (ds.ages[split.val], ds.genders[split.val], Baselines(**meta["baselines"]))
    store = study_store(study, finished.url)
    by_number = {t.number: t for t in done}
    alone, ages, probs = [], [], []
    for m in members:
        model = load_model(download_model(store, stored_model(by_number[m["trial"]], store), cache_dir / "models").path)
        age, p = predict_age_gender(model, ds.images[split.val])
        alone.append(average_objective(age, p, *truth))
        ages += [age] * m["weight"]
        probs += [p] * m["weight"]
    together = average_objective(np.mean(ages, axis=0), np.mean(probs, axis=0), *truth)
    assert selection["val_objective"] == pytest.approx(together, abs=1e-6)
    assert together <= min(alone) + 1e-9 and min(alone) == pytest.approx(selection["best_single_val_objective"], abs=1e-6)
    assert alone[0] == pytest.approx(min(alone), abs=1e-9)


def test_evaluate_and_predict_accept_an_ensemble_as_a_single_model(ensembled, synthetic_dir, capsys):
    model = str(ensembled[0] / "ens.keras")
    code, out, err = run_cli(["evaluate", "--model", model, "--data", str(synthetic_dir), "--limit", "20", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 20 and 0 <= r["gender_accuracy"] <= 1 and r["age_mae"] >= 0 and r["image_size"] == 32
    good = [str(synthetic_dir / n) for n in sorted(os.listdir(synthetic_dir))[:2]]
    code, out, err = run_cli(["predict", "--model", model, "--json", *good], capsys)
    rows = [json.loads(l) for l in out.strip().splitlines()]
    assert code == 0, err
    assert [r["image"] for r in rows] == good and all(0.5 <= r["probability"] <= 1 for r in rows)


@pytest.mark.parametrize(
    "extra, what",
    [
        ([], "with a stored model"),
        (["--refit-on-train-val"], "with a stored model (to score on val) and model_config and train_config (to retrain)"),
    ],
)
def test_export_ensemble_of_a_study_without_candidates_is_one_line_exit_2_before_keras(tmp_path, extra, what):
    """--ensemble K means at most K picks (a candidate may count twice): only a study with no candidate fails."""
    from report_study import hand_made_study

    url = f"sqlite:///{tmp_path / 'hand.db'}"
    hand_made_study(url, "hand")  # COMPLETE trials, no stored model
    code = (
        "import sys\n"
        "from agesearch.search.cli import main\n"
        f"rc = main({['export', '--study', 'hand', '--storage', url, '--ensemble', '20', *extra]!r})\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    done_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done_run.returncode == 2
    assert done_run.stderr == f"agesearch: error: --ensemble 20: study 'hand' has no COMPLETE trial {what}\n"
    assert done_run.stdout.strip() == "[]"  # no framework was imported


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ensemble", "2", "--trial", "0"], "agesearch: error: --trial and --ensemble exclude each other (--ensemble chooses its members on val)"),
        (["--ensemble", "2", "--epochs", "3"], "agesearch: error: --epochs sets a retraining: with --ensemble it needs --refit-on-train-val (the stored models are used as they are)"),
        (["--ensemble", "0"], "agesearch export: error: argument --ensemble: must be a positive integer, got '0'"),
        # argparse's own wording (quotes around the choices vary with the Python version)
        (["--tta", "rotate"], "agesearch export: error: argument --tta: invalid choice: 'rotate' (choose from "),
    ],
)
def test_export_ensemble_bad_options_are_one_line_exit_2(study_args, capsys, args, message):
    code, _, err = run_cli(["export", *study_args, *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == message or (message.endswith("(choose from ") and err.startswith(message) and "flip" in err)


def _trial(number: int, value: float, config: str | None, params: dict | None = None):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    attrs = {"model_config": {"filters": [8, 16], "tag": config}, "train_config": {"epochs": 2}} if config else {}
    params = params or {"lr": 1e-3}
    return create_trial(value=value, params=params, distributions={k: FloatDistribution(1e-4, 1e-1, log=True) for k in params}, user_attrs=attrs | {"objective": value})


def test_ensemble_candidates_count_one_configuration_once_keeping_the_better(monkeypatch):
    import optuna

    from agesearch.search.export import ensemble

    study = optuna.create_study(study_name="dup")
    for value, config in [(1.0, "a"), (0.5, "a"), (2.0, "b"), (0.7, "a"), (0.9, None)]:
        study.add_trial(_trial(len(study.trials), value, config))
    assert [t.number for t in ensemble.distinct_ranked(study)] == [1, 4, 2]  # trial 1 (0.5) stands for "a"; 3 and 0 are its twins
    # Every trial has a stored model but trial 1: its twin 3 stands for "a" then.
    monkeypatch.setattr(ensemble, "stored_model", lambda t, store: None if t.number == 1 else f"ref-{t.number}")
    pool = ensemble.candidate_pool(study, "sqlite://", 2, refit=False)
    assert [(m.trial.number, m.ref) for m in pool] == [(3, "ref-3"), (4, "ref-4"), (2, "ref-2")]
    # To retrain, a candidate needs its configs as well (trial 4 has only params).
    assert [m.trial.number for m in ensemble.candidate_pool(study, "sqlite://", 2, refit=True)] == [3, 2]


def test_ensemble_candidate_pool_is_capped_at_the_best_max_2k_10(monkeypatch):
    import optuna

    from agesearch.search.export import ensemble

    study = optuna.create_study(study_name="many")
    for i in range(25):
        study.add_trial(_trial(i, float(25 - i), f"c{i}"))
    monkeypatch.setattr(ensemble, "stored_model", lambda t, store: f"ref-{t.number}")
    assert [m.trial.number for m in ensemble.candidate_pool(study, "sqlite://", 3, refit=False)] == list(range(24, 14, -1))
    assert len(ensemble.candidate_pool(study, "sqlite://", 8, refit=False)) == 16


@pytest.mark.parametrize(
    "refit, expected",
    [
        # stored models: a candidate picked twice is one member of weight 2
        (False, [("ref-7", 2, 0, (1, 3)), ("ref-5", 1, 0, (2,))]),
        # retrained: each pick is its own model, the second of trial 7's with the next seed
        (True, [("ref-7", 1, 0, (1,)), ("ref-5", 1, 0, (2,)), ("ref-7", 1, 1, (3,))]),
    ],
)
def test_ensemble_members_from_steps_weigh_or_reseed_a_candidate_picked_twice(refit, expected):
    from agesearch.search.export.ensemble import Member, members_from_steps
    from agesearch.search.export.selection import Step

    candidates = [Member(_trial(0, 0.5, "a"), "ref-7"), Member(_trial(1, 0.6, "b"), "ref-5"), Member(_trial(2, 0.9, "c"), "ref-9")]
    steps = [Step(0, None, 0.5), Step(1, 0.5, 0.4), Step(0, 0.4, 0.35)]
    members = members_from_steps(candidates, steps, refit=refit)
    assert [(m.ref, m.weight, m.seed_offset, tuple(n for n, _ in m.picks)) for m in members] == expected
    assert members[0].why.startswith("step 1: first: best single candidate (val objective 0.5000)")
    assert members[1].why == "step 2: val objective of the average 0.5000 -> 0.4000"


def test_ensemble_config_key_falls_back_to_params_without_configs():
    from agesearch.search.export.ensemble import config_key

    a, b, c = _trial(0, 1.0, None, {"lr": 1e-3}), _trial(1, 1.0, None, {"lr": 1e-2}), _trial(2, 2.0, None, {"lr": 1e-3})
    assert config_key(a) != config_key(b) and config_key(a) == config_key(c)


def test_ensemble_config_key_ignores_the_train_seed():
    from optuna.trial import create_trial

    from agesearch.search.export.ensemble import config_key

    def seeded(seed, epochs=2):
        return create_trial(value=1.0, user_attrs={"model_config": {"filters": [8]}, "train_config": {"epochs": epochs, "seed": seed}})

    assert config_key(seeded(0)) == config_key(seeded(1)) != config_key(seeded(0, epochs=3))


def test_export_tta_flip_without_ensemble_saves_one_model_beside_its_plain_self(exported, study_args, capsys):
    out = exported / "tta" / "m.keras"
    code, stdout, err = run_cli(["export", *study_args, "--trial", "1", "--epochs", "1", "--tta", "flip", "--out", str(out)], capsys)
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    cmp = card["side_by_side"]
    assert card["tta"] == "flip" and card["study"]["trial"] == 1 and card["training"]["epochs_run"] == 1
    assert cmp["best_single"]["trial"] == 1 and cmp["ensemble"]["trials"] == [1] and cmp["ensemble"]["tta"] == "flip"
    assert cmp["ensemble"]["age_mae"] == card["test_metrics"]["age_mae"]
    assert "A = best single model: trial 1, retrained" in stdout and "B = exported model:    trial 1, retrained, + flip TTA" in stdout


# --- seeds, export --image-size -------------------------------------------------------------------


def test_export_retrains_with_the_trials_recorded_seed_and_records_searched_and_trained_sizes(exported, finished):
    import optuna

    from agesearch.search.loop.sampling import trial_seed
    from agesearch.search.store.study import best_trial

    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    best = best_trial(study)
    # The search seeds trial N with trial_seed(sampler seed, N); the sampler seed defaults to --seed (0).
    assert best.user_attrs["seed"] == best.user_attrs["train_config"]["seed"] == trial_seed(0, best.number)
    card = json.loads((exported / "model.json").read_text())
    t = card["training"]
    assert t["seed"] == card["train_config"]["seed"] == best.user_attrs["seed"]
    assert t["searched"] == {"image_size": 32, "epochs": 2} and t["trained"] == {"image_size": 32, "epochs": 2}
    assert card["input"]["image_size"] == 32


def test_export_of_a_trial_made_before_seeds_uses_seed_0(learned):
    out, _ = learned
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["seed"] == card["train_config"]["seed"] == 0


def test_export_single_trial_at_a_larger_image_size_with_a_given_seed(exported, study_args, capsys):
    from agesearch.models.inference import load_model

    out = exported / "big" / "m.keras"
    code, stdout, err = run_cli(["export", *study_args, "--trial", "1", "--epochs", "1", "--image-size", "48", "--seed", "5", "--out", str(out)], capsys)
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    t = card["training"]
    assert t["searched"] == {"image_size": 32, "epochs": 2} and t["trained"] == {"image_size": 48, "epochs": 1}
    assert t["seed"] == card["train_config"]["seed"] == 5
    assert card["input"]["image_size"] == card["model_config"]["image_size"] == 48 and card["data"]["image_size"] == 32
    assert load_model(out).input_shape[1:] == (48, 48, 3)
    assert "retraining at 48 px (searched at 32 px)" in stdout


def test_export_ensemble_refit_at_a_larger_image_size_writes_a_bigger_model_that_evaluate_scores(finished, study_args, synthetic_dir, tmp_path, capsys):
    from agesearch.models.inference import load_model
    from agesearch.search.export.trial import recorded_seed

    _, done = _complete_by_value(finished)
    by_number = {t.number: t for t in done}
    out = tmp_path / "ens48.keras"
    code, _, err = run_cli(["export", *study_args, "--image-size", "48", "--ensemble", "2", "--refit-on-train-val", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["input"]["image_size"] == 48 and card["data"]["image_size"] == 32
    assert card["members"]
    for m in card["members"]:
        t = m["training"]
        assert t["searched"] == {"image_size": 32, "epochs": 2} and t["trained"] == {"image_size": 48, "epochs": 1}
        assert t["model_config"]["image_size"] == 48
        # Each member retrains with its own trial's seed (the n-th pick of one trial: + n).
        assert t["seed"] == (recorded_seed(by_number[m["trial"]]) + m.get("seed_offset", 0)) % 2**32
    assert load_model(out).input_shape[1:] == (48, 48, 3)
    # evaluate takes the model's input size, not the study's.
    code, stdout, err = run_cli(["evaluate", "--model", str(out), "--data", str(synthetic_dir), "--limit", "20", "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["image_size"] == 48 and r["n"] == 20 and r["age_mae"] >= 0 and 0 <= r["gender_accuracy"] <= 1


@pytest.mark.parametrize(
    "model, size, why",
    [
        (dict(image_size=32, shared_blocks=1, age_blocks=4, gender_blocks=4, filters=(8, 16, 32, 64, 128)), 16,
         "Invalid value for `shared_blocks + max(age_blocks, gender_blocks)`: each block halves the image, so at most 4 blocks fit image_size=16. "
         "Received: shared_blocks + max(age_blocks, gender_blocks)=5"),
        (dict(image_size=96, shared_blocks=0, age_blocks=0, gender_blocks=0, filters=(), backbone="inceptionv3"), 48,
         "Invalid value for `image_size`: must be >= 75 for backbone='inceptionv3'. Received: image_size=48"),
    ],
)
def test_export_image_size_a_trial_does_not_fit_is_one_line_exit_2_nothing_written(tmp_path, capsys, model, size, why):
    import optuna
    from optuna.trial import create_trial

    from agesearch.models import ModelConfig, TrainConfig
    from agesearch.search.errors import UsageError
    from agesearch.search.export.ensemble import Member, export_ensemble

    url = f"sqlite:///{tmp_path / 'deep.db'}"
    study = optuna.create_study(study_name="deep", storage=url)
    study.set_user_attr("agesearch", {"data": "synthetic", "image_size": model["image_size"]})  # never loaded: the check comes first
    cfg = ModelConfig(**model)
    study.add_trial(create_trial(value=1.0, user_attrs={"model_config": cfg.to_dict(), "train_config": TrainConfig(epochs=1).to_dict(), "objective": 1.0}))
    message = f"--image-size {size}: trial 0 (searched at {cfg.image_size} px) does not fit: {why}"
    out = tmp_path / "m.keras"
    code, _, err = run_cli(["export", "--study", "deep", "--storage", url, "--image-size", str(size), "--out", str(out)], capsys)
    assert code == 2 and err == f"agesearch: error: {message}\n"
    # An ensemble member the same, before any data loads or any member trains.
    with pytest.raises(UsageError) as e:
        export_ensemble(study, url, [Member(study.trials[0])], out, refit_on_train_val=True, image_size=size)
    assert str(e.value) == message
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("m")]  # no model, card or temporary file


def test_export_ensemble_image_size_without_refit_is_one_line_exit_2(study_args, capsys):
    code, _, err = run_cli(["export", *study_args, "--ensemble", "2", "--image-size", "48"], capsys)
    assert code == 2
    assert err == "agesearch: error: --image-size 48 retrains: with --ensemble it needs --refit-on-train-val (stored models cannot change size)\n"
