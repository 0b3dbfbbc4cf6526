"""search/training/metrics.py: the numbers per group of faces, on hand-made arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agesearch.search.training.metrics import group_metrics, group_rows

# Six faces: ages 5, 8 (0-9), 25 (20-29), 31, 33, 39 (30-39); genders m f m f f m; races 0 0 1 2 2 0.
TRUE_AGE = np.array([5, 8, 25, 31, 33, 39])
TRUE_GENDER = np.array([0, 1, 0, 1, 1, 0])
RACE = np.array([0, 0, 1, 2, 2, 0])
PRED_AGE = np.array([7.0, 8.0, 20.0, 31.0, 36.0, 39.0])  # errors 2 0 5 0 3 0
P_FEMALE = np.array([0.1, 0.9, 0.7, 0.6, 0.4, 0.2])  # right, right, wrong, right, wrong, right


def test_group_metrics_counts_and_scores_each_decade_gender_and_race():
    g = group_metrics(TRUE_AGE, TRUE_GENDER, RACE, PRED_AGE, P_FEMALE, few=3)
    assert g["n"] == 6 and g["few_faces_below"] == 3
    assert g["decade"] == {
        "0-9": {"n": 2, "age_mae": 1.0, "gender_accuracy": 1.0},
        "20-29": {"n": 1, "age_mae": 5.0, "gender_accuracy": 0.0},
        "30-39": {"n": 3, "age_mae": 1.0, "gender_accuracy": pytest.approx(2 / 3, abs=1e-4)},
    }
    assert g["gender"] == {
        "male": {"n": 3, "age_mae": pytest.approx(7 / 3, abs=1e-4), "gender_accuracy": pytest.approx(2 / 3, abs=1e-4)},
        "female": {"n": 3, "age_mae": 1.0, "gender_accuracy": pytest.approx(2 / 3, abs=1e-4)},
    }
    # All five of UTKFace's races are listed, in code order; an empty one has no numbers.
    assert list(g["race"]) == ["White", "Black", "Asian", "Indian", "Others"]
    assert g["race"]["White"] == {"n": 3, "age_mae": pytest.approx(2 / 3, abs=1e-4), "gender_accuracy": 1.0}
    assert g["race"]["Black"] == {"n": 1, "age_mae": 5.0, "gender_accuracy": 0.0}
    assert g["race"]["Asian"] == {"n": 2, "age_mae": 1.5, "gender_accuracy": 0.5}
    assert g["race"]["Indian"] == g["race"]["Others"] == {"n": 0, "age_mae": None, "gender_accuracy": None}
    assert g["few"] == ["decade 0-9 (2 faces)", "decade 20-29 (1 face)", "race Black (1 face)", "race Asian (2 faces)", "race Indian (0 faces)", "race Others (0 faces)"]
    json.dumps(g, allow_nan=False)  # plain JSON: no NaN for an empty group


def test_group_metrics_without_race_and_the_rows_of_its_table():
    g = group_metrics(TRUE_AGE, TRUE_GENDER, None, PRED_AGE, P_FEMALE)
    assert "race" not in g and g["few_faces_below"] == 30
    rows = group_rows(g)
    assert [r[:3] for r in rows] == [("decade", "0-9", 2), ("decade", "20-29", 1), ("decade", "30-39", 3), ("gender", "male", 3), ("gender", "female", 3)]
    assert all(r[5] for r in rows)  # every group is below 30 faces


def test_group_metrics_of_no_faces():
    g = group_metrics([], [], [], [], [])
    assert g["n"] == 0 and g["decade"] == {} and g["gender"]["male"] == {"n": 0, "age_mae": None, "gender_accuracy": None}
