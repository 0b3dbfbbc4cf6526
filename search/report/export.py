"""From a study's best (or chosen) trial to a saved, evaluated model.

The trial's configs are rebuilt from its user attrs, the model is retrained on the study's own
data and split (reloaded from the study's metadata), wrapped as an inference model (age in
years, P(female); models/inference.py) and saved as `.keras`, with a JSON model card next to
it. The test split, which the search never saw, gives the reported metrics.

Retraining rather than copying `best.keras`: the search keeps only the best model *so far* of
the combined objective, none for a chosen trial, and none when trials ran on other machines;
retraining from the configs works for any finished trial and can fold val into training
(`--refit-on-train-val`, for the epoch count early stopping found).
"""

from __future__ import annotations

import dataclasses
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agesearch.search.errors import UsageError
from agesearch.search.files import atomic_path, write_json
from agesearch.search.training.metrics import age_gender_metrics, predict_age_gender

MODEL_FILE = "model.keras"


def _versions() -> dict:
    """Versions that decide whether the file loads and computes the same elsewhere."""
    from importlib import metadata

    import keras

    backend = keras.backend.backend()
    out = {"python": platform.python_version(), "keras": keras.__version__, "backend": backend, "numpy": np.__version__}
    for dist in ("agesearch", "optuna", {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)):
        if dist is None:
            continue
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "tensorflow":  # tensorflow-cpu installs the module under another name
                try:
                    out[dist] = metadata.version("tensorflow-cpu")
                except metadata.PackageNotFoundError:
                    pass
    return out


def open_study(study_name: str, storage_url: str | None):
    """Load an existing study read-only, and its storage URL; the study must carry agesearch's
    metadata, or its data cannot be found again.

    Raises:
        StorageError: no such database or study.
        UsageError: a study not made by `agesearch run`.
    """
    from agesearch.search.store import study as st

    url = storage_url or st.default_storage(study_name)
    study = st.load_existing(study_name, url)
    if not study.user_attrs.get(st.META_KEY):
        raise UsageError(f"study {study_name!r} has no agesearch metadata (was it made by `agesearch run`?); its data cannot be found again")
    return study, url


def check_out_path(out: Path) -> Path:
    """The model file to write must be a .keras file (Keras 3 picks the format from the suffix)."""
    if Path(out).suffix != ".keras":
        raise UsageError(f"--out must end in .keras (Keras 3's format), got {out}")
    return Path(out)


def pick_trial(study, number: int | None):
    """The chosen trial, or the best: single-objective `best_trial`; multi-objective, the
    Pareto-front trial with the lowest combined objective (user attr `objective`)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "model_config" in t.user_attrs]
    if number is not None:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise UsageError(f"study {study.study_name!r} has no trial {number} (trials 0-{len(study.trials) - 1})")
        t = found[0]
        if t not in complete:
            raise UsageError(f"trial {number} of study {study.study_name!r} is {t.state.name}, not COMPLETE; only finished trials can be exported")
        return t
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to export")
    from agesearch.search.store.study import best_trial  # the one definition of "the best trial"

    return best_trial(study)


def export_trial(
    study,
    trial,
    out: Path,
    *,
    epochs: int | None = None,
    refit_on_train_val: bool = False,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> dict:
    """Retrain `trial`'s configs on the study's data, save model + card, return the card.

    Args:
        study: the Optuna study (its "agesearch" user attr says which data and split).
        trial: a COMPLETE FrozenTrial with `model_config` and `train_config` user attrs.
        out: the .keras file to write; the card goes to the same path with `.json`.
        epochs: most epochs (default: the trial's); with `refit_on_train_val`, exactly this many
            (default: the trial's best_epoch + 1).
        refit_on_train_val: train on train+val with no early stopping.
        seed: Keras' global seed (weights, shuffling, augmentation).
        cache_dir: decoded-image cache.
    """
    import keras

    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.models.inference import inference_model
    from agesearch.search.data.images import Split
    from agesearch.search.store.study import META_KEY
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.training.fit import TrainingData, fit

    meta = study.user_attrs[META_KEY]
    ds, split = study_dataset(meta, cache_dir=cache_dir)
    model_cfg = ModelConfig.from_dict(trial.user_attrs["model_config"])
    train_cfg = TrainConfig.from_dict(trial.user_attrs["train_config"])
    if refit_on_train_val:
        n_epochs = epochs or int(trial.user_attrs.get("best_epoch", train_cfg.epochs - 1)) + 1
        # Val joins train; val is still passed because fit() reports on it, but early stopping
        # is off: the model of the last epoch is the one exported.
        train_cfg = dataclasses.replace(train_cfg, epochs=n_epochs, patience=n_epochs)
        fit_split = Split(train=np.sort(np.concatenate([split.train, split.val])), val=split.val, test=split.test)
    else:
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs or train_cfg.epochs)
        fit_split = split
    data = TrainingData.from_split(ds, fit_split)
    what = f"train+val ({len(fit_split.train)} images), {train_cfg.epochs} epochs" if refit_on_train_val else (
        f"train ({len(split.train)} images), val ({len(split.val)}) for early stopping, at most {train_cfg.epochs} epochs"
    )
    print(f"export: trial {trial.number} of study {study.study_name}: retraining on {what}", flush=True)
    keras.utils.set_random_seed(seed)
    result = fit(model_cfg, train_cfg, data, None, keep_model=True, early_stopping=not refit_on_train_val)
    model = inference_model(result.model, model_cfg, data.baselines.age_scale)
    with atomic_path(out) as tmp:  # a reader never finds half a model, nor one that reloads wrong
        model.save(tmp)
        test_metrics, reload_diff = _test_and_reload(model, tmp, ds, split)
        if reload_diff > RELOAD_TOLERANCE:
            raise UsageError(f"the saved model does not reproduce the trained one (largest difference {reload_diff:.3g}); nothing was exported")
    card = _card(study, trial, out, meta, split, model_cfg, train_cfg, data, result, refit_on_train_val, seed, test_metrics, reload_diff)
    write_json(out.with_suffix(".json"), card, indent=2, default=_json_default)
    return card


# Largest difference (years or probability) allowed between the trained model and its file.
RELOAD_TOLERANCE = 1e-3


def _test_and_reload(model, out: Path, ds, split) -> tuple[dict, float]:
    """Test-split metrics, and the largest difference between the model and the file reloaded."""
    from agesearch.models.inference import load_model

    test = split.test
    age, p_female = predict_age_gender(model, ds.images[test])
    test_metrics = age_gender_metrics(ds.ages[test], ds.genders[test], age, p_female)
    probe = ds.images[test[:16]] if len(test) else ds.images[:16]
    reloaded = load_model(out)
    a1, g1 = predict_age_gender(model, probe)
    a2, g2 = predict_age_gender(reloaded, probe)
    return test_metrics, float(max(np.max(np.abs(a1 - a2), initial=0.0), np.max(np.abs(g1 - g2), initial=0.0)))


def _card(study, trial, out, meta, split, model_cfg, train_cfg, data, result, refit_on_train_val, seed, test_metrics, reload_diff) -> dict:
    """The JSON model card: what was trained on what, how, and how it scored."""
    # EarlyStopping restores the epoch with the lowest val objective; a refit keeps the last.
    restored = result.epochs_run - 1 if refit_on_train_val else result.best_epoch
    return {
        "format": "agesearch-model-card/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_file": out.name,
        "outputs": {"age": "years (float)", "gender": "P(female)"},
        "input": {"image_size": int(meta["image_size"]), "dtype": "RGB, 0-255 (uint8 range); the model rescales"},
        "study": {"name": study.study_name, "trial": trial.number, "values": trial.values, "objective": trial.user_attrs.get("objective"),
                  "search_val_age_mae": trial.user_attrs.get("val_age_mae"), "search_val_gender_accuracy": trial.user_attrs.get("val_gender_accuracy"),
                  "search_best_epoch": trial.user_attrs.get("best_epoch")},
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "data": {k: meta.get(k) for k in ("data", "fingerprint", "images", "image_size", "limit", "seed", "split", "split_method", "synthetic_count")}
        | {"split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}},
        "training": {
            "trained_on": "train+val" if refit_on_train_val else "train",
            "early_stopping": not refit_on_train_val,
            "epochs_run": result.epochs_run,
            "weights_from_epoch": restored,
            "seconds": round(result.seconds, 2),
            "seed": seed,
            "age_scale": data.baselines.age_scale,
            "params": result.params,
            "val_age_mae": None if refit_on_train_val else result.val_age_mae,
            "val_gender_accuracy": None if refit_on_train_val else result.val_gender_accuracy,
        },
        "test_metrics": test_metrics,
        "reload_check_max_abs_diff": reload_diff,
        "versions": _versions(),
    }


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
