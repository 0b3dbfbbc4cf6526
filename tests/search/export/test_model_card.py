"""The Markdown model card, from hand-made JSON cards (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from agesearch.search.export.model_card import SYNTHETIC_TERMS, UTKFACE_TERMS, data_terms, markdown_card
from agesearch.search.training.metrics import age_gender_metrics, group_metrics

AGE = np.array([5, 25, 25, 31, 64] * 8)
GENDER = np.array([0, 1, 0, 1, 1] * 8)
RACE = np.array([0, 0, 1, 2, 0] * 8)  # no Indian (3) nor Others (4)
PRED = AGE + np.tile([1.0, -2.0, 0.0, 3.0, -4.0], 8)
P_FEMALE = np.tile([0.2, 0.8, 0.6, 0.9, 0.3], 8)


def single_card(data: str) -> dict:
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "model_file": "best.keras",
        "input": {"image_size": 64},
        "study": {"name": "utk", "trial": 7, "preset": "baseline"},
        "model_config": {"age_head": "dldl"},
        "data": {"data": data, "images": 40, "fingerprint": "f" * 16, "image_size": 32, "seed": 0, "split_method": "grouped-phash",
                 "split_sizes": {"train": 100, "val": 20, "test": 40}, "synthetic_count": 1200 if data == "synthetic" else None},
        "training": {"searched": {"image_size": 32, "epochs": 6}, "trained": {"image_size": 64, "epochs": 20}, "trained_on": "train+val",
                     "seed": 3, "epochs_run": 20, "weights_from_epoch": 19, "params": 12345},
        "test_metrics": age_gender_metrics(AGE, GENDER, PRED, P_FEMALE),
        "test_metrics_by_group": group_metrics(AGE, GENDER, RACE, PRED, P_FEMALE, few=10) | {"split": "test"},
        "exports": [{"format": "litert", "file": "best.tflite", "inputs": [{"name": "image", "shape": [None, 64, 64, 3], "dtype": "float32"}],
                     "outputs": [{"name": "age", "shape": [None, 1], "dtype": "float32"}], "checked_with": None, "max_abs_diff": None,
                     "not_checked": "ai_edge_litert is not installed"}],
        "versions": {"keras": "3.15.1", "backend": "tensorflow"},
    }


@pytest.mark.parametrize("data, terms", [("/data/UTKFace", UTKFACE_TERMS), ("synthetic", SYNTHETIC_TERMS)])
def test_model_card_states_the_data_terms(data, terms):
    assert terms in data_terms({"data": data})
    md = markdown_card(single_card(data) | {})
    assert terms in md
    assert ("non-commercial research purposes only" in md) == (data != "synthetic")


def test_model_card_of_a_single_model_has_use_sizes_groups_and_files():
    md = markdown_card(single_card("/data/UTKFace"))
    assert md.startswith("# Model card: age and gender from a face crop (utk, trial 7)\n")
    assert "RGB 64 x 64 pixels in the 0-255 range" in md and "**Not for identifying anyone**" in md
    assert "Trial 7 (preset baseline) of study `utk`, retrained on train+val with seed 3." in md
    assert "| searched at | 32 px, 6 epochs |" in md and "| trained at | 64 px, 20 epochs (ran 20, weights of epoch 19) |" in md
    # Each race with its count; the empty ones said so, the small ones flagged, and the warning names them.
    assert "| White | 24 | " in md and "| Black | 8 | " in md and "| Asian | 8 | " in md
    assert "| Indian | 0 | – | – | no face in this split |" in md and "| Others | 0 | – | – | no face in this split |" in md
    assert "| 60-69 | 8 | 4.00 | 0.000 | few faces (< 10) |" in md
    assert "> **Warning:** few faces (fewer than 10) in decade 0-9 (8 faces), decade 30-39 (8 faces), decade 60-69 (8 faces)" in md
    assert "- `best.tflite`: litert, runs without agesearch or Keras; input `image` [None, 64, 64, 3] float32; outputs `age` [None, 1]; " \
           "not checked (ai_edge_litert is not installed)." in md


def test_model_card_without_a_test_split_says_so():
    card = single_card("synthetic")
    card["test_metrics"] = age_gender_metrics([], [], [], [])
    assert "The study has no test split (its fraction is 0): no test metrics." in markdown_card(card)
