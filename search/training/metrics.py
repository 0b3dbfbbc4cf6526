"""The numbers agesearch judges a model by, in one place.

- `Baselines` and `combined_objective`: the trivial predictors and the search's objective
  (training uses them per epoch; the study records the baselines).
- `predict_age_gender` and `age_gender_metrics`: a saved inference model's answers (age in
  years, P(female); models/inference.py) and what they score: overall and per-decade age MAE,
  gender accuracy, the gender confusion matrix. `export`, `evaluate` and the report all call
  these two, so the numbers they print are one computation.
- `group_metrics`: age MAE and gender accuracy per age decade, gender and race, each with its
  count, groups with few faces flagged (the model cards and the report's per-group table).

Plain NumPy at import: Keras comes in only with the model a caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agesearch.search.data.images import GENDERS, RACES, decade_label  # noqa: F401  (part of the metrics' vocabulary)


@dataclass(frozen=True)
class Baselines:
    """The trivial predictors, fitted on train and scored on val."""

    median_age: float  # train median age, years
    majority_gender: int  # train majority gender
    mae_trivial: float  # val MAE of always predicting median_age, years
    error_trivial: float  # val error rate of always predicting majority_gender
    age_scale: float  # the model learns age / age_scale (train mean age)

    @classmethod
    def fit(cls, train_ages: np.ndarray, train_genders: np.ndarray, val_ages: np.ndarray, val_genders: np.ndarray) -> "Baselines":
        median = float(np.median(train_ages))
        majority = int(np.mean(train_genders) >= 0.5)
        return cls(
            median_age=median,
            majority_gender=majority,
            mae_trivial=max(float(np.mean(np.abs(val_ages - median))), 1e-6),
            error_trivial=max(float(np.mean(val_genders != majority)), 1e-6),
            age_scale=max(float(np.mean(train_ages)), 1.0),
        )


def combined_objective(val_age_mae: float, val_gender_accuracy: float, b: Baselines) -> float:
    """`val_age_mae / mae_trivial + val_gender_error / error_trivial`, minimised.

    Each term is the share of the trivial predictor's error that is left: 2.0 means no better
    than predicting the train median age and majority gender, 0.0 would be perfect.
    """
    return val_age_mae / b.mae_trivial + (1.0 - val_gender_accuracy) / b.error_trivial


def model_image_size(model) -> int:
    """The square input side a model expects."""
    shape = model.input_shape
    if isinstance(shape, list):  # a functional model with a list of inputs
        shape = shape[0]
    return int(shape[1])


def predict_age_gender(model, images: np.ndarray, *, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """An inference model's answers: (age in years, P(female)) per image, both (n,) floats.

    Args:
        model: an agesearch inference model (outputs `age` and `gender`).
        images: (n, size, size, 3) RGB in the 0-255 range, at the model's input size.
        batch_size: images per forward pass.
    """
    if len(images) == 0:
        return np.zeros(0), np.zeros(0)
    out = model.predict(np.asarray(images), batch_size=batch_size, verbose=0)
    age = np.asarray(out["age"], dtype=float).reshape(-1)
    p_female = np.asarray(out["gender"], dtype=float).reshape(-1)
    return age, p_female


def per_decade_mae(true_age: np.ndarray, pred_age: np.ndarray) -> tuple[dict[str, float], dict[str, int]]:
    """Age MAE per decade of the true age, and the count per decade, ordered by decade."""
    true_age = np.asarray(true_age, dtype=float)
    err = np.abs(np.asarray(pred_age, dtype=float) - true_age)
    decade = (true_age // 10).astype(int)
    maes, counts = {}, {}
    for d in np.unique(decade):  # sorted as integers, so "100-109" comes after "90-99"
        mask = decade == d
        maes[decade_label(10 * d)] = round(float(err[mask].mean()), 4)
        counts[decade_label(10 * d)] = int(mask.sum())
    return maes, counts


def gender_confusion(true_gender: np.ndarray, p_female: np.ndarray) -> list[list[int]]:
    """2x2 counts, rows the true gender, columns the predicted one (P(female) >= 0.5), male first."""
    true_gender = np.asarray(true_gender, dtype=int)
    pred = (np.asarray(p_female, dtype=float) >= 0.5).astype(int)
    return [[int(((true_gender == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def age_gender_metrics(true_age: np.ndarray, true_gender: np.ndarray, pred_age: np.ndarray, p_female: np.ndarray) -> dict:
    """Age MAE (overall and per true-age decade), gender accuracy and confusion matrix.

    Returns:
        dict with n, age_mae (years), per_decade_mae ({"0-9": mae, ...}), per_decade_n,
        gender_accuracy, confusion ({"labels": ["male", "female"], "matrix": rows = true,
        columns = predicted}). With no images, the MAE and accuracy are NaN.
    """
    true_age = np.asarray(true_age, dtype=float)
    true_gender = np.asarray(true_gender, dtype=int)
    n = len(true_age)
    err = np.abs(np.asarray(pred_age, dtype=float) - true_age)
    pred_gender = (np.asarray(p_female, dtype=float) >= 0.5).astype(int)
    maes, counts = per_decade_mae(true_age, pred_age)
    return {
        "n": n,
        "age_mae": float(err.mean()) if n else float("nan"),
        "per_decade_mae": maes,
        "per_decade_n": counts,
        "gender_accuracy": float((pred_gender == true_gender).mean()) if n else float("nan"),
        "confusion": {"labels": list(GENDERS), "rows": "true", "columns": "predicted", "matrix": gender_confusion(true_gender, p_female)},
    }


# Below this many faces a group's numbers are flagged: an age MAE over 30 faces still moves by
# about a year from one sample of faces to another (the errors' spread is several years).
FEW_FACES = 30
GROUP_KINDS = ("decade", "gender", "race")


def group_metrics(true_age, true_gender, race, pred_age, p_female, *, few: int = FEW_FACES) -> dict:
    """Age MAE and gender accuracy per group of faces: per decade of true age, per true gender
    and per race (UTKFace's codes 0-4), each with its count.

    Args:
        true_age, true_gender, race: the labels, (n,) each (gender 1 = female; race 0-4, RACES;
            race None: no race table).
        pred_age, p_female: the model's answers, (n,) each.
        few: groups with fewer faces than this are listed in `few`.

    Returns:
        {"n", "few_faces_below", "decade": {"0-9": row, ...} (the decades present, in order),
        "gender": {"male": row, "female": row}, "race": {"White": row, ...} (all five),
        "few": ["race Others (12 faces)", ...]}, each row {"n", "age_mae", "gender_accuracy"}
        (None for an empty group). Every gender and race is listed, an empty one with n 0.
    """
    true_age = np.asarray(true_age, dtype=float)
    true_gender = np.asarray(true_gender, dtype=int)
    err = np.abs(np.asarray(pred_age, dtype=float) - true_age)
    right = (np.asarray(p_female, dtype=float) >= 0.5).astype(int) == true_gender

    def row(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        return {"n": n, "age_mae": round(float(err[mask].mean()), 4) if n else None, "gender_accuracy": round(float(right[mask].mean()), 4) if n else None}

    decade = (true_age // 10).astype(int)
    out = {
        "n": len(true_age),
        "few_faces_below": few,
        "decade": {decade_label(10 * d): row(decade == d) for d in np.unique(decade)},
        "gender": {name: row(true_gender == code) for code, name in enumerate(GENDERS)},
    }
    if race is not None:
        race = np.asarray(race, dtype=int)
        out["race"] = {name: row(race == code) for code, name in enumerate(RACES)}
    out["few"] = [f"{kind} {group} ({r['n']} face{'' if r['n'] == 1 else 's'})" for kind in GROUP_KINDS for group, r in out.get(kind, {}).items() if r["n"] < few]
    return out


def group_rows(groups: dict) -> list[tuple[str, str, int, float | None, float | None, bool]]:
    """`group_metrics` as table rows: (kind, group, n, age MAE, gender accuracy, few faces)."""
    few = groups.get("few_faces_below", FEW_FACES)
    return [(kind, group, r["n"], r["age_mae"], r["gender_accuracy"], r["n"] < few) for kind in GROUP_KINDS for group, r in groups.get(kind, {}).items()]


def format_metrics(m: dict, title: str) -> str:
    """Terminal lines of `age_gender_metrics`: MAE, per-decade table, accuracy, confusion matrix."""
    lines = [
        f"{title}: {m['n']} images",
        f"  age MAE {m['age_mae']:.2f} years; gender accuracy {m['gender_accuracy']:.3f}",
        "  age MAE per decade (true age):",
    ]
    for label, mae in m["per_decade_mae"].items():
        lines.append(f"    {label:>8} {m['per_decade_n'][label]:>6} images  MAE {mae:6.2f}")
    c = m["confusion"]["matrix"]
    lines += [
        "  gender confusion (rows true, columns predicted):",
        f"    {'':>8} {'male':>7} {'female':>7}",
        f"    {'male':>8} {c[0][0]:>7} {c[0][1]:>7}",
        f"    {'female':>8} {c[1][0]:>7} {c[1][1]:>7}",
    ]
    return "\n".join(lines)
