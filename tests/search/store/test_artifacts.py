"""Models as Optuna artifacts: the split upload matches Optuna's, keep-best-K, the store of a
study found again, the old best.keras fallback, S3 without boto3, and optuna-dashboard listing a
trial's model through its HTTP API when started the way `agesearch dashboard` starts it. The S3
tests run against a local S3-compatible server (moto) that they start themselves."""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import dashboard_server

from agesearch.search.store import artifacts as art

from agesearch.search.errors import UsageError


def _study_with_models(tmp_path: Path, values: list[float], name: str = "arts", spec: str | None = None) -> tuple[optuna.Study, str, object]:
    """A study whose complete trials each got a model blob through upload_model + attach."""
    url = f"sqlite:///{tmp_path / 'studies' / (name + '.db')}"
    (tmp_path / "studies").mkdir(exist_ok=True)
    study = optuna.create_study(study_name=name, storage=url)
    spec = art.resolve_spec(spec, url, name)
    store = art.store_for(spec)
    art.record_store(study, spec)
    for v in values:
        trial = study.ask()
        file = tmp_path / f"model-{trial.number}.keras"
        file.write_bytes(f"weights of trial {trial.number}".encode())
        artifact_id = art.upload_model(store, file)  # what a worker does
        art.attach(study, trial.number, artifact_id, art.model_filename(trial.number))  # where the study is
        trial.set_user_attr("objective", v)
        study.tell(trial, v)
    return study, url, store


def test_attach_writes_what_optuna_upload_artifact_writes(tmp_path):
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path)
    study = optuna.create_study()
    theirs, ours = study.ask(), study.ask()
    file = tmp_path / "trial-1.keras"
    file.write_bytes(b"model bytes")
    their_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(file), study_or_trial=theirs)
    our_id = art.upload_model(store, file)
    art.attach(study, ours.number, our_id, "trial-1.keras")
    a, b = (study._storage.get_trial(t._trial_id).system_attrs for t in (theirs, ours))
    assert list(a) == [f"artifacts:{their_id}"] and list(b) == [f"artifacts:{our_id}"]
    assert {**json.loads(a[f"artifacts:{their_id}"]), "artifact_id": None} == {**json.loads(b[f"artifacts:{our_id}"]), "artifact_id": None}
    # Optuna's own listing and download find ours
    metas = optuna.artifacts.get_all_artifact_meta(ours)
    assert [(m.artifact_id, m.filename) for m in metas] == [(our_id, "trial-1.keras")]
    out = tmp_path / "down.keras"
    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=our_id, file_path=str(out))
    assert out.read_bytes() == b"model bytes"


def test_attach_refuses_a_finished_trial(tmp_path):
    study = optuna.create_study()
    study.tell(study.ask(), 1.0)
    with pytest.raises(RuntimeError, match="finished"):
        art.attach(study, 0, "0000", "trial-0.keras")


def test_best_model_is_the_best_trials_and_downloads_as_keras(tmp_path):
    study, url, store = _study_with_models(tmp_path, [0.5, 0.2, 0.9])
    ref = art.find_model(study, url)
    assert ref.trial == 1 == study.best_trial.number
    assert ref.path.suffix == ".keras" and ref.path.read_bytes() == b"weights of trial 1"
    # a second look reuses the download
    assert art.find_model(study, url).path == ref.path


def test_keep_best_models_removes_all_but_the_best_k(tmp_path):
    study, url, store = _study_with_models(tmp_path, [0.5, 0.2, 0.9, 0.1])
    art.KeepBestModels(store, keep=2)(study, study.trials[-1])
    kept = {t.number for t in study.trials if all(art.exists(store, m["artifact_id"]) for m in art.model_artifacts(t))}
    assert kept == {3, 1}
    assert art.best_model(study, store).trial == 3
    # None keeps all
    study2, _, store2 = _study_with_models(tmp_path, [0.3, 0.4], name="all")
    art.KeepBestModels(store2, keep=None)(study2, study2.trials[-1])
    assert all(art.exists(store2, m["artifact_id"]) for t in study2.trials for m in art.model_artifacts(t))


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_best_models_validates_k(keep):
    with pytest.raises(ValueError, match=rf"Invalid value for `keep`: must be at least 1 or None. Received: keep={keep}"):
        art.KeepBestModels(None, keep)


def test_a_resumed_or_read_study_finds_its_recorded_store(tmp_path):
    other = tmp_path / "elsewhere"
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    spec = art.resolve_spec(str(other), url, "s")
    art.record_store(study, spec)
    assert study.user_attrs[art.STORE_ATTR] == str(other.resolve())
    assert isinstance(art.study_store(study, url), optuna.artifacts.FileSystemArtifactStore)
    assert other.is_dir()


def test_old_studies_keep_their_best_keras(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=url)
    study.tell(study.ask(), 1.0)
    d = art.models_dir(url, "old")
    d.mkdir()
    (d / art.BEST_MODEL).write_bytes(b"old")
    assert art.find_model(study, url).trial is None  # no best.json: trial unknown, not "?"
    (d / art.BEST_INFO).write_text(json.dumps({"trial": 0, "objective": 1.0}))
    ref = art.find_model(study, url)
    assert (ref.trial, ref.path, ref.artifact_id) == (0, d / art.BEST_MODEL, None)


def test_s3_store_without_boto3_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a))
    with pytest.raises(UsageError, match=r'^S3 artifact stores need boto3: pip install "agesearch\[s3\]"'):
        art.store_for("s3://bucket/prefix")
    with pytest.raises(UsageError, match=r"needs a bucket"):
        art.resolve_spec("s3:///x", "sqlite:///a.db", "a")


@pytest.fixture(scope="module")
def s3_server():
    """A local S3-compatible server (moto in server mode, the `test` extra) on a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """boto3 clients made anywhere in the test (Optuna's Boto3ArtifactStore makes its own) reach
    the local server, with dummy credentials and no ~/.aws; yields a client and a fresh bucket."""
    import uuid

    import boto3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # boto3 >= 1.28 reads it for every client
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("s3")
    bucket = f"agesearch-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _keys(client, bucket: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_s3_store_writes_plain_ids_under_the_prefix(s3, tmp_path):
    client, bucket = s3
    store = art.store_for(f"s3://{bucket}/runs/arch")
    assert isinstance(store, art.PrefixedStore) and store.prefix == "runs/arch/"
    file = tmp_path / "m.keras"
    file.write_bytes(b"model bytes")
    artifact_id = art.upload_model(store, file)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", artifact_id)  # what the dashboard's routes take
    assert _keys(client, bucket) == {f"runs/arch/{artifact_id}"}
    assert client.get_object(Bucket=bucket, Key=f"runs/arch/{artifact_id}")["Body"].read() == b"model bytes"
    with store.open_reader(artifact_id) as reader:
        assert reader.read() == b"model bytes"
    assert art.exists(store, artifact_id) and not art.exists(store, "00000000-0000-0000-0000-000000000000")
    store.remove(artifact_id)
    assert _keys(client, bucket) == set() and not art.exists(store, artifact_id)
    # no prefix: Optuna's store itself, ids at the bucket's root
    root_store = art.store_for(f"s3://{bucket}")
    assert isinstance(root_store, optuna.artifacts.Boto3ArtifactStore)
    assert _keys(client, bucket) == set()
    root_id = art.upload_model(root_store, file)
    assert _keys(client, bucket) == {root_id}


def test_s3_study_keeps_the_best_k_and_finds_its_best_model(s3, tmp_path):
    client, bucket = s3
    spec = f"s3://{bucket}/runs/arts/"
    study, url, store = _study_with_models(tmp_path, [0.5, 0.2, 0.9, 0.1], spec=spec)
    assert study.user_attrs[art.STORE_ATTR] == f"s3://{bucket}/runs/arts"  # recorded without the trailing /
    ids = {t.number: art.model_artifacts(t)[0]["artifact_id"] for t in study.trials}
    assert _keys(client, bucket) == {f"runs/arts/{i}" for i in ids.values()}
    art.KeepBestModels(store, keep=2)(study, study.trials[-1])
    assert _keys(client, bucket) == {f"runs/arts/{ids[3]}", f"runs/arts/{ids[1]}"}
    # a reader of the study (report, export, evaluate) finds the S3 store from the study alone
    reread = optuna.load_study(study_name=study.study_name, storage=url)
    ref = art.find_model(reread, url, dest_dir=tmp_path / "downloads")
    assert (ref.trial, ref.artifact_id) == (3, ids[3])
    assert ref.path.read_bytes() == b"weights of trial 3" and ref.path.is_relative_to(tmp_path / "downloads")


def test_run_cli_rejects_s3_without_boto3_before_loading_keras(monkeypatch, capsys):
    import importlib.util

    from conftest import run_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a))
    code, _, err = run_cli(["run", "--space", "arch", "--artifacts", "s3://b/p"], capsys)
    assert code == 2 and "need boto3" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- optuna-dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_agesearch_dashboard_lists_and_serves_each_trials_model(tmp_path):
    pytest.importorskip("optuna_dashboard")
    study, url, _ = _study_with_models(tmp_path, [0.5, 0.2])
    port = _free_port()
    argv = [sys.executable, "-m", "agesearch.search.cli", "dashboard", "--storage", url, "--study", study.study_name, "--port", str(port)]
    with dashboard_server(argv, port):
        sid = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))["study_summaries"][0]["study_id"]
        trials = json.loads(_get(f"http://127.0.0.1:{port}/api/studies/{sid}?after=0"))["trials"]
        for t, frozen in zip(trials, study.trials, strict=True):
            listed = [(a["filename"], a["artifact_id"]) for a in t["artifacts"]]
            assert listed == [(f"trial-{t['number']}.keras", art.model_artifacts(frozen)[0]["artifact_id"])]
            # and the store was passed in: the model downloads through the dashboard
            body = _get(f"http://127.0.0.1:{port}/artifacts/{sid}/{t['trial_id']}/{listed[0][1]}")
            assert body == f"weights of trial {t['number']}".encode()


# --------------------------------------------------------------------------- a real search


def test_a_search_uploads_each_complete_trials_model(finished):
    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    store = art.study_store(study, finished.url)
    assert study.user_attrs[art.STORE_ATTR] == str((finished.root / "studies" / f"{finished.name}-artifacts").resolve())
    for t in study.trials:
        metas = art.model_artifacts(t)
        if t.state == TrialState.COMPLETE:
            assert [m["filename"] for m in metas] == [f"trial-{t.number}.keras"]
            assert art.exists(store, metas[0]["artifact_id"])
        else:
            assert metas == []
    assert not (finished.root / "studies" / finished.name / art.BEST_MODEL).exists()  # nothing beside the database


def test_evaluate_study_scores_the_best_model_from_the_store(finished, capsys):
    from conftest import run_cli

    study = optuna.load_study(study_name=finished.name, storage=finished.url)
    ref = art.find_model(study, finished.url)
    assert ref.trial == study.best_trial.number
    args = ["--data", "synthetic", "--limit", "40", "--json"]
    code, by_study, err = run_cli(["evaluate", "--study", finished.name, "--storage", finished.url, *args], capsys)
    assert code == 0, err
    code, by_file, err = run_cli(["evaluate", "--model", str(ref.path), *args], capsys)
    assert code == 0, err
    a, b = json.loads(by_study), json.loads(by_file)
    assert a["n"] == 40 and (a["age_mae"], a["gender_accuracy"]) == (b["age_mae"], b["gender_accuracy"])
