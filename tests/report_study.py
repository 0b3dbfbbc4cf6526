"""A small finished study for the report, browser and dashboard tests, made once per session.

Not a test module: test modules import the session fixture `finished` (or `finished_study`),
and a second caller finds the study the first one made under pytest's session temp folder (a
`ready` file marks it), so the report, browser and artifact tests train it once per session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import io
import math
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

STUDY = "rep"
# No pruner, and a FLOPs cap that refuses the one costly draw of the four (3.9 GFLOPs, a minute
# of training here): three COMPLETE trials (the ensemble tests need three) and one refused.
RUN = ["--epochs", "2", "--image-size", "32", "--limit", "200", "--pruner", "none", "--max-flops", "5e8"]


@dataclass
class StudyFiles:
    root: Path
    url: str
    name: str


@pytest.fixture(scope="session")
def finished(tmp_path_factory, cache_dir) -> StudyFiles:
    """The finished study, once per session, shared by pytest-xdist's workers too.

    Under xdist each worker has its own temp folder below a common one: the study is made in
    the common one, under a file lock, by whichever worker comes first.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    with (base / "report-study.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return finished_study(base)


def finished_study(base: Path) -> StudyFiles:
    """4 searched trials (synthetic, 32 px, 2 epochs; one refused by the FLOPs cap) plus a pruned
    and a failed one, added the way the loop records them (a search cannot be relied on to prune
    or fail within 4 trials)."""
    from agesearch.search.cli import main

    root = base / "report-study"
    files = StudyFiles(root, f"sqlite:///{root / 'studies' / (STUDY + '.db')}", STUDY)
    if (root / "ready").exists():
        return files
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", "--space", "arch", "--study", STUDY, "--storage", files.url, "--n-trials", "4", *RUN])
    assert rc == 0
    study = optuna.load_study(study_name=STUDY, storage=files.url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done, "the search should complete trials"
    template = done[0]
    history = {k: v[:1] for k, v in template.user_attrs["history"].items()}
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params=template.params,
            distributions=template.distributions,
            intermediate_values={0: history["val_objective"][0]},
            user_attrs={"model_config": template.user_attrs["model_config"], "history": history, "epochs_run": 1, "pruned_at_epoch": 0},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params=done[-1].params,
            distributions=done[-1].distributions,
            user_attrs={"model_config": done[-1].user_attrs["model_config"], "history": {}, "fail_reason": "ValueError: loss is NaN"},
        )
    )
    (root / "ready").write_text("ok")
    return files


def copy_study(files: StudyFiles, dest: Path) -> StudyFiles:
    """A private copy of the finished study (database and models) that a test may change."""
    from agesearch.search.store.artifacts import STORE_ATTR

    studies = dest / "studies"
    studies.mkdir(parents=True)
    src_db, dest_db = files.root / "studies" / f"{files.name}.db", studies / f"{files.name}.db"
    with contextlib.closing(sqlite3.connect(src_db)) as src, contextlib.closing(sqlite3.connect(dest_db)) as out:
        src.backup(out)  # a consistent copy even while other workers read the shared file
    shutil.copytree(files.root / "studies" / f"{files.name}-artifacts", studies / f"{files.name}-artifacts")
    copy = StudyFiles(dest, f"sqlite:///{dest_db}", files.name)
    optuna.load_study(study_name=copy.name, storage=copy.url).set_user_attr(STORE_ATTR, str(studies / f"{files.name}-artifacts"))
    return copy


def hand_made_study(url: str, name: str, *, multi: bool = False, n: int = 8) -> optuna.Study:
    """A study written without training: knobs of known values, values from a formula.

    `dropout` (discrete), `optimizer` (categorical) and `lr` (log, continuous) let the tests
    predict every ablation table row.
    """
    study = optuna.create_study(study_name=name, storage=url, directions=["minimize", "maximize"] if multi else ["minimize"])
    study.set_user_attr("agesearch", {"data": "synthetic", "images": 100, "image_size": 32, "split": [0.7, 0.15, 0.15], "seed": 0, "space": "hand", "objective": "multi" if multi else "combined"})
    dists = {
        "dropout": FloatDistribution(0.4, 0.7, step=0.1),
        "optimizer": CategoricalDistribution(["adam", "rmsprop"]),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
    }
    for i in range(n):
        params = {"dropout": [0.4, 0.5, 0.6, 0.7][i % 4], "optimizer": ["adam", "rmsprop"][i % 2], "lr": 1e-4 * 10 ** (2 * i / (n - 1))}
        mae = 10.0 + i
        acc = 0.6 + 0.03 * i if i % 3 else 0.95 - 0.01 * i
        objective = mae / 15 + (1 - acc) / 0.5
        history = {
            "loss": [2.0, 1.5, 1.2],
            "val_loss": [2.1, 1.7, 1.4],
            "age_mae": [20.0, 15.0, 12.0],
            "val_age_mae": [21.0, 16.0, mae],
            "gender_accuracy": [0.5, 0.6, 0.7],
            "val_gender_accuracy": [0.5, 0.55, acc],
            "val_objective": [objective + 1, objective + 0.5, objective],
        }
        attrs = {"objective": objective, "val_age_mae": mae, "val_gender_accuracy": acc, "best_epoch": 2, "epochs_run": 3, "seconds": 1.0 + i, "params": 1000, "history": history, "model_config": {"filters": [32, 64]}}
        study.add_trial(
            create_trial(
                values=[mae, acc] if multi else [objective],
                params=params,
                distributions=dists,
                intermediate_values={} if multi else {e: v for e, v in enumerate(history["val_objective"])},
                user_attrs=attrs,
            )
        )
    return study


def median(values: list[float]) -> float:
    s = sorted(v for v in values if not math.isnan(v))
    if not s:
        return math.nan
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
