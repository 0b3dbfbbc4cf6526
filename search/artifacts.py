"""The best trial's model, kept under studies/<study>/best.keras while a search runs.

Only the best model is kept, not every trial's: each finished trial's file is either renamed
to best.keras (a new best by the combined objective) or deleted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

BEST_MODEL = "best.keras"
BEST_INFO = "best.json"


def models_dir(storage_url: str, study_name: str) -> Path:
    """studies/<study>/ next to a SQLite study file; studies/<study>/ in the CWD otherwise."""
    from agesearch.search.study import STUDIES_DIR, sqlite_path

    path = sqlite_path(storage_url)
    root = path.parent if path is not None else STUDIES_DIR
    return root / study_name


def best_model_path(storage_url: str, study_name: str) -> Path:
    return models_dir(storage_url, study_name) / BEST_MODEL


class BestModelKeeper:
    """Optuna callback: keep the finished trial's model file only if it is the best so far.

    "Best" is the lowest combined objective (user attr `objective`), which single- and
    multi-objective trials both record.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def current_best(self) -> float:
        info = self.directory / BEST_INFO
        if info.exists():
            return float(json.loads(info.read_text())["objective"])
        return float("inf")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        path = self.directory / f"trial-{trial.number}.keras"
        if not path.exists():
            return
        objective = trial.user_attrs.get("objective")
        if trial.state == TrialState.COMPLETE and objective is not None and objective < self.current_best():
            os.replace(path, self.directory / BEST_MODEL)
            tmp = self.directory / (BEST_INFO + ".tmp")
            tmp.write_text(json.dumps({"trial": trial.number, "objective": objective, "study": study.study_name}))
            os.replace(tmp, self.directory / BEST_INFO)
        else:
            path.unlink(missing_ok=True)
