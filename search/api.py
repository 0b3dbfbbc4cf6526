"""agesearch's Python API, exposed at the top of the package:

    import agesearch

    study = agesearch.search(space="train", data="faces/", n_trials=20, callbacks=[...])  # -> optuna.Study
    card = agesearch.export(study, out="model.keras")                                    # -> the model card (dict)
    model = agesearch.load_model("model.keras")                                         # -> Predictor
    model.predict(["a.jpg", "b.jpg"])                                                   # -> pandas DataFrame
    model.predict(["group.jpg"], detect_faces=True)                                     # -> one row per face, with its box
    agesearch.mlflow_callback("sqlite:///mlflow.db")                                    # -> a callback for `callbacks=`

Each function is a thin layer over what the command line calls (`run_search`, `export_study`,
`load_inference_model`, `MlflowTracker`), so `agesearch run/export/predict` and these agree
option by option; the options keep their CLI names with underscores (`--n-trials` is
`n_trials`). Bad input raises the CLI's one-line errors (`agesearch.search.errors`:
UsageError, DataError, StorageError, StudyMismatch, DistributedError).

`agesearch.search` is both the sub-package that holds the code and the search function:
search/__init__.py makes the package callable, and calling it calls `search` here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agesearch.search.errors import UsageError

if TYPE_CHECKING:  # nothing heavy at import: `import agesearch` stays light
    import optuna
    from optuna.trial import FrozenTrial

    from agesearch.search.export.predictor import Predictor
    from agesearch.search.loop.trackers import MlflowTracker

__all__ = ["search", "export", "load_model", "mlflow_callback"]


def search(space: str = "train", data: str | os.PathLike = "synthetic", *, n_trials: int = 20,
           callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (), **options: Any) -> optuna.Study:
    """Run, or resume, a search until the study holds `n_trials` finished trials; `agesearch run` from Python.

    Args:
        space: a search space: arch, train, cnn, full or ablate (`agesearch spaces` lists them).
        data: a folder of UTKFace-named images (AGE_GENDER_RACE_DATE.jpg.chip.jpg), or
            "synthetic" for the built-in generated faces.
        n_trials: the study's total of finished trials; a resumed study runs the rest.
        callbacks: Optuna-style `callback(study, frozen_trial)` calls after each trial this
            process finishes, as in `study.optimize(..., callbacks=[...])`: optuna-integration's
            MLflowCallback or WeightsAndBiasesCallback, `optuna.study.MaxTrialsCallback`, your own;
            `study.stop()` in one ends the search once the running trials are done.
        **options: the data's: `image_size` (128), `split` ((0.7, 0.15, 0.15)), `seed` (0),
            `limit` (None), `synthetic_count` (1200), `cache_dir`; and the run's: `epochs` (30),
            `study_name` (the space's name), `storage` (sqlite:///studies/<study>.db), `sampler`,
            `pruner`, `objective`, `baselines` (False: no presets), `timeout`, `workers` (> 1:
            on Ray), `artifacts`, `keep_models`, `mlflow` (a tracking URI), `tensorboard` (a
            folder), ...: `agesearch run --help` describes each under its option's name.

    Returns:
        The Optuna study (`study.best_trial`, `study.trials_dataframe()`, ...).

    Raises:
        TypeError: an option that `agesearch run` does not have.
        UsageError, DataError, StorageError, StudyMismatch, DistributedError: bad input, one line.
        SearchInterrupted: Ctrl-C (a KeyboardInterrupt); the running trials are enqueued again.
    """
    from agesearch.search.loop.options import RunOptions
    from agesearch.search.loop.run import DataSpec, run_search

    if callable(callbacks):
        raise TypeError("callbacks must be a list of callables `callback(study, frozen_trial)`, got one callable: wrap it in [...]")
    data_fields = {f.name for f in dataclasses.fields(DataSpec)} - {"data"}
    run_fields = {f.name for f in dataclasses.fields(RunOptions)} - {"space", "n_trials"}
    unknown = sorted(set(options) - data_fields - run_fields)
    if unknown:
        raise TypeError(f"search() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(sorted(data_fields | run_fields))}")
    spec = DataSpec(data=os.fspath(data), **{k: v for k, v in options.items() if k in data_fields})
    if spec.cache_dir is not None:
        spec = dataclasses.replace(spec, cache_dir=Path(spec.cache_dir))
    run = RunOptions(space=space, n_trials=n_trials, **{k: v for k, v in options.items() if k in run_fields}).check(spec.image_size)
    with _quiet_frameworks():
        return run_search(run, data=spec, callbacks=list(callbacks))


def export(study: optuna.Study | str, out: str | os.PathLike | None = None, *, trial: int | None = None, ensemble: int | None = None,
           image_size: int | None = None, epochs: int | None = None, refit_on_train_val: bool = False, tta: str | None = None,
           seed: int | None = None, storage: str | None = None, artifacts: str | None = None, cache_dir: str | os.PathLike | None = None,
           format: str = "keras") -> dict:  # noqa: A002  (the CLI's --format)
    """Export a study's best trial (retrained), a chosen one, or an ensemble; `agesearch export` from Python.

    Args:
        study: the study `search` returned, or a study's name (with `storage`).
        out: the .keras file to write (default: studies/<study>/model.keras); the JSON card
            (and the Markdown one) go beside it.
        trial: export this trial number instead of the best.
        ensemble: average at most this many models chosen by greedy selection on val.
        image_size: retrain at this size instead of the searched one (search small, train big).
        epochs, refit_on_train_val, tta ("flip"), seed, artifacts, cache_dir, format ("keras",
            "onnx", "litert", "saved_model"): as `agesearch export --help` describes them.
        storage: the study's storage URL (default: the Study object's own, or
            sqlite:///studies/<study>.db for a name).

    Returns:
        The model card (a dict, as written to the .json file beside the model): the trial or
        members, the configs, how it was trained, and the test-split metrics (`test_metrics`).

    Raises:
        UsageError, StorageError: bad options, no such study, nothing to export; one line.
    """
    from agesearch.search.export.study import export_study

    if isinstance(study, str):
        name = study
    else:
        name, storage = study.study_name, storage or storage_url(study)
    with _quiet_frameworks():
        card, _ = export_study(name, storage, out, trial=trial, ensemble=ensemble, tta=tta, epochs=epochs, refit_on_train_val=refit_on_train_val,
                               image_size=image_size, seed=seed, cache_dir=None if cache_dir is None else Path(cache_dir), artifacts=artifacts,
                               format=format)
    return card


def load_model(path: str | os.PathLike) -> Predictor:
    """Load an exported model (`.keras`) to predict ages and genders; `agesearch predict` from Python.

    Returns:
        A Predictor: `predict(images)` takes image files (a path or a list: any size, resized to
        the model's input as `agesearch predict` does) or an RGB array (n, H, W, 3) of values
        0-255, and returns a pandas DataFrame, one row per image: `image` (for files), `age`
        (years), `gender` ("female"/"male"), `p_female`, `probability`. `predict(images,
        detect_faces=True)` finds, aligns and crops every face of each photo first, one row per
        face with its box (`agesearch predict --detect-faces`; `pip install "agesearch[faces]"`).
        `.model` is the Keras model, `.image_size` its input side, `.card` the JSON card beside
        the file (or None).

    Raises:
        UsageError: no such file, not a .keras file, or not an agesearch model.
    """
    from agesearch.search.export.predictor import load_predictor

    return load_predictor(path)


def mlflow_callback(tracking_uri: str, experiment: str | None = None, *, log_models: bool = True) -> MlflowTracker:
    """A callback for `search(callbacks=[...])` that makes each finished trial an MLflow run.

    Each run holds the trial's params, its per-epoch metrics (step = epoch), its state and its
    model; `search(..., mlflow=URI)` and `agesearch run --mlflow URI` do the same.

    Args:
        tracking_uri: e.g. "sqlite:///mlflow.db" or "http://HOST:5000".
        experiment: the MLflow experiment (default: the study's name).
        log_models: upload each COMPLETE trial's model.

    Raises:
        UsageError: MLflow not installed (pip install "agesearch[mlflow]"), or a URI that cannot
            be reached or used: checked here, before anything trains.
    """
    from agesearch.search.loop.trackers import MlflowTracker

    return MlflowTracker(tracking_uri, experiment, log_models=log_models)


def storage_url(study: optuna.Study) -> str:
    """The URL of a study's RDB storage (Optuna wraps it in a cache that has no public way to it).

    Raises:
        UsageError: a storage without a URL (in-memory, a gRPC proxy): pass `storage=` instead.
    """
    storage = study._storage  # noqa: SLF001
    url = getattr(getattr(storage, "_backend", storage), "url", None)
    if not isinstance(url, str):
        raise UsageError(f"cannot tell the storage URL of study {study.study_name!r} ({type(storage).__name__}): pass storage=URL")
    return url


@contextlib.contextmanager
def _quiet_frameworks() -> Iterator[None]:
    """As the CLI: TensorFlow's start-up lines filtered, Optuna's per-trial INFO lines off while
    agesearch prints its own (the caller's Optuna log level comes back afterwards)."""
    import optuna

    from agesearch.search.frameworks import import_keras_quietly

    import_keras_quietly()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)
