"""`agesearch export --ensemble K`: one model averaging the top K trials of a study.

The members are the K best COMPLETE trials by the study's ranking (`store.study.ranked`),
distinct by configuration: two trials with the same `model_config` and `train_config` (a retry,
a preset sampled again) count once, the better one kept, since averaging a model with its twin
adds little. By default each member is the model its trial stored in the study's artifact store
(store/artifacts.py), so nothing is retrained; `--refit-on-train-val` retrains each member on
train+val through export's one training path (`export.retrain`). `models/ensemble.py` joins the
members into one inference model (with `--tta flip`, over each image and its mirror too), so the
`.keras` file loads, evaluates and predicts like a single model.

The card lists the members with their val objective and their own test metrics, and sets the
best single model (the best trial's, no TTA) beside the ensemble on the test split.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agesearch.search.errors import UsageError
from agesearch.search.files import atomic_path, write_json


@dataclass(frozen=True)
class Member:
    """One trial of an ensemble, and its stored model (None when it is to be retrained)."""

    trial: object  # optuna FrozenTrial
    ref: object | None = None  # store.artifacts.ModelRef


def config_key(trial) -> str:
    """What makes two trials the same configuration: both configs when the trial recorded them,
    else its sampled parameters."""
    ua = trial.user_attrs
    if "model_config" in ua and "train_config" in ua:
        what = {"model_config": ua["model_config"], "train_config": ua["train_config"]}
    else:
        what = {"params": trial.params}
    return json.dumps(what, sort_keys=True, default=str)


def distinct_ranked(study, trials: list | None = None) -> list:
    """`trials` (default: the study's COMPLETE ones), best first, one per configuration (the better)."""
    from agesearch.search.store.study import ranked

    keep = None if trials is None else {t.number for t in trials}
    seen: set[str] = set()
    out = []
    for t in ranked(study):
        if keep is not None and t.number not in keep:
            continue
        key = config_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def stored_model(trial, store):
    """The trial's latest model still in `store` (KeepBestModels may have removed it), or None."""
    from agesearch.search.store.artifacts import ModelRef, exists, model_artifacts

    if store is None:
        return None
    for meta in reversed(model_artifacts(trial)):
        if exists(store, meta["artifact_id"]):
            return ModelRef(trial.number, meta["artifact_id"], meta["filename"])
    return None


def pick_members(study, storage_url: str, k: int, *, refit: bool, spec: str | None = None) -> list[Member]:
    """The top `k` distinct COMPLETE trials: with a stored model, or (`refit`) with configs to retrain.

    Reads the study and the artifact store only (no Keras), so a bad `k` fails at once.

    Raises:
        UsageError: fewer than `k` such trials.
    """
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if refit:
        usable = {t.number: None for t in complete if "model_config" in t.user_attrs and "train_config" in t.user_attrs}
        what = "to retrain (with model_config and train_config)"
    else:
        from agesearch.search.store.artifacts import study_store

        store = study_store(study, storage_url, spec)
        usable = {t.number: ref for t in complete if (ref := stored_model(t, store)) is not None}
        what = "with a stored model"
    trials = distinct_ranked(study, [t for t in complete if t.number in usable])
    if k > len(trials):
        listed = ", ".join(str(t.number) for t in trials) or "none"
        raise UsageError(f"--ensemble {k}: study {study.study_name!r} has only {len(trials)} distinct COMPLETE trial(s) {what} (trials: {listed})")
    return [Member(t, usable[t.number]) for t in trials[:k]]


def member_label(trial) -> str:
    preset = trial.user_attrs.get("preset")
    return f"trial {trial.number}" + (f" (preset {preset})" if preset else "")


def export_ensemble(
    study,
    storage_url: str,
    members: list[Member],
    out: Path,
    *,
    tta_flip: bool = False,
    refit_on_train_val: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    spec: str | None = None,
) -> dict:
    """Join `members` into one inference model, save it with its card, return the card.

    Args:
        study: the Optuna study (its "agesearch" user attr says which data and split).
        storage_url: its storage (the artifact store's default place).
        members: from `pick_members`, best first.
        out: the .keras file to write; the card goes to the same path with `.json`.
        tta_flip: average each member over the image and its horizontal mirror too.
        refit_on_train_val: retrain each member on train+val (`export.retrain`) instead of
            loading its stored model.
        epochs: with `refit_on_train_val`, exactly this many epochs (default: each trial's
            best_epoch + 1).
        seed: Keras' global seed before each member's retraining (member i is then the model
            `export --trial N --refit-on-train-val --seed S` would give).
        cache_dir: decoded-image cache; stored models are downloaded under its `models/`.
        spec: the artifact store `pick_members` was given (default: the study's).
    """
    from agesearch.models.ensemble import ensemble_model
    from agesearch.models.inference import load_model
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.report import export as ex
    from agesearch.search.store.study import META_KEY

    meta = study.user_attrs[META_KEY]
    ds, split = study_dataset(meta, cache_dir=cache_dir)
    _quiet_retracing()
    training: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="agesearch-ensemble-") as tmp:
        if refit_on_train_val:
            paths = _refit_members(study, members, ds, split, Path(tmp), training, epochs=epochs, seed=seed)
        else:
            paths = _stored_members(study, storage_url, members, cache_dir=cache_dir, spec=spec)
        models = [load_model(p) for p in paths]
    member_metrics = [ex.score_on_test(m, ds, split) for m in models]
    model = ensemble_model(models, tta_flip=tta_flip)
    with atomic_path(out) as tmp_out:  # as export_trial: no half model, none that reloads wrong
        model.save(tmp_out)
        metrics, reload_diff = ex._test_and_reload(model, tmp_out, ds, split)
        if reload_diff > ex.RELOAD_TOLERANCE:
            raise UsageError(f"the saved ensemble does not reproduce the built one (largest difference {reload_diff:.3g}); nothing was exported")
    card = _card(study, members, out, meta, split, member_metrics, metrics, reload_diff, tta_flip, refit_on_train_val, training)
    write_json(out.with_suffix(".json"), card, indent=2, default=ex.json_default)
    return card


def _refit_members(study, members, ds, split, tmp: Path, training: dict, *, epochs: int | None, seed: int) -> list[Path]:
    """Retrain each member on train+val into `tmp`; its training record goes to `training`."""
    from agesearch.search.report.export import retrain

    # Each member is trained, saved and dropped before the next one (fit clears Keras' state);
    # all come back from files, as stored members do.
    paths = []
    for m in members:
        trained = retrain(study, m.trial, ds, split, epochs=epochs, refit_on_train_val=True, seed=seed)
        paths.append(tmp / f"trial-{m.trial.number}.keras")
        trained.model.save(paths[-1])
        training[m.trial.number] = trained.training() | {"model_config": trained.model_cfg.to_dict(), "train_config": trained.train_cfg.to_dict()}
    return paths


def _stored_members(study, storage_url: str, members, *, cache_dir: Path | None, spec: str | None) -> list[Path]:
    """The members' stored models as local files (downloaded once per artifact id)."""
    from agesearch.search.data.images import default_cache_dir
    from agesearch.search.store.artifacts import download_model, study_store

    store = study_store(study, storage_url, spec)  # where pick_members found the refs
    dest = (Path(cache_dir) if cache_dir else default_cache_dir()) / "models"
    print(f"export: study {study.study_name}: averaging the stored models of {', '.join(member_label(m.trial) for m in members)}", flush=True)
    return [download_model(store, m.ref, dest).path for m in members]


def _quiet_retracing() -> None:
    # Each member predicts through its own tf.function: TensorFlow's "N out of the last N calls
    # triggered tf.function retracing" warning would follow the fifth (fit() silences it too).
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")


def _card(study, members, out, meta, split, member_metrics, metrics, reload_diff, tta_flip, refit, training) -> dict:
    """The ensemble's model card: its members, each scored alone, and the ensemble beside the best one."""
    from agesearch.search.report import export as ex

    numbers = [m.trial.number for m in members]
    rows = []
    for m, mm in zip(members, member_metrics):
        ua = m.trial.user_attrs
        row = ex.trial_summary(m.trial) | {"model_config": ua.get("model_config"), "train_config": ua.get("train_config")}
        if refit:
            row["training"] = training[m.trial.number]
        else:
            row["artifact_id"], row["artifact_file"] = m.ref.artifact_id, m.ref.filename
        rows.append(row | {"test_metrics": mm})
    tta = "flip" if tta_flip else None
    label = f"ensemble of {len(members)} ({', '.join(f'trial {n}' for n in numbers)})" + (" + flip TTA" if tta_flip else "")
    source = "retrained on train+val" if refit else "stored model"
    header = ex.card_header(study, out, meta, split)
    return {
        **{k: header[k] for k in ("format", "created", "model_file", "outputs", "input")},
        "study": {"name": study.study_name, "trials": numbers, "best_trial": numbers[0]},
        "ensemble": {
            "size": len(members),
            "tta": tta,
            "members_from": "retrained on train+val (--refit-on-train-val)" if refit else "stored models (the search's weights)",
            "distinct_by": "model_config and train_config (else the sampled params); of two trials with one configuration, the better",
            "combine": "mean of the members' age (years) and P(female)" + (" over each image and its horizontal mirror" if tta_flip else ""),
        },
        "members": rows,
        "data": header["data"],
        "test_metrics": metrics,
        "side_by_side": ex.side_by_side(
            single=member_metrics[0], single_label=f"{member_label(members[0].trial)}, {source}", single_trial=numbers[0],
            ensemble=metrics, ensemble_label=label, ensemble_trials=numbers, tta=tta,
        ),
        "reload_check_max_abs_diff": reload_diff,
        "versions": ex._versions(),
    }


def format_members(card: dict) -> str:
    """One line per member: its trial, val objective and its own test numbers."""
    lines = [f"members ({card['ensemble']['members_from']}):"]
    for r in card["members"]:
        m = r["test_metrics"]
        preset = f" (preset {r['preset']})" if r.get("preset") else ""
        objective = f"{r['objective']:.4f}" if isinstance(r.get("objective"), (int, float)) else "n/a"
        scores = f"test age MAE {m['age_mae']:.2f}, gender accuracy {m['gender_accuracy']:.3f}" if m["n"] else "no test split"
        lines.append(f"  trial {r['trial']}{preset}: val objective {objective}; {scores}")
    return "\n".join(lines)
