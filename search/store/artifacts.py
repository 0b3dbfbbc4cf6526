"""Trial models as Optuna artifacts: uploaded by whoever trained them, attached to their trial.

Each COMPLETE trial's model (`trial-N.keras`) goes to an Optuna artifact store and is attached
to its trial with the same trial system attr `optuna.artifacts.upload_artifact` writes, so
`optuna.artifacts.get_all_artifact_meta`, `download_artifact` and optuna-dashboard all find it.
The upload is split in two because on a Ray cluster the worker holds the file and the driver
holds the study:

    store = store_for(spec)                       # worker: the spec is a plain string
    artifact_id = upload_model(store, path)       # worker: writes the blob only
    attach(study, number, artifact_id, filename)  # driver, before the trial is told

The default store is a folder beside the study database (`studies/<study>-artifacts/`);
`--artifacts DIR` or `--artifacts s3://bucket/prefix` (Optuna's `Boto3ArtifactStore`, the `s3`
extra) chooses another, and the study records the spec (user attr `agesearch:artifacts`) so
that report, export and evaluate find the models without being told. `KeepBestModels` removes
the blobs of all but the best K models so that disks do not fill.

Studies made before artifacts kept one model in `studies/<study>/best.keras` (with the trial
number in `best.json`); `find_model` falls back to it.
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.errors import UsageError
from agesearch.search.store.study import STUDIES_DIR, ranked, sqlite_path

BEST_MODEL = "best.keras"  # the pre-artifact layout: studies/<study>/best.keras
BEST_INFO = "best.json"
MODEL_SUFFIX = ".keras"
STORE_ATTR = "agesearch:artifacts"  # study user attr: the spec of the study's artifact store
ARTIFACTS_ATTR_PREFIX = "artifacts:"  # optuna/artifacts/_upload.py: the trial system attr key
DEFAULT_MIME_TYPE = "application/octet-stream"
S3_HINT = 'S3 artifact stores need boto3: pip install "agesearch[s3]" (or pip install boto3)'


# ------------------------------------------------------------------------------ where


def models_dir(storage_url: str, study_name: str) -> Path:
    """studies/<study>/ next to a SQLite study file; studies/<study>/ in the CWD otherwise."""

    path = sqlite_path(storage_url)
    root = path.parent if path is not None else STUDIES_DIR
    return root / study_name


def resolve_spec(spec: str | None, storage_url: str, study_name: str) -> str:
    """The store spec as a plain string a worker can use anywhere: `s3://...` or an absolute path.

    None means the default, `studies/<study>-artifacts/` beside the study database.
    """
    if spec is None:
        d = models_dir(storage_url, study_name)
        return str((d.parent / f"{study_name}-artifacts").resolve())
    if spec.startswith("s3://"):
        check_spec(spec)
        return spec.rstrip("/")
    return str(Path(spec).expanduser().resolve())


class PrefixedStore:
    """An artifact store whose ids live under a key prefix (`s3://bucket/prefix/<id>`).

    Optuna's Boto3ArtifactStore writes to the bucket's root; ids keep their plain uuid form
    (optuna-dashboard's routes accept only that), the prefix is added here.
    """

    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str):
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def check_spec(spec: str) -> None:
    """Fail in one line, without importing anything, for an S3 spec that cannot work here.

    Raises:
        UsageError: no bucket, or boto3 (the `s3` extra) not installed.
    """
    import importlib.util

    if spec.startswith("s3://"):
        if not spec.removeprefix("s3://").split("/", 1)[0]:
            raise UsageError(f"--artifacts {spec!r}: an S3 store needs a bucket (s3://BUCKET/PREFIX)")
        if importlib.util.find_spec("boto3") is None:
            raise UsageError(S3_HINT)


def store_for(spec: str):
    """The artifact store of a spec from `resolve_spec` (callable in a Ray worker).

    Raises:
        UsageError: an S3 spec without a bucket or without boto3 installed.
    """
    if spec.startswith("s3://"):
        check_spec(spec)
        bucket, _, prefix = spec.removeprefix("s3://").partition("/")
        store = optuna.artifacts.Boto3ArtifactStore(bucket)
        return PrefixedStore(store, prefix) if prefix else store
    path = Path(spec)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--artifacts {spec!r}: cannot make the folder ({e.strerror})") from None
    return optuna.artifacts.FileSystemArtifactStore(path)


def record_store(study: optuna.Study, spec: str) -> None:
    """Remember in the study where its models are, for report, export and evaluate."""
    if study.user_attrs.get(STORE_ATTR) != spec:
        study.set_user_attr(STORE_ATTR, spec)


def study_store(study: optuna.Study, storage_url: str, spec: str | None = None):
    """The store of a study's models: `spec`, else the recorded one, else the default folder."""
    spec = spec or study.user_attrs.get(STORE_ATTR)
    resolved = resolve_spec(spec, storage_url, study.study_name)
    if spec is None and not Path(resolved).is_dir():
        return None  # an old study: no store, maybe a best.keras
    return store_for(resolved)


def serving_store(storage, storage_url: str, study_name: str | None, spec: str | None = None):
    """The store optuna-dashboard serves: `spec`, else the (named, else first) study's own.

    optuna-dashboard takes one artifact store for every study in the storage; `agesearch run`
    gives each study its own folder, so without --study the first study that has one is used.
    """
    if spec is not None:
        return store_for(resolve_spec(spec, storage_url, study_name or ""))
    names = [study_name] if study_name else optuna.get_all_study_names(storage)
    for name in names:
        store = study_store(optuna.load_study(study_name=name, storage=storage), storage_url)
        if store is not None:
            return store
    return None


# ------------------------------------------------------------------------------ upload


def model_filename(trial_number: int) -> str:
    return f"trial-{trial_number}{MODEL_SUFFIX}"


def upload_model(store, file_path: str | Path) -> str:
    """Write a model file to the store under a new id; only the blob (worker side)."""
    artifact_id = str(uuid.uuid4())
    with open(file_path, "rb") as f:
        store.write(artifact_id, f)
    return artifact_id


def attach(study: optuna.Study, trial_number: int, artifact_id: str, filename: str) -> None:
    """Attach an uploaded blob to a RUNNING trial, as `optuna.artifacts.upload_artifact` does.

    Writes the same trial system attr (`artifacts:<id>` = the JSON of an `ArtifactMeta`), so
    Optuna's artifact functions and optuna-dashboard list it. Must run before the trial is
    told: Optuna refuses attrs on a finished trial. Optuna itself reaches the storage through
    the study's private fields here; there is no public way from a trial number to its id.
    """
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = optuna.artifacts.ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype or DEFAULT_MIME_TYPE, encoding=encoding)
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)
    storage.set_trial_system_attr(trial_id, ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta)))


def save_model(model, *, path: str | Path | None = None, artifacts: str | None = None) -> str | None:
    """Save a Keras model to `path` (atomically) and/or upload it to the store `artifacts`.

    Called where the model was trained (a Ray worker): returns the artifact id to attach where
    the study is, or None without a store.
    """
    import tempfile

    from agesearch.search.files import atomic_path

    if path is not None:
        with atomic_path(path) as tmp:
            model.save(tmp)
    if artifacts is None:
        return None
    if path is not None:
        return upload_model(store_for(artifacts), path)
    with tempfile.TemporaryDirectory(prefix="agesearch-model-") as tmp:
        file = Path(tmp) / f"model{MODEL_SUFFIX}"  # Keras picks the format from the suffix
        model.save(file)
        return upload_model(store_for(artifacts), file)


def model_artifacts(trial: FrozenTrial) -> list[dict]:
    """The trial's attached `.keras` artifacts (ArtifactMeta fields), in attach order."""
    metas = [json.loads(v) for k, v in trial.system_attrs.items() if k.startswith(ARTIFACTS_ATTR_PREFIX)]
    return [m for m in metas if m and str(m.get("filename", "")).endswith(MODEL_SUFFIX)]


def exists(store, artifact_id: str) -> bool:
    try:
        store.open_reader(artifact_id).close()
    except ArtifactNotFound:
        return False
    return True




@dataclass(frozen=True)
class ModelRef:
    """A model found for a study."""

    trial: int | None  # the trial that trained it; None for an old best.keras without best.json
    artifact_id: str | None  # its id in the artifact store; None for the old best.keras
    filename: str  # trial-N.keras, or best.keras
    path: Path | None = None  # a local file, once downloaded (always set for best.keras)


def stored_model(trial: FrozenTrial, store) -> ModelRef | None:
    """The trial's latest model still in `store` (KeepBestModels may have removed it), or None."""
    if store is None:
        return None
    for meta in reversed(model_artifacts(trial)):
        if exists(store, meta["artifact_id"]):
            return ModelRef(trial.number, meta["artifact_id"], meta["filename"])
    return None


def best_model(study: optuna.Study, store) -> ModelRef | None:
    """The model of the first trial by `ranked` (the one rule for the best trial) that still has
    one in the store (KeepBestModels keeps the best)."""
    if store is None:
        return None
    return next((ref for t in ranked(study) if (ref := stored_model(t, store)) is not None), None)


def download_model(store, ref: ModelRef, dest_dir: Path) -> ModelRef:
    """The model as a local file under `dest_dir` (kept if already there: ids are unique)."""
    if ref.path is not None:
        return ref
    path = Path(dest_dir) / ref.artifact_id / ref.filename
    if not path.is_file():
        from agesearch.search.files import atomic_path

        with atomic_path(path) as tmp, store.open_reader(ref.artifact_id) as reader:
            tmp.write_bytes(reader.read())
    return ModelRef(ref.trial, ref.artifact_id, ref.filename, path)


def legacy_model(storage_url: str, study_name: str) -> ModelRef | None:
    """`studies/<study>/best.keras` of a study made before artifacts, with best.json's trial."""
    d = models_dir(storage_url, study_name)
    if not (d / BEST_MODEL).is_file():
        return None
    info = d / BEST_INFO
    trial = json.loads(info.read_text()).get("trial") if info.is_file() else None
    return ModelRef(trial, None, BEST_MODEL, d / BEST_MODEL)


def find_model(study: optuna.Study, storage_url: str, *, spec: str | None = None, dest_dir: Path | None = None) -> ModelRef | None:
    """The best model of a study as a local file: from its artifact store, else best.keras.

    Args:
        study: the study.
        storage_url: its storage (locates the default store and the old best.keras).
        spec: an artifact store other than the one the study recorded.
        dest_dir: where downloads go (default: `models/` in agesearch's cache folder, so
            nothing lands beside the study database).
    """
    store = study_store(study, storage_url, spec)
    ref = best_model(study, store)
    if ref is None:
        return legacy_model(storage_url, study.study_name)
    # Keras loads only files named *.keras, and a store's blob is named by its id: download
    # (once per id) even from a file-system store.
    if dest_dir is None:
        from agesearch.search.data.images import default_cache_dir

        dest_dir = default_cache_dir() / "models"
    dest = dest_dir
    return download_model(store, ref, dest)


def study_model(study_name: str, storage_url: str | None = None, spec: str | None = None) -> Path:
    """The local file of a study's best model, for `evaluate --study` (predict takes a model file only).

    Raises:
        StorageError: no such study. UsageError: the study has no saved model.
    """
    from agesearch.search.store import study as st

    url = storage_url or st.default_storage(study_name)
    study = st.load_existing(study_name, url)
    ref = find_model(study, url, spec=spec)
    if ref is None:
        raise UsageError(f"study {study_name!r} has no saved model yet (no complete trial's model in its artifact store, no best.keras)")
    return ref.path


# ------------------------------------------------------------------------------ keep the best


class KeepBestModels:
    """Optuna callback: after each trial, remove the model blobs of all but the first `keep`
    trials by `ranked` (the one rule for the best trial).

    Only blobs are removed (`artifact_store.remove`): Optuna refuses to change a finished trial's
    attrs, so the listing stays and `best_model` skips entries whose blob is gone.
    """

    def __init__(self, store, keep: int | None):
        if keep is not None and keep < 1:
            raise ValueError(f"Invalid value for `keep`: must be at least 1 or None. Received: keep={keep}")
        self.store, self.keep = store, keep
        self.removed: set[str] = set()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.keep is None or trial.state != TrialState.COMPLETE:
            return
        for t in ranked(study)[self.keep :]:
            for meta in model_artifacts(t):
                if meta["artifact_id"] in self.removed:
                    continue
                try:
                    self.store.remove(meta["artifact_id"])
                except ArtifactNotFound:
                    pass
                self.removed.add(meta["artifact_id"])
