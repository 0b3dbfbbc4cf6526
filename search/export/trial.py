"""From a study's best (or chosen) trial to a saved, evaluated model.

The trial's configs are rebuilt from its user attrs, the model is retrained on the study's own
data and split (reloaded from the study's metadata), wrapped as an inference model (age in
years, P(female); models/inference.py) and saved as `.keras`, with a JSON model card next to
it. The test split, which the search never saw, gives the reported metrics.

Retraining rather than copying the trial's stored model: the artifact store holds each COMPLETE
trial's model (search/store/artifacts.py), but none of a pruned trial and, with `--keep-models K`,
only the best K; retraining from the configs works for any finished trial and can fold val into
training (`--refit-on-train-val`, for the epoch count early stopping found). It uses the seed
the search trained the trial with (its user attr `seed`), so a plain export of a trial trains
what the search trained, unless `--seed` says otherwise.

Search cheap, train big: `--image-size PX` (with `--epochs E`) retrains at another size than the
searched one, on the study's images and split decoded at PX; the configuration is rebuilt at PX
through ModelConfig's own validation (one that does not fit fails before anything trains), and
the card's training entry keeps both, `searched` and `trained` (image size, epochs).

`--tta flip` saves the retrained model wrapped with horizontal-flip test-time augmentation
(models/ensemble.py) and puts the plain and the flipped model side by side in the card;
`--ensemble K` (search/export/ensemble.py) averages the stored models of the top K trials.

`--format onnx|litert|saved_model` writes the model in that format too, beside the `.keras`
file (search/export/formats.py), for runtimes without agesearch or Keras. Every export writes
two cards beside the model: the JSON one for machines (`model.json`) and a Markdown one for
people (`model.md`, search/export/model_card.py: intended use, the data's terms, test metrics
per age decade, gender and race with counts, sizes, members).
"""

from __future__ import annotations

import dataclasses
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from agesearch.search.errors import UsageError
from agesearch.search.files import atomic_path, write_json
from agesearch.search.training.metrics import age_gender_metrics, group_metrics, predict_age_gender

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
    """The chosen trial, or the best: `store.study.best_trial`, the one rule for the best trial
    (multi-objective: the Pareto-front trial with the lowest combined objective).

    Raises:
        UsageError: no such trial, not COMPLETE, or without the `model_config` to export.
    """
    from optuna.trial import TrialState

    from agesearch.search.store.study import best_trial

    if number is None:
        t = best_trial(study)
        if t is None:
            raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to export")
    else:
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise UsageError(f"study {study.study_name!r} has no trial {number} (trials 0-{len(study.trials) - 1})")
        t = found[0]
        if t.state != TrialState.COMPLETE:
            raise UsageError(f"trial {number} of study {study.study_name!r} is {t.state.name}, not COMPLETE; only finished trials can be exported")
    if "model_config" not in t.user_attrs:
        raise UsageError(f"trial {t.number} of study {study.study_name!r} has no model_config (was it made by `agesearch run`?); it cannot be exported")
    return t


@dataclasses.dataclass
class Retrained:
    """One trial's configs trained again (`retrain`): the inference model and how it was made."""

    model: object  # keras.Model: the inference model (age in years, P(female))
    model_cfg: object  # ModelConfig
    train_cfg: object  # TrainConfig, with the epochs and patience actually used
    data: object  # TrainingData it was fitted on
    result: object  # FitResult
    refit_on_train_val: bool
    seed: int
    searched: dict = dataclasses.field(default_factory=dict)  # {"image_size", "epochs"} the trial was searched with

    def training(self) -> dict:
        """The card's "training" entry."""
        # EarlyStopping restores the epoch with the lowest val objective; a refit keeps the last.
        r, refit = self.result, self.refit_on_train_val
        return {
            "searched": self.searched,
            "trained": {"image_size": self.model_cfg.image_size, "epochs": self.train_cfg.epochs},
            "trained_on": "train+val" if refit else "train",
            "early_stopping": not refit,
            "epochs_run": r.epochs_run,
            "weights_from_epoch": r.epochs_run - 1 if refit else r.best_epoch,
            "seconds": round(r.seconds, 2),
            "seed": self.seed,
            "age_scale": self.data.baselines.age_scale,
            "params": r.params,
            "val_age_mae": None if refit else r.val_age_mae,
            "val_gender_accuracy": None if refit else r.val_gender_accuracy,
        }


def recorded_seed(trial) -> int:
    """The seed the search trained `trial` with (user attr `seed`), 0 for trials made before
    trials were seeded."""
    seed = trial.user_attrs.get("seed", (trial.user_attrs.get("train_config") or {}).get("seed"))
    return 0 if seed is None else int(seed)


def resized_config(trial, image_size: int | None):
    """`trial`'s ModelConfig, rebuilt at `image_size` (None: as searched).

    Raises:
        UsageError: the configuration does not fit that size (too deep for it, a backbone's
            smallest input), in one line naming the trial.
    """
    from agesearch.models.config import ModelConfig

    cfg = ModelConfig.from_dict(trial.user_attrs["model_config"])
    if image_size is None or image_size == cfg.image_size:
        return cfg
    try:
        return dataclasses.replace(cfg, image_size=image_size)
    except ValueError as e:
        raise UsageError(f"--image-size {image_size}: trial {trial.number} (searched at {cfg.image_size} px) does not fit: {e}") from None


def study_data_at(study, trials, image_size: int | None, *, cache_dir: Path | None = None):
    """(the study's metadata, its images at `image_size` (None: the searched size), its split),
    once every one of `trials` fits that size (`resized_config`): nothing loads otherwise."""
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.store.study import META_KEY

    for t in trials:
        resized_config(t, image_size)
    meta = study.user_attrs[META_KEY]
    return (meta, *study_dataset(meta, cache_dir=cache_dir, image_size=image_size))


def retrain(study, trial, ds, split, *, epochs: int | None = None, refit_on_train_val: bool = False, seed: int | None = None,
            image_size: int | None = None) -> Retrained:
    """Train `trial`'s configs again on the study's data, as `export_trial` describes.

    The one training path of `export`: a single trial, or each member of `--ensemble K
    --refit-on-train-val`. `ds` holds the images at `image_size` (None: the searched size);
    `seed` None is the trial's own (`recorded_seed`).
    """
    from agesearch.models.config import TrainConfig
    from agesearch.models.inference import inference_model
    from agesearch.search.data.images import Split
    from agesearch.search.training.fit import TrainingData, fit

    model_cfg = resized_config(trial, image_size)
    if ds.images.shape[1] != model_cfg.image_size:
        raise UsageError(f"trial {trial.number}: the images are {ds.images.shape[1]} px, the model takes {model_cfg.image_size} px")
    train_cfg = TrainConfig.from_dict(trial.user_attrs["train_config"])
    searched = {"image_size": int(trial.user_attrs["model_config"]["image_size"]), "epochs": train_cfg.epochs}
    seed = recorded_seed(trial) if seed is None else seed
    train_cfg = dataclasses.replace(train_cfg, seed=seed)  # fit() seeds Keras with it after clearing its state
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
    size = "" if model_cfg.image_size == searched["image_size"] else f" at {model_cfg.image_size} px (searched at {searched['image_size']} px)"
    print(f"export: trial {trial.number} of study {study.study_name}: retraining{size} on {what}, seed {seed}", flush=True)
    result = fit(model_cfg, train_cfg, data, None, keep_model=True, early_stopping=not refit_on_train_val)
    model = inference_model(result.model, model_cfg, data.baselines.age_scale)
    return Retrained(model, model_cfg, train_cfg, data, result, refit_on_train_val, seed, searched)


def export_trial(
    study,
    trial,
    out: Path,
    *,
    epochs: int | None = None,
    refit_on_train_val: bool = False,
    seed: int | None = None,
    cache_dir: Path | None = None,
    tta_flip: bool = False,
    image_size: int | None = None,
    format: str = "keras",
) -> dict:
    """Retrain `trial`'s configs on the study's data, save model + cards, return the JSON card.

    Args:
        study: the Optuna study (its "agesearch" user attr says which data and split).
        trial: a COMPLETE FrozenTrial with `model_config` and `train_config` user attrs.
        out: the .keras file to write; the card goes to the same path with `.json`.
        epochs: most epochs (default: the trial's); with `refit_on_train_val`, exactly this many
            (default: the trial's best_epoch + 1).
        refit_on_train_val: train on train+val with no early stopping.
        seed: Keras' global seed (weights, shuffling, augmentation, dropout); None: the one the
            search trained the trial with (0 for trials made before trials were seeded).
        cache_dir: decoded-image cache.
        tta_flip: save the model averaged over each image and its mirror; the card's
            `side_by_side` compares it with the plain model on the test split.
        image_size: train (and test) at this many pixels instead of the searched size: the
            study's images and split, decoded at that size; the card's training entry records
            both sizes. UsageError if the configuration does not fit it.
        format: also write the model as onnx, litert or saved_model beside `out`
            (formats.py); "keras": the .keras file only. UsageError, before anything trains,
            if that format cannot be written here.
    """
    from agesearch.search.export.formats import check_format

    check_format(format)
    meta, ds, split = study_data_at(study, [trial], image_size, cache_dir=cache_dir)
    trained = retrain(study, trial, ds, split, epochs=epochs, refit_on_train_val=refit_on_train_val, seed=seed, image_size=image_size)
    model = trained.model
    if tta_flip:
        from agesearch.models.ensemble import ensemble_model

        plain_metrics = score_on_test(model, ds, split)
        model = ensemble_model([model], tta_flip=True)
    metrics, groups, reload_diff, exports = save_model(model, out, ds, split, format)
    card = _card(study, trial, out, meta, split, trained, metrics, reload_diff)
    if tta_flip:
        card["tta"] = "flip"
        card["side_by_side"] = side_by_side(
            single=plain_metrics, single_label=f"trial {trial.number}, retrained", single_trial=trial.number,
            ensemble=metrics, ensemble_label=f"trial {trial.number}, retrained, + flip TTA", ensemble_trials=[trial.number], tta="flip",
        )
    return write_cards(card, out, groups, exports)


def save_model(model, out: Path, ds, split, format: str = "keras") -> tuple[dict, dict, float, list[dict]]:
    """Save `model` as `out` (.keras) and, unless `format` is "keras", in that format beside it;
    score it on the test split.

    The .keras file and the other format appear together or not at all: a reader never finds
    half a model, one that reloads wrong, or an exported file that computes other answers.

    Returns:
        (test metrics, test metrics by group, the reload check's largest difference, the card's
        `exports` entries).

    Raises:
        UsageError: the reloaded .keras file or the exported one differs from `model`.
    """
    from agesearch.search.export.formats import export_format

    exports = []
    with atomic_path(out) as tmp:
        model.save(tmp)
        metrics, groups, reload_diff = _test_and_reload(model, tmp, ds, split)
        if reload_diff > RELOAD_TOLERANCE:
            raise UsageError(f"the saved .keras file does not reproduce the model (largest difference {reload_diff:.3g}); nothing was exported")
        if format != "keras":
            exports.append(export_format(model, out, format, probe_images(ds, split)))
    return metrics, groups, reload_diff, exports


def write_cards(card: dict, out: Path, groups: dict, exports: list[dict]) -> dict:
    """Add the per-group test metrics, the exported formats and the data's terms to `card`, write
    it as `out`.json and the Markdown card as `out`.md; return it."""
    from agesearch.search.export.model_card import data_terms, write_markdown

    card["test_metrics_by_group"] = groups | {"split": "test"}
    card["exports"] = exports
    card["data"]["terms"] = data_terms(card["data"])
    card["model_card"] = out.with_suffix(".md").name
    write_json(out.with_suffix(".json"), card, indent=2, default=json_default)
    write_markdown(card, out.with_suffix(".md"))
    return card


def score_on_test(model, ds, split) -> dict:
    """`age_gender_metrics` of an inference model on the study's test split."""
    test = split.test
    age, p_female = predict_age_gender(model, ds.images[test])
    return age_gender_metrics(ds.ages[test], ds.genders[test], age, p_female)


def side_by_side(*, single: dict, single_label: str, single_trial: int, ensemble: dict, ensemble_label: str, ensemble_trials: list[int], tta: str | None) -> dict:
    """The card's comparison, on the test split, of the best single model (the best trial's, no
    TTA) with the exported one (the ensemble, or the one model with TTA): age MAE, gender
    accuracy and age MAE per decade of true age, for both."""

    def column(m: dict, label: str) -> dict:
        return {"label": label, "age_mae": m["age_mae"], "gender_accuracy": m["gender_accuracy"], "per_decade_mae": m["per_decade_mae"]}

    return {
        "split": "test",
        "n": ensemble["n"],
        "per_decade_n": ensemble["per_decade_n"],
        "best_single": column(single, single_label) | {"trial": single_trial, "tta": None},
        "ensemble": column(ensemble, ensemble_label) | {"trials": list(ensemble_trials), "tta": tta},
    }


def format_side_by_side(cmp: dict, title: str) -> str:
    """Terminal lines of `side_by_side`: a row per number, column A the best single model, B the exported one."""
    a, b = cmp["best_single"], cmp["ensemble"]
    if not cmp["n"]:
        return f"{title}: no test split (its fraction is 0): nothing to compare"
    row = lambda name, x, y: f"  {name:<32}{x:>9}{y:>9}"  # noqa: E731
    lines = [
        f"{title}: {cmp['n']} images",
        f"  A = best single model: {a['label']}",
        f"  B = exported model:    {b['label']}",
        row("", "A", "B"),
        row("age MAE (years)", f"{a['age_mae']:.2f}", f"{b['age_mae']:.2f}"),
        row("gender accuracy", f"{a['gender_accuracy']:.3f}", f"{b['gender_accuracy']:.3f}"),
        "  age MAE per decade (true age):",
    ]
    for label, n in cmp["per_decade_n"].items():
        lines.append(row(f"  {label:>8} {n:>6} images", f"{a['per_decade_mae'][label]:.2f}", f"{b['per_decade_mae'][label]:.2f}"))
    return "\n".join(lines)


# Largest difference (years or probability) allowed between the trained model and its file.
RELOAD_TOLERANCE = 1e-3


def probe_images(ds, split) -> np.ndarray:
    """The few images a saved file is checked on: the first 16 of the test split (of the data if it has none)."""
    test = split.test
    return ds.images[test[:16]] if len(test) else ds.images[:16]


def _test_and_reload(model, out: Path, ds, split) -> tuple[dict, dict, float]:
    """Test-split metrics, overall and by group, and the largest difference between the model
    and the file reloaded."""
    from agesearch.models.inference import load_model

    test = split.test
    age, p_female = predict_age_gender(model, ds.images[test])
    metrics = age_gender_metrics(ds.ages[test], ds.genders[test], age, p_female)
    groups = group_metrics(ds.ages[test], ds.genders[test], ds.races[test], age, p_female)
    probe = probe_images(ds, split)
    reloaded = load_model(out)
    a1, g1 = predict_age_gender(model, probe)
    a2, g2 = predict_age_gender(reloaded, probe)
    return metrics, groups, float(max(np.max(np.abs(a1 - a2), initial=0.0), np.max(np.abs(g1 - g2), initial=0.0)))


def card_header(study, out: Path, meta: dict, split, *, image_size: int | None = None) -> dict:
    """The card's fields every export shares: format, files, input and output, data (the
    study's, searched at `meta["image_size"]`; the model's input is `image_size`, default that)."""
    return {
        "format": "agesearch-model-card/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_file": out.name,
        "outputs": {"age": "years (float)", "gender": "P(female)"},
        "input": {"image_size": int(image_size or meta["image_size"]), "dtype": "RGB, 0-255 (uint8 range); the model rescales"},
        "data": {k: meta.get(k) for k in ("data", "fingerprint", "images", "image_size", "limit", "seed", "split", "split_method", "synthetic_count")}
        | {"split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}},
    }


def trial_summary(trial) -> dict:
    """What the search recorded of a trial: its values and its val scores."""
    ua = trial.user_attrs
    return {"trial": trial.number, "preset": ua.get("preset"), "values": trial.values, "objective": ua.get("objective"),
            "search_val_age_mae": ua.get("val_age_mae"), "search_val_gender_accuracy": ua.get("val_gender_accuracy"), "search_best_epoch": ua.get("best_epoch")}


def _card(study, trial, out, meta, split, trained: Retrained, metrics, reload_diff) -> dict:
    """The JSON model card: what was trained on what, how, and how it scored."""
    header = card_header(study, out, meta, split, image_size=trained.model_cfg.image_size)
    return {
        **{k: header[k] for k in ("format", "created", "model_file", "outputs", "input")},
        "study": {"name": study.study_name, **trial_summary(trial)},
        "model_config": trained.model_cfg.to_dict(),
        "train_config": trained.train_cfg.to_dict(),
        "data": header["data"],
        "training": trained.training(),
        "test_metrics": metrics,
        "reload_check_max_abs_diff": reload_diff,
        "versions": _versions(),
    }


def json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
