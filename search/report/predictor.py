"""`agesearch.load_model(path)`: an exported model that predicts from arrays or image files.

`Predictor.predict` takes what a user has at hand (file paths, one or many, of any size; or
RGB arrays) and returns one row per image in a pandas DataFrame. Files are decoded and resized
exactly as `agesearch predict` does (data/images.py `decode_image`: RGB, bilinear to the
model's input side); the numbers come from training/metrics.py `predict_age_gender`, the one
computation behind `export`, `evaluate` and `predict`.
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

    def predict(self, images, *, batch_size: int = 128):
        """Age and gender of each image, one row per image in the order given.

        Args:
            images: an image file (str or Path) or a list of them, any size and mode (decoded
                to RGB and resized to `image_size`, bilinear, as `agesearch predict` does); or
                an array (n, H, W, 3) or (H, W, 3) of RGB values 0-255, uint8 or float (resized
                the same way, through uint8, when H and W are not `image_size`).
            batch_size: images per forward pass.

        Returns:
            A pandas DataFrame with the columns `image` (file inputs only: the path as given),
            `age` (years, float), `gender` ("female" or "male": UTKFace's binary label),
            `p_female` (the model's P(female)) and `probability` (of the gender given).

        Raises:
            DataError: a file that is missing or not an image (all such files named), or an
                array that is not RGB images.
        """
        import pandas as pd

        from agesearch.search.data.images import GENDERS
        from agesearch.search.training.metrics import predict_age_gender

        files = _as_files(images)
        x = self._decode(files) if files is not None else self._arrays(images)
        age, p_female = predict_age_gender(self.model, x, batch_size=batch_size)
        frame = pd.DataFrame({
            "age": age,
            "gender": [GENDERS[int(p >= 0.5)] for p in p_female],
            "p_female": p_female,
            "probability": np.where(p_female >= 0.5, p_female, 1.0 - p_female),
        }, columns=COLUMNS)
        if files is not None:
            frame.insert(0, "image", [str(f) for f in files])
        return frame

    def _decode(self, files: list) -> np.ndarray:
        from agesearch.search.data.images import decode_image

        decoded, bad = [], []
        for f in files:
            try:
                decoded.append(decode_image(Path(f), self.image_size))
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt/non-image files
                bad.append(f"{f} ({'no such file' if isinstance(e, FileNotFoundError) else 'not an image'})")
        if bad:
            raise DataError(f"cannot read {len(bad)} image file(s): {', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}")
        return np.stack(decoded) if decoded else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def _arrays(self, images) -> np.ndarray:
        x = np.asarray(images)
        shape = x.shape
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"images must be file paths or an RGB array (n, H, W, 3) or (H, W, 3) of numbers 0-255; got shape {shape}, dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            warnings.warn("the images' values are all <= 1: the model expects RGB values 0-255 (multiply by 255)", stacklevel=3)
        if x.shape[1:3] == (self.image_size, self.image_size):
            return x
        return np.stack([_resize(im, self.image_size) for im in x]) if len(x) else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)


def _as_files(images) -> list | None:
    """The inputs as a list of file paths, or None for arrays."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, np.ndarray) and all(isinstance(i, (str, os.PathLike)) for i in images):
        return list(images)
    return None


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """One RGB image to `size` square, as a file is (data/images.py decode_image: PIL, bilinear)."""
    from PIL import Image

    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_predictor(path: str | Path) -> Predictor:
    """Load an exported agesearch model (`.keras`) as a Predictor.

    Raises:
        UsageError: no such file, not a .keras file, or not an agesearch model; one line.
    """
    from agesearch.search.frameworks import import_keras_quietly
    from agesearch.search.report.evaluate import load_inference_model

    import_keras_quietly()
    return Predictor(load_inference_model(Path(path)), path)
