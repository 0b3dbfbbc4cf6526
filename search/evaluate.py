"""Scoring a saved model: test-split metrics, `agesearch evaluate` and `agesearch predict`.

The model is an agesearch inference model (models/inference.py): input uint8-range RGB
images at its own size, outputs `age` in years and `gender` = P(female). Metrics are plain
NumPy/pandas on its predictions, so the numbers printed by `export` and `evaluate` are the same
computation.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from agesearch.search.datacheck import GENDERS, decade_label


def model_image_size(model) -> int:
    """The square input side the model expects."""
    shape = model.input_shape
    if isinstance(shape, list):  # a functional model with a list of inputs
        shape = shape[0]
    return int(shape[1])


def predict_arrays(model, images: np.ndarray, *, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(age in years, P(female)) per image, both (n,) float arrays."""
    if len(images) == 0:
        return np.zeros(0), np.zeros(0)
    out = model.predict(np.asarray(images), batch_size=batch_size, verbose=0)
    age = np.asarray(out["age"], dtype=float).reshape(-1)
    p_female = np.asarray(out["gender"], dtype=float).reshape(-1)
    return age, p_female


def metrics(true_age: np.ndarray, true_gender: np.ndarray, pred_age: np.ndarray, p_female: np.ndarray) -> dict:
    """Age MAE (overall and per true-age decade), gender accuracy and confusion matrix.

    Returns:
        dict with n, age_mae (years), per_decade_mae ({"0-9": mae, ...}), per_decade_n,
        gender_accuracy, confusion ({"labels": ["male", "female"], "matrix": rows = true,
        columns = predicted}).
    """
    import pandas as pd

    t = pd.DataFrame(
        {
            "age": np.asarray(true_age, dtype=float),
            "gender": np.asarray(true_gender, dtype=int),
            "err": np.abs(np.asarray(pred_age, dtype=float) - np.asarray(true_age, dtype=float)),
            "pred_gender": (np.asarray(p_female, dtype=float) >= 0.5).astype(int),
        }
    )
    # Decades as integers for grouping (so "100-109" sorts after "90-99"), labelled after.
    t["decade"] = (t["age"] // 10).astype(int)
    by_decade = t.groupby("decade")["err"].agg(["mean", "size"]).sort_index()
    confusion = pd.crosstab(t["gender"], t["pred_gender"]).reindex(index=[0, 1], columns=[0, 1], fill_value=0)
    n = len(t)
    return {
        "n": n,
        "age_mae": float(t["err"].mean()) if n else float("nan"),
        "per_decade_mae": {decade_label(10 * d): round(float(r["mean"]), 4) for d, r in by_decade.iterrows()},
        "per_decade_n": {decade_label(10 * d): int(r["size"]) for d, r in by_decade.iterrows()},
        "gender_accuracy": float((t["gender"] == t["pred_gender"]).mean()) if n else float("nan"),
        "confusion": {"labels": list(GENDERS), "rows": "true", "columns": "predicted", "matrix": confusion.to_numpy().astype(int).tolist()},
    }


def format_metrics(m: dict, title: str) -> str:
    """Terminal lines: MAE, per-decade table, gender accuracy, confusion matrix."""
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


def _load(path: Path):
    """Load a model file, or UsageError in one line."""
    from agesearch.search.cli import UsageError

    if not Path(path).is_file():
        raise UsageError(f"no model file at {path}")
    from agesearch.models.inference import load_model

    try:
        model = load_model(path)
    except Exception as e:  # not a .keras file, another Keras version, a training-only model...
        raise UsageError(f"cannot load {path} as a Keras model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    names = set(getattr(model, "output_names", None) or [])
    if not {"age", "gender"} <= names:
        raise UsageError(f"{path} is not an agesearch model (outputs {sorted(names)}, expected age and gender)")
    return model


def cmd_evaluate(args) -> int:
    """`agesearch evaluate`: metrics of a model on a folder of UTKFace-named images."""
    from agesearch.search.cli import UsageError
    from agesearch.search.data import DataError, list_faces, load_faces
    from agesearch.search.study_data import data_folder

    model = _load(args.model)
    size = model_image_size(model)
    try:
        folder = data_folder(args.data, cache_dir=args.cache_dir)
        files, malformed = list_faces(folder, limit=args.limit, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # counted below instead
            # The shared loader resizes whatever comes in to the model's size and caches it.
            ds = load_faces(folder, size, limit=args.limit, seed=0, cache_dir=args.cache_dir)
    except DataError as e:
        raise UsageError(str(e)) from None
    skipped = {"malformed_names": len(malformed), "unreadable_files": len(files) - len(ds)}
    age, p_female = predict_arrays(model, ds.images)
    m = metrics(ds.ages, ds.genders, age, p_female) | {"skipped": skipped, "model": str(args.model), "data": str(folder), "image_size": size}
    if args.json:
        print(json.dumps(m))
    else:
        print(format_metrics(m, f"evaluate {args.model} on {folder}"))
        print(f"  skipped: {skipped['malformed_names']} malformed name(s), {skipped['unreadable_files']} unreadable file(s)")
    return 0


def cmd_predict(args) -> int:
    """`agesearch predict`: age and gender per image; exit 1 if any image could not be read.

    A missing or unreadable image gets one `agesearch: error: PATH: ...` line on stderr; the
    other images are still predicted.
    """
    from agesearch.search.data import decode_image

    model = _load(args.model)
    size = model_image_size(model)
    images, paths, failed = [], [], 0
    for p in args.images:
        try:
            images.append(decode_image(Path(p), size))
            paths.append(p)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt/non-image files
            failed += 1
            reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot read as an image ({type(e).__name__})"
            print(f"agesearch: error: {p}: {reason}", file=sys.stderr)
    if images:
        age, p_female = predict_arrays(model, np.stack(images))
        rows = []
        for path, a, pf in zip(paths, age, p_female):
            gender = GENDERS[int(pf >= 0.5)]
            prob = pf if pf >= 0.5 else 1.0 - pf
            rows.append({"image": path, "age": round(float(a), 2), "gender": gender, "probability": round(float(prob), 4), "p_female": round(float(pf), 4)})
        for r in rows:
            if args.json:
                print(json.dumps(r))
            else:
                print(f"{r['image']}: age {r['age']:.1f}, {r['gender']} (p={r['probability']:.2f})")
    return 1 if failed else 0
