"""Scoring a saved model on images: `agesearch evaluate` and `agesearch predict` (search/cli.py).

The model is an agesearch inference model (models/inference.py): input uint8-range RGB
images at its own size, outputs `age` in years and `gender` = P(female). Predictions and metrics
come from search/training/metrics.py, so the numbers printed by `export`, `evaluate` and the report are
one computation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from agesearch.search.errors import UsageError
from agesearch.search.training.metrics import GENDERS, age_gender_metrics, model_image_size, predict_age_gender


def check_model_path(path: Path) -> Path:
    """A model path that can be loaded: an existing `.keras` file (checked before Keras loads)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no model file at {path}")
    if path.suffix != ".keras":
        raise UsageError(f"{path} is not a .keras file (Keras 3's format, written by `agesearch export`)")
    return path


def load_inference_model(path: Path):
    """Load an agesearch inference model, or UsageError in one line."""
    check_model_path(path)
    from agesearch.models.inference import load_model

    try:
        model = load_model(path)
    except Exception as e:  # not a .keras file, another Keras version, a training-only model...
        raise UsageError(f"cannot load {path} as a Keras model: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    names = set(getattr(model, "output_names", None) or [])
    if not {"age", "gender"} <= names:
        raise UsageError(f"{path} is not an agesearch model (outputs {sorted(names)}, expected age and gender)")
    return model


def evaluate_folder(model, folder: Path, *, limit: int | None = None, cache_dir: Path | None = None) -> dict:
    """`age_gender_metrics` of `model` on a folder, plus what was skipped and why.

    Raises:
        DataError: a missing folder or one without a readable UTKFace image.
    """
    from agesearch.search.data.images import list_faces, load_faces

    size = model_image_size(model)
    files, malformed = list_faces(folder, limit=limit, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counted below instead
        # The shared loader resizes whatever comes in to the model's size and caches it.
        ds = load_faces(folder, size, limit=limit, seed=0, cache_dir=cache_dir)
    skipped = {"malformed_names": len(malformed), "unreadable_files": len(files) - len(ds)}
    age, p_female = predict_age_gender(model, ds.images)
    return age_gender_metrics(ds.ages, ds.genders, age, p_female) | {"skipped": skipped, "data": str(folder), "image_size": size}


def predict_files(model, paths: list[str], *, detect_faces: bool = False) -> tuple[list[dict], list[str], str | None]:
    """Age and gender per image file, or per face with `detect_faces` (search/export/faces.py).

    Returns:
        (rows, errors, warning): one row per readable image (image, age in years, gender,
        probability of that gender, p_female), or per face found (image, face: 1, 2, ... left to
        right, box: x, y, w, h in the photo, angle: the eye line's slope undone, or None, then the
        same fields); one error line per file that could not be read, or in which no face was
        found; without `detect_faces`, one warning line naming the images that do not look like
        face crops (faces.looks_like_face_crop), else None.
    """
    from agesearch.search.data.images import decode_image
    from agesearch.search.export import faces

    size = model_image_size(model)
    images, meta, errors, not_crops = [], [], [], []
    for p in paths:
        try:
            if detect_faces:
                found = faces.find_faces(faces.read_photo(p))
            else:
                width, height = faces.image_size(p)
                image = decode_image(Path(p), size)
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt/non-image files
            reason = "no such file" if isinstance(e, FileNotFoundError) else f"cannot read as an image ({type(e).__name__})"
            errors.append(f"{p}: {reason}")
            continue
        if not detect_faces:
            images.append(image)
            meta.append({"image": p})
            if not faces.looks_like_face_crop(width, height):
                not_crops.append(f"{p} {width}x{height}")
            continue
        if not found:
            errors.append(f"{p}: no face found")
        for i, face in enumerate(found, 1):
            images.append(faces.resize_rgb(face.crop, size))
            meta.append({"image": p, "face": i, "box": dict(zip("xywh", face.box)), "angle": face.angle})
    warning = faces.not_a_crop_warning(not_crops, size)
    if not images:
        return [], errors, warning
    age, p_female = predict_age_gender(model, np.stack(images))
    rows = []
    for m, a, pf in zip(meta, age, p_female):
        prob = pf if pf >= 0.5 else 1.0 - pf
        rows.append(m | {"age": round(float(a), 2), "gender": GENDERS[int(pf >= 0.5)], "probability": round(float(prob), 4), "p_female": round(float(pf), 4)})
    return rows, errors, warning
