"""Export from a study, as `agesearch export` and `agesearch.export(...)` both do it.

`export_study` holds the rules of an export request, in the order the CLI needs them (every
check that needs no framework before Keras loads), picks the trial or the ensemble's members,
and calls `export.export_trial` or `ensemble.export_ensemble`. The CLI prints what it returns;
the Python API returns the card.
"""

from __future__ import annotations

from pathlib import Path

from agesearch.search.errors import UsageError

TTA_CHOICES = ("flip",)


def check_request(*, trial: int | None, ensemble: int | None, epochs: int | None, image_size: int | None, refit_on_train_val: bool,
                  tta: str | None) -> None:
    """The combinations of options an export refuses (no framework, no study).

    Raises:
        UsageError: one line naming the options.
    """
    if ensemble is not None and trial is not None:
        raise UsageError("--trial and --ensemble exclude each other (--ensemble chooses its members on val)")
    if ensemble is not None and ensemble < 1:
        raise UsageError(f"--ensemble must be a positive integer, got {ensemble}")
    if ensemble is not None and epochs is not None and not refit_on_train_val:
        raise UsageError("--epochs sets a retraining: with --ensemble it needs --refit-on-train-val (the stored models are used as they are)")
    if ensemble is not None and image_size is not None and not refit_on_train_val:
        raise UsageError(f"--image-size {image_size} retrains: with --ensemble it needs --refit-on-train-val (stored models cannot change size)")
    if image_size is not None and image_size < 16:
        raise UsageError(f"--image-size must be at least 16 pixels, got {image_size}")
    if tta is not None and tta not in TTA_CHOICES:
        raise UsageError(f"--tta must be one of {', '.join(TTA_CHOICES)} or None, got {tta!r}")


def export_study(
    study_name: str,
    storage: str | None = None,
    out: str | Path | None = None,
    *,
    trial: int | None = None,
    ensemble: int | None = None,
    tta: str | None = None,
    epochs: int | None = None,
    refit_on_train_val: bool = False,
    image_size: int | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
    artifacts: str | None = None,
    format: str = "keras",  # noqa: A002  (the CLI's --format)
) -> tuple[dict, Path]:
    """Export one trial (retrained) or an ensemble (greedy selection on val) of a study.

    Args:
        study_name: the study (made by `agesearch run` or `agesearch.search`).
        storage: its storage URL; default `sqlite:///studies/<study>.db`.
        out: the .keras file; default `studies/<study>/model.keras`. The cards go beside it.
        The others: `agesearch export --help`, option by option (`tta="flip"`, `format="onnx"`, ...).

    Returns:
        (the model card as written beside the model, the model file).

    Raises:
        UsageError, StorageError: bad options, no such study, nothing to export; one line.
    """
    from agesearch.search.frameworks import import_keras_quietly
    from agesearch.search.export.trial import MODEL_FILE, check_out_path, export_trial, open_study, pick_trial, resized_config
    from agesearch.search.export.formats import check_format
    from agesearch.search.store.artifacts import models_dir

    check_request(trial=trial, ensemble=ensemble, epochs=epochs, image_size=image_size, refit_on_train_val=refit_on_train_val, tta=tta)
    check_format(format)  # a missing package fails here, before Keras loads; the backend is checked once it has
    study, url = open_study(study_name, storage)
    path = check_out_path(Path(out) if out is not None else models_dir(url, study_name) / MODEL_FILE)
    if ensemble is not None:
        from agesearch.search.export.ensemble import export_ensemble, pick_members

        # No candidate fails before Keras loads; the selection then scores the candidates on val.
        members = pick_members(study, url, ensemble, refit=refit_on_train_val, spec=artifacts, cache_dir=cache_dir)
        import_keras_quietly()
        card = export_ensemble(study, url, members, path, tta_flip=tta == "flip", refit_on_train_val=refit_on_train_val, epochs=epochs,
                               seed=seed, cache_dir=cache_dir, spec=artifacts, image_size=image_size, format=format)
        return card, path
    chosen = pick_trial(study, trial)
    resized_config(chosen, image_size)  # before Keras: a config too deep for the size fails at once
    import_keras_quietly()
    card = export_trial(study, chosen, path, epochs=epochs, refit_on_train_val=refit_on_train_val, seed=seed, cache_dir=cache_dir,
                        tta_flip=tta == "flip", image_size=image_size, format=format)
    return card, path
