"""`agesearch.load_model(path)`: an exported model that predicts from arrays or image files.

`Predictor.predict` takes what a user has at hand (file paths, one or many, of any size; or
RGB arrays) and returns one row per image in a pandas DataFrame. Files are decoded and resized
exactly as `agesearch predict` does (data/images.py `decode_image`: RGB, bilinear to the
model's input side); the numbers come from training/metrics.py `predict_age_gender`, the one
computation behind `export`, `evaluate` and `predict`. With `detect_faces=True`, each photo's faces
are found, aligned and cropped first (export/faces.py, as `agesearch predict --detect-faces`), one
row per face.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agesearch.search.errors import DataError

COLUMNS = ["age", "gender", "p_female", "probability"]


class Predictor:
    """An agesearch model ready to predict ages and genders.

    Attributes:
        model: the Keras model: input RGB images in the 0-255 range at `image_size` pixels square,
            outputs {"age": years, "gender": P(female)}.
        image_size: the model's square input side.
        path: the model file.
        card: the JSON model card written beside it by `export` (`model.json`), or None.
    """

    def __init__(self, model, path: str | Path | None = None):
        from agesearch.search.training.metrics import model_image_size

        self.model = model
        self.image_size = model_image_size(model)
        self.path = None if path is None else Path(path)
        card = None if self.path is None else self.path.with_suffix(".json")
        self.card = json.loads(card.read_text()) if card is not None and card.is_file() else None

    def __repr__(self) -> str:
        return f"Predictor({str(self.path) if self.path else self.model.name!r}, image_size={self.image_size})"

    def predict(self, images, *, detect_faces: bool = False, batch_size: int = 128):
        """Age and gender of each image (one row per image, in the order given), or of each face.

        Args:
            images: an image file (str or Path) or a list of them, any size and mode (decoded
                to RGB and resized to `image_size`, bilinear, as `agesearch predict` does); or
                an array (n, H, W, 3) or (H, W, 3) of RGB values 0-255, uint8 or float (resized
                the same way, through uint8, when H and W are not `image_size`).
            detect_faces: find every face of each photo, turn it so that its eyes are level, crop
                it as UTKFace's crops are and predict it (`agesearch predict --detect-faces`;
                OpenCV's Haar cascades: `pip install "agesearch[faces]"`). One row per face; a
                photo without a face gets no row, and one warning names them all.
            batch_size: images per forward pass.

        Returns:
            A pandas DataFrame with the columns `image` (file inputs: the path as given; with
            `detect_faces` and arrays: the image's index), `age` (years, float), `gender`
            ("female" or "male": UTKFace's binary label), `p_female` (the model's P(female)) and
            `probability` (of the gender given). With `detect_faces` also `face` (1, 2, ... left
            to right in its photo), the face's box in the photo `x`, `y`, `w`, `h` (pixels), and
            `angle` (degrees the eye line sloped, undone in the crop; NaN when the eyes were not
            both found), after `image`. Without it, images that do not look like face crops
            (wider than 5:4 or over 800 px on the short side) get one UserWarning.

        Raises:
            DataError: a file that is missing or not an image (all such files named), or an
                array that is not RGB images.
            UsageError: `detect_faces` without OpenCV (the install hint).
        """
        import pandas as pd

        from agesearch.search.data.images import GENDERS
        from agesearch.search.training.metrics import predict_age_gender

        files = _as_files(images)
        if detect_faces:
            x, meta = self._faces(files if files is not None else list(self._check_arrays(images)), files is not None)
        else:
            x = self._decode(files) if files is not None else self._arrays(images)
            meta = pd.DataFrame({"image": [str(f) for f in files]}) if files is not None else pd.DataFrame(index=range(len(x)))
        age, p_female = predict_age_gender(self.model, x, batch_size=batch_size)
        frame = pd.DataFrame({
            "age": age,
            "gender": [GENDERS[int(p >= 0.5)] for p in p_female],
            "p_female": p_female,
            "probability": np.where(p_female >= 0.5, p_female, 1.0 - p_female),
        }, columns=COLUMNS)
        return pd.concat([meta.reset_index(drop=True), frame], axis=1)

    def _faces(self, photos: list, from_files: bool):
        """The aligned crops of every face of each photo (files or arrays) at `image_size`, and a frame
        of (image, face, x, y, w, h, angle) per crop; one warning names the photos without a face."""
        import pandas as pd

        from agesearch.search.export import faces

        faces.import_cv2()
        crops, rows, none, bad = [], [], [], []
        for i, photo in enumerate(photos):
            name = str(photo) if from_files else i
            try:
                pixels = faces.read_photo(photo) if from_files else np.clip(np.rint(photo), 0, 255).astype(np.uint8)
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt/non-image files
                bad.append(f"{photo} ({'no such file' if isinstance(e, FileNotFoundError) else 'not an image'})")
                continue
            found = faces.find_faces(pixels)
            if not found:
                none.append(str(name))
            for k, face in enumerate(found, 1):
                crops.append(faces.resize_rgb(face.crop, self.image_size))
                rows.append((name, k, *face.box, np.nan if face.angle is None else face.angle))
        if bad:
            raise DataError(f"cannot read {len(bad)} image file(s): {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
        if none:
            warnings.warn(f"no face found in {len(none)} image(s): {', '.join(none[:5])}{', ...' if len(none) > 5 else ''}", stacklevel=3)
        x = np.stack(crops) if crops else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return x, pd.DataFrame(rows, columns=["image", "face", "x", "y", "w", "h", "angle"])

    def _decode(self, files: list) -> np.ndarray:
        from agesearch.search.data.images import decode_image
        from agesearch.search.export.faces import image_size, looks_like_face_crop, not_a_crop_warning

        decoded, bad, not_crops = [], [], []
        for f in files:
            try:
                width, height = image_size(f)
                decoded.append(decode_image(Path(f), self.image_size))
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt/non-image files
                bad.append(f"{f} ({'no such file' if isinstance(e, FileNotFoundError) else 'not an image'})")
                continue
            if not looks_like_face_crop(width, height):
                not_crops.append(f"{f} {width}x{height}")
        if bad:
            raise DataError(f"cannot read {len(bad)} image file(s): {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
        if (warning := not_a_crop_warning(not_crops, self.image_size)) is not None:
            warnings.warn(warning, stacklevel=3)
        return np.stack(decoded) if decoded else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def _arrays(self, images) -> np.ndarray:
        from agesearch.search.export.faces import looks_like_face_crop, not_a_crop_warning, resize_rgb

        x = self._check_arrays(images)
        if len(x) and not looks_like_face_crop(x.shape[2], x.shape[1]):
            warnings.warn(not_a_crop_warning([f"{len(x)} array(s) {x.shape[2]}x{x.shape[1]}"], self.image_size), stacklevel=3)
        if x.shape[1:3] == (self.image_size, self.image_size):
            return x
        return np.stack([resize_rgb(im, self.image_size) for im in x]) if len(x) else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def _check_arrays(self, images) -> np.ndarray:
        x = np.asarray(images)
        shape = x.shape
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"images must be file paths or an RGB array (n, H, W, 3) or (H, W, 3) of numbers 0-255; got shape {shape}, dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            warnings.warn("the images' values are all <= 1: the model expects RGB values 0-255 (multiply by 255)", stacklevel=4)
        return x


def _as_files(images) -> list | None:
    """The inputs as a list of file paths, or None for arrays."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, np.ndarray) and all(isinstance(i, (str, os.PathLike)) for i in images):
        return list(images)
    return None


def load_predictor(path: str | Path) -> Predictor:
    """Load an exported agesearch model (`.keras`) as a Predictor.

    Raises:
        UsageError: no such file, not a .keras file, or not an agesearch model; one line.
    """
    from agesearch.search.frameworks import import_keras_quietly
    from agesearch.search.export.evaluate import load_inference_model

    import_keras_quietly()
    return Predictor(load_inference_model(Path(path)), path)
