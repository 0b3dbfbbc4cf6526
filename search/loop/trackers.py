"""The trackers teams read a search in: each finished trial as an MLflow run, each trial's curves in TensorBoard.

MLflow (`agesearch run --mlflow URI`, or `agesearch.mlflow_callback(URI)` in `callbacks=`):
`MlflowTracker` is an Optuna-style callback `(study, frozen_trial)`. Each trial it is called
with becomes one run named `trial-N` in the experiment named as the study:
  - params: the trial's params (what the sampler drew, or a preset's), and its seed;
  - metrics: the trial's per-epoch history (user attr `history`: loss, val_loss, age_mae and
    val_age_mae in years, gender_accuracy, val_gender_accuracy, val_objective, learning_rate,
    trainable_params, seconds) at `step=epoch` (0-based, as the pruner's reports), stamped
    with the trial's start plus the epochs' times; a COMPLETE trial's best-epoch scores as
    `best_val_objective`, `best_val_age_mae`, `best_val_gender_accuracy`, and its size;
  - state: the run's status FINISHED (COMPLETE), KILLED (PRUNED) or FAILED (FAIL), and the tag
    `state` with Optuna's name; tags for the study, the trial number, a preset, a fail reason;
  - artifacts: `trial.json` (every user attr: configs, history, ...) and, when the study's
    artifact store still holds it, the model as `model/trial-N.keras`.
The run is written when the trial has finished, from the process that owns the study (on Ray,
the driver), so it works with both executors. A run that cannot be written is one warning
line on stderr; the search goes on (the study keeps everything the run would have held).

Why not optuna-integration's `MLflowCallback`: it logs the params and the final value only,
through MLflow's process-wide fluent API; this one uses `MlflowClient` (no global state) and
adds the per-epoch curves and the model. (That callback still plugs into `callbacks=`.)

TensorBoard (`agesearch run --tensorboard DIR`): Keras' own TensorBoard callback, added in
training/fit.py, writes each trial's epochs to `DIR/trial-N` wherever the trial trains (a Ray
worker writes on its own machine). This module only checks the folder and names the sub-folders.

MLflow is an optional extra (`pip install "agesearch[mlflow]"`, mlflow-skinny), imported only
here and only when a tracker is made; TensorBoard needs TensorFlow's summary writer and the
tensorboard package behind it (the `tensorboard` extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agesearch.search.errors import UsageError

MLFLOW_HINT = 'MLflow is not installed; install it with: pip install "agesearch[mlflow]" (or pip install mlflow-skinny)'
TENSORBOARD_HINT = ("--tensorboard needs TensorFlow and TensorBoard (Keras' TensorBoard callback writes with tf.summary, "
                    'whatever the backend): pip install "agesearch[tensorboard]" (and tensorflow-cpu)')

# Optuna's states as MLflow run statuses.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# A COMPLETE trial's user attrs logged once, under these metric names.
SUMMARY_METRICS = {"objective": "best_val_objective", "val_age_mae": "best_val_age_mae", "val_gender_accuracy": "best_val_gender_accuracy",
                   "best_epoch": "best_epoch", "epochs_run": "epochs_run", "params": "n_params", "flops": "flops", "seconds": "train_seconds"}
# User attrs shown as tags (strings, cut to TAG_CHARS).
TAG_ATTRS = ("preset", "sampled_by", "fail_reason", "refused", "pruned_at_epoch", "retry_of")
TAG_CHARS = 5000
PARAM_CHARS = 500
# While the tracker checks the URI: no retries and a short timeout, so that a server that cannot
# be reached is one line at once (MLflow's defaults retry with backoff for minutes).
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def check_mlflow_installed() -> None:
    """Fail in one line, without importing it, when MLflow is missing.

    Raises:
        UsageError: the install hint.
    """
    if importlib.util.find_spec("mlflow") is None:
        raise UsageError(MLFLOW_HINT)


def check_tensorboard(folder: str | Path) -> Path:
    """The TensorBoard folder can be made, and TensorFlow and TensorBoard are there to write it (no import).

    Raises:
        UsageError: a folder that cannot be made, or no TensorFlow.
    """
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--tensorboard {str(folder)!r}: cannot make the folder ({e.strerror})") from None
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensorboard") is None:
        raise UsageError(TENSORBOARD_HINT)
    return path.resolve()


def tensorboard_dir(root: str | Path, trial_number: int) -> str:
    """`ROOT/trial-N`, absolute: the folder a trial's TensorBoard logs go to, wherever it trains."""
    return str(Path(root).expanduser().resolve() / f"trial-{trial_number}")


@contextlib.contextmanager
def _checking() -> Iterator[None]:
    """Quick HTTP failures and no MLflow INFO lines (its SQLite store's table creation) meanwhile."""
    saved = {k: os.environ.get(k) for k in QUICK_HTTP}
    os.environ.update(QUICK_HTTP)
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class MlflowTracker:
    """Optuna callback: each finished trial becomes one MLflow run (see the module docstring).

    Args:
        tracking_uri: an MLflow tracking URI: `sqlite:///mlflow.db`, `http://HOST:5000`, ...
        experiment: the experiment's name; default: the study's name, on the first trial.
        log_models: upload a COMPLETE trial's model from the study's artifact store.

    Raises:
        UsageError: MLflow missing, or a URI that cannot be reached or used (checked here, at
            once, by getting or creating the experiment: before any trial trains).
    """

    def __init__(self, tracking_uri: str, experiment: str | None = None, *, log_models: bool = True):
        check_mlflow_installed()
        from mlflow import MlflowClient

        self.uri, self.experiment, self.log_models = tracking_uri, experiment, log_models
        self.experiment_id: str | None = None
        try:
            with _checking():
                self.client = MlflowClient(tracking_uri=tracking_uri)
                if experiment is not None:
                    self.experiment_id = self._experiment_id(experiment)
                else:
                    self.client.search_experiments(max_results=1)
        except UsageError:
            raise
        except Exception as e:  # MlflowException, an unsupported scheme, a connection refused, ...
            raise UsageError(f"--mlflow {tracking_uri}: cannot use this MLflow tracking URI: {_one_line(e)}") from None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except Exception:  # another process made it meanwhile
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise UsageError(f"--mlflow {self.uri}: the experiment {name!r} is deleted there (restore it, or name the study otherwise)")
        return found.experiment_id

    def __call__(self, study, trial) -> None:
        try:
            self.log_trial(study, trial)
        except Exception as e:  # the study holds it all: a tracker that fails must not stop the search
            print(f"warning: MLflow: trial {trial.number} was not logged to {self.uri}: {_one_line(e)}", file=sys.stderr, flush=True)

    def log_trial(self, study, trial) -> str:
        """Write one finished trial as a run; returns the run's id."""
        if self.experiment_id is None:
            self.experiment_id = self._experiment_id(self.experiment or study.study_name)
        start = _ms(trial.datetime_start)
        run = self.client.create_run(self.experiment_id, start_time=start, tags=_tags(study, trial), run_name=f"trial-{trial.number}")
        run_id = run.info.run_id
        self._log_values(run_id, trial, start)
        self.client.log_dict(run_id, json.loads(json.dumps(trial.user_attrs, default=str)), "trial.json")
        if self.log_models:
            self._log_model(run_id, study, trial)
        self.client.set_terminated(run_id, status=RUN_STATUS.get(trial.state.name, "FAILED"), end_time=_ms(trial.datetime_complete))
        return run_id

    def _log_values(self, run_id: str, trial, start: int | None) -> None:
        from mlflow.entities import Metric, Param

        params = [Param(str(k)[:250], str(v)[:PARAM_CHARS]) for k, v in trial.params.items()]
        if "seed" in trial.user_attrs:
            params.append(Param("seed", str(trial.user_attrs["seed"])))
        metrics = _epoch_metrics(trial.user_attrs.get("history") or {}, start)
        if trial.state.name == "COMPLETE":
            stamp = _ms(trial.datetime_complete) or 0
            metrics += [Metric(name, float(trial.user_attrs[attr]), stamp, 0) for attr, name in SUMMARY_METRICS.items()
                        if isinstance(trial.user_attrs.get(attr), (int, float))]
        for i in range(0, len(params), 100):  # MLflow's limits: 100 params, 1000 metrics a batch
            self.client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def _log_model(self, run_id: str, study, trial) -> None:
        """The trial's model from the study's artifact store (KeepBestModels may have removed it)."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        from agesearch.search.store.artifacts import STORE_ATTR, model_artifacts, store_for

        metas = model_artifacts(trial)
        spec = study.user_attrs.get(STORE_ATTR)
        if not metas or spec is None:
            return
        meta = metas[-1]
        with tempfile.TemporaryDirectory(prefix="agesearch-mlflow-") as tmp:
            path = Path(tmp) / meta["filename"]
            try:
                with store_for(spec).open_reader(meta["artifact_id"]) as reader:
                    path.write_bytes(reader.read())
            except ArtifactNotFound:
                return
            self.client.log_artifact(run_id, str(path), artifact_path="model")


def _ms(when) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _tags(study, trial) -> dict[str, str]:
    tags = {"state": trial.state.name, "optuna.study": study.study_name, "optuna.trial": str(trial.number)}
    for key in TAG_ATTRS:
        if trial.user_attrs.get(key) is not None:
            tags[f"agesearch.{key}"] = str(trial.user_attrs[key])[:TAG_CHARS]
    return tags


def _epoch_metrics(history: dict, start: int | None) -> list:
    """One metric per history key and epoch, at step=epoch; stamped start + the epochs' seconds."""
    from mlflow.entities import Metric

    seconds = history.get("seconds") or []
    stamps, t = [], float(start or 0)
    for s in seconds:
        t += 1000.0 * float(s)
        stamps.append(int(t))
    out = []
    for key, values in history.items():
        for epoch, value in enumerate(values or []):
            if isinstance(value, (int, float)):
                stamp = stamps[epoch] if epoch < len(stamps) else int(start or 0)
                out.append(Metric(str(key), float(value), stamp, epoch))
    return out
