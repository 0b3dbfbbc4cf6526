"""The trackers: `agesearch run --mlflow URI` against a real local MLflow store (SQLite, no mocks),
`--tensorboard DIR` event files per trial, and the one-line errors before anything trains.
Synthetic data at 16 px, 2 epochs."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from agesearch.search.store import study as st
from conftest import run_cli

pytest.importorskip("mlflow", reason='the tracker tests need the mlflow extra: pip install "agesearch[mlflow]"')

TINY = ["--space", "train", "--no-baselines", "--epochs", "2", "--image-size", "16", "--limit", "120", "--synthetic-count", "200",
        "--sampler", "random", "--pruner", "none"]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _events(folder: Path) -> dict[str, set[int]]:
    """Tag -> the steps TensorBoard's event files under `folder` hold (read with TensorFlow)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    found: dict[str, set[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(raw.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, set()).add(event.step)
    return found


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 2-trial run with both trackers on: (folder, MLflow URI, the study)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = Path.cwd()
    os.chdir(root)  # studies/ and MLflow's ./mlruns artifacts land here
    try:
        from agesearch.search.cli import main

        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(["run", *TINY, "--n-trials", "2", "--mlflow", uri, "--tensorboard", "tb"])
    finally:
        os.chdir(old)
    assert code == 0, out.getvalue()[-2000:]
    assert f"mlflow: each finished trial becomes a run of experiment 'train' in {uri}" in out.getvalue()
    storage = st.open_storage(f"sqlite:///{root / 'studies' / 'train.db'}", heartbeat=False, create_dirs=False)
    return root, uri, optuna.load_study(study_name="train", storage=storage)


def test_run_mlflow_makes_each_trial_a_run_with_params_epoch_metrics_state_and_model(tracked):
    root, uri, study = tracked
    client = _client(uri)
    experiment = client.get_experiment_by_name("train")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["trial-0", "trial-1"]
    for trial in study.trials:
        run = runs[f"trial-{trial.number}"]
        assert trial.state == TrialState.COMPLETE
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
        assert run.data.tags["optuna.study"] == "train" and run.data.tags["optuna.trial"] == str(trial.number)
        assert run.data.params == {k: str(v) for k, v in trial.params.items()} | {"seed": str(trial.user_attrs["seed"])}
        for key in ("val_objective", "val_age_mae", "loss", "val_gender_accuracy"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1]
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(trial.user_attrs["history"][key])
        assert run.data.metrics["best_val_objective"] == pytest.approx(trial.value)
        assert run.data.metrics["best_epoch"] == trial.user_attrs["best_epoch"]
        assert run.info.start_time == int(trial.datetime_start.timestamp() * 1000)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert {"trial.json", f"model/trial-{trial.number}.keras"} <= artifacts


def test_run_tensorboard_writes_each_trials_epochs_to_its_own_folder(tracked):
    root, _, study = tracked
    assert sorted(p.name for p in (root / "tb").iterdir()) == ["trial-0", "trial-1"]
    for trial in study.trials:
        train, validation = _events(root / "tb" / f"trial-{trial.number}" / "train"), _events(root / "tb" / f"trial-{trial.number}" / "validation")
        assert train["epoch_loss"] == {0, 1} and train["epoch_age_mae_years"] == {0, 1}
        assert validation["epoch_objective"] == {0, 1}  # val_objective, which EpochReport adds to Keras' logs


def test_run_mlflow_unreachable_uri_is_one_line_and_exit_2_before_the_data_loads(in_tmp, capsys):
    code, out, err = run_cli(["run", *TINY, "--n-trials", "1", "--mlflow", "http://127.0.0.1:9"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("agesearch: error: --mlflow http://127.0.0.1:9: cannot use this MLflow tracking URI: ")
    assert "data:" not in out and not (in_tmp / "studies" / "train.db").exists()  # before the data and the study


def test_run_mlflow_missing_is_the_install_hint(in_tmp, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # find_spec answers None: as if not installed
    code, out, err = run_cli(["run", *TINY, "--mlflow", "sqlite:///mlflow.db"], capsys)
    assert (code, err) == (2, 'agesearch: error: MLflow is not installed; install it with: pip install "agesearch[mlflow]" (or pip install mlflow-skinny)\n')


def test_run_tensorboard_folder_that_cannot_be_made_is_one_line(in_tmp, capsys):
    (in_tmp / "file").write_text("")
    code, out, err = run_cli(["run", *TINY, "--tensorboard", "file/tb"], capsys)
    assert code == 2 and err.startswith("agesearch: error: --tensorboard 'file/tb': cannot make the folder")


def test_mlflow_tracker_maps_pruned_and_failed_trials_and_logs_partial_curves(tmp_path, monkeypatch):
    """Without training: trials as the loop tells them, each state with what it recorded."""
    from agesearch import mlflow_callback

    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="states", storage=f"sqlite:///{tmp_path / 's.db'}")
    start = datetime(2025, 1, 1, 12, 0, 0)
    history = {"val_objective": [0.9, 0.8], "loss": [3.0, 2.5], "seconds": [2.0, 1.0]}
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    made = [
        optuna.trial.create_trial(state=TrialState.PRUNED, params={"learning_rate": 1e-3}, distributions={"learning_rate": dist},
                                  user_attrs={"history": history, "pruned_at_epoch": 1}, intermediate_values={0: 0.9, 1: 0.8}),
        optuna.trial.create_trial(state=TrialState.FAIL, params={"learning_rate": 2e-3}, distributions={"learning_rate": dist},
                                  user_attrs={"history": {}, "fail_reason": "TrialFailed: loss became NaN or infinite at epoch 0"}),
    ]
    for trial in made:
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=5)
        study.add_trial(trial)
    callback = mlflow_callback(f"sqlite:///{tmp_path / 'mlflow.db'}", "states-exp")
    for frozen in study.trials:
        callback(study, frozen)
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("states-exp").experiment_id])}
    pruned, failed = runs["trial-0"], runs["trial-1"]
    assert (pruned.info.status, pruned.data.tags["state"], pruned.data.tags["agesearch.pruned_at_epoch"]) == ("KILLED", "PRUNED", "1")
    assert (failed.info.status, failed.data.tags["state"]) == ("FAILED", "FAIL")
    assert failed.data.tags["agesearch.fail_reason"].startswith("TrialFailed: loss became NaN")
    curve = sorted(client.get_metric_history(pruned.info.run_id, "val_objective"), key=lambda m: m.step)
    begin = int(start.timestamp() * 1000)
    assert [(m.step, m.value, m.timestamp - begin) for m in curve] == [(0, 0.9, 2000), (1, 0.8, 3000)]  # stamped at each epoch's end
    assert "best_val_objective" not in pruned.data.metrics and failed.data.metrics == {}
    assert pruned.data.params == {"learning_rate": "0.001"}


def test_mlflow_tracker_that_fails_mid_search_warns_and_lets_the_search_go_on(tmp_path, monkeypatch, capsys):
    from agesearch import mlflow_callback

    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="gone", storage=f"sqlite:///{tmp_path / 's.db'}")
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0))
    callback = mlflow_callback(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(callback.client, "create_run", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("server went away")))
    callback(study, study.trials[0])
    assert capsys.readouterr().err.startswith("warning: MLflow: trial 0 was not logged to sqlite:///")


@pytest.mark.ray
def test_run_on_ray_trains_with_tensorboard_in_the_workers_and_logs_every_trial_from_the_driver(tmp_path, monkeypatch, cache_dir):
    pytest.importorskip("ray")
    from agesearch.search.loop.run import DataSpec, run_search

    monkeypatch.chdir(tmp_path)
    uri, seen = f"sqlite:///{tmp_path / 'mlflow.db'}", []
    study = run_search("train", data=DataSpec(image_size=16, limit=120, synthetic_count=200, cache_dir=cache_dir), n_trials=2, epochs=1,
                       sampler="random", baselines=False, live=False, workers=2, cpus_per_trial=1.0, mlflow=uri, tensorboard="tb",
                       callbacks=[lambda s, t: seen.append(t.number)])
    assert sorted(seen) == [0, 1] and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.user_attrs["worker"]["pid"] != os.getpid() for t in study.trials)  # trained in Ray workers
    for t in study.trials:
        assert _events(tmp_path / "tb" / f"trial-{t.number}" / "validation")["epoch_objective"] == {0}
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"] and {r.info.status for r in runs} == {"FINISHED"}


def test_fit_pruned_trial_still_writes_its_last_epoch_to_tensorboard(tmp_path, cache_dir):
    """Keras calls no on_train_end when a callback raises: the prune is raised after TensorBoard
    wrote the epoch, and its files are closed by fit."""
    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.search.loop.run import DataSpec, load_data
    from agesearch.search.training.fit import PruneRequested, fit

    _, _, data = load_data(DataSpec(image_size=16, limit=120, synthetic_count=200, cache_dir=cache_dir))
    cfg = ModelConfig(image_size=16, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_dense=16, gender_dense=16)
    with pytest.raises(PruneRequested, match="pruned after epoch 1"):
        fit(cfg, TrainConfig(epochs=4, seed=0), data, lambda epoch, value: epoch == 1, tensorboard=str(tmp_path / "tb"))
    assert _events(tmp_path / "tb" / "validation")["epoch_objective"] == {0, 1}
    assert _events(tmp_path / "tb" / "train")["epoch_loss"] == {0, 1}
