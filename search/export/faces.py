"""Faces in photos: `agesearch predict --detect-faces` and `Predictor.predict(..., detect_faces=True)`.

The models are trained on UTKFace, whose images are aligned face crops; a user's photo is not.
This module finds every face in a photo, aligns it as UTKFace's crops are aligned and crops it,
so that the model sees what it was trained on.

The detector is OpenCV's Haar cascades (frontal face "alt2", and the eye cascade for the
alignment), whose XML weights ship inside the opencv-python-headless wheel (`cv2.data.haarcascades`):
nothing is downloaded at run time, and it runs beside any Keras backend. It is an optional extra,
`pip install "agesearch[faces]"`, imported here only. OpenCV 5 moved the cascades out of the main
package, hence `opencv-python-headless<5`. Measured against the alternatives (issue 23):

- Haar alt2: both faces of two NASA astronaut portraits side by side (1024x512) in 0.22 s on one
  CPU core, no box on 20 noise images (640x480); 582/600 UTKFace crops found (each padded by half
  its side, so the whole face is in view), 5-8 ms a 128 px crop; the wheel is 62 MB, 162 MB installed.
  The default frontal cascade found fewer (575/600) and was slower; the pip wheel ships no LBP cascade.
- MTCNN (`mtcnn` 1.0, weights in the package, 11 MB with its dependencies): 99/100 UTKFace crops
  and eye landmarks, but 0.1-0.4 s an image, and it is TensorFlow code built on `tf.keras`: under
  `KERAS_BACKEND=jax` it fails (`'ArrayImpl' object has no attribute 'numpy'`), and it loads its
  weights with joblib (a pickle), looking first in the current folder.
- MediaPipe 1.2.3: its wheel ships no face-detector model (the Tasks API takes a downloaded
  .tflite file), and it pulls matplotlib, sounddevice and opencv-contrib-python (OpenCV 5, GUI).

Alignment, as UTKFace's crops are made: the photo is turned about the face so that the eyes are
level (when the eye cascade finds one eye in each half of the upper face box), then a square is cut
around the face box. Its size and place were measured with the same detector on 600 UTKFace crops
(utkface-5k, each padded by half its side in grey): the face box's width is a median 1.023 times
the crop's side (p10-p90 0.93-1.11), and its centre lies at (0.49, 0.41) of the crop, so the crop's
side is the box's width / 1.023 and its centre is 0.09 of that side below the box's centre (the crop
holds the chin, the box the forehead). Outside the photo the crop is black, as UTKFace's are.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agesearch.search.errors import UsageError

INSTALL_HINT = 'face detection needs OpenCV\'s Haar cascades; install them with: pip install "agesearch[faces]" (opencv-python-headless<5)'
FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
EYE_CASCADE = "haarcascade_eye.xml"
SCALE_FACTOR = 1.1  # the cascade's image pyramid step
MIN_NEIGHBORS = 5  # overlapping hits a face needs (OpenCV's usual value; at 3 the "alt" cascade boxed the astronaut's suit)
MIN_FACE = 30  # pixels, at the size detection runs at: smaller faces are too small to tell an age
DETECT_MAX_SIDE = 1600  # larger photos are searched scaled down to this (boxes mapped back): a phone photo in < 1 s
BOX_PER_CROP = 1.023  # the face box's width over the UTKFace crop's side (median of 582 crops)
CROP_SHIFT = 0.09  # the crop's centre lies this fraction of its side below the face box's centre
MAX_EYE_ANGLE = 30.0  # degrees; a steeper eye line is a false eye (the frontal cascade finds faces to about 15)

# Without --detect-faces, an image is taken for a face crop when it is square-ish and not large:
# UTKFace's crops are 200 px squares (the sets made from it, smaller squares). A photo, a screenshot
# or a group picture is usually wider than 5:4 or larger than 800 px on its short side.
MAX_CROP_ASPECT = 1.25
MAX_CROP_SIDE = 800


@dataclass(frozen=True)
class Face:
    """One face found in a photo."""

    box: tuple[int, int, int, int]  # x, y, width, height of the detector's box, in the photo's pixels
    angle: float | None  # degrees the eye line sloped (clockwise; undone in `crop`); None: eyes not both found, not turned
    crop: np.ndarray  # the aligned square RGB crop (uint8), at the photo's resolution


def import_cv2():
    """OpenCV with its Haar cascades, or UsageError with the install hint (one line)."""
    try:
        import cv2
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    if not hasattr(cv2, "CascadeClassifier") or not (Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / FACE_CASCADE).is_file():
        raise UsageError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved them out); {INSTALL_HINT}")
    return cv2


@functools.cache
def _cascades():
    cv2 = import_cv2()
    return tuple(cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / name)) for name in (FACE_CASCADE, EYE_CASCADE))


def find_faces(photo: np.ndarray) -> list[Face]:
    """Every frontal face in an RGB photo (H, W, 3) uint8, numbered left to right, aligned and cropped."""
    cv2 = import_cv2()
    face_cascade, eye_cascade = _cascades()
    gray = cv2.cvtColor(np.ascontiguousarray(photo, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes = face_cascade.detectMultiScale(gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE, MIN_FACE))
    faces = []
    for x, y, w, h in sorted(tuple(int(v) for v in b) for b in boxes):
        angle = _eye_angle(eye_cascade, gray[y:y + h * 6 // 10, x:x + w], w)
        box = tuple(int(round(v / scale)) for v in (x, y, w, h))
        faces.append(Face(box, angle, align_crop(photo, box, angle)))
    return faces


def _eye_angle(eye_cascade, upper_face: np.ndarray, width: int) -> float | None:
    """The slope of the eye line in degrees (clockwise, image y down), from the largest eye found in
    each half of the upper face; None without an eye in each half, or for a slope over MAX_EYE_ANGLE."""
    eyes = eye_cascade.detectMultiScale(upper_face, scaleFactor=1.1, minNeighbors=3, minSize=(max(8, width // 10),) * 2)
    centres = [(ex + ew / 2, ey + eh / 2, ew) for ex, ey, ew, eh in eyes]
    left = [c for c in centres if c[0] < width / 2]
    right = [c for c in centres if c[0] >= width / 2]
    if not left or not right:
        return None
    (lx, ly, _), (rx, ry, _) = max(left, key=lambda c: c[2]), max(right, key=lambda c: c[2])
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    return round(angle, 2) if abs(angle) <= MAX_EYE_ANGLE else None


def align_crop(photo: np.ndarray, box: tuple[int, int, int, int], angle: float | None) -> np.ndarray:
    """The UTKFace-like square crop of the face in `box`: turned by `angle` so the eyes are level,
    side = box width / BOX_PER_CROP, centre CROP_SHIFT of a side below the box's; black outside the photo."""
    cv2 = import_cv2()
    x, y, w, h = box
    side = max(1, int(round(w / BOX_PER_CROP)))
    t = math.radians(angle or 0.0)
    cos, sin = math.cos(t), math.sin(t)
    # The crop's centre, moved down the face (its "down" is turned by the angle too); pixel centres at integers.
    cx = x + (w - 1) / 2 - sin * CROP_SHIFT * side
    cy = y + (h - 1) / 2 + cos * CROP_SHIFT * side
    half = (side - 1) / 2
    # Crop pixel (u, v) samples the photo at centre + R(t) (u - half, v - half): the crop's axes along the eye line.
    to_photo = np.array([[cos, -sin, cx - cos * half + sin * half], [sin, cos, cy - sin * half - cos * half]])
    return cv2.warpAffine(np.ascontiguousarray(photo, dtype=np.uint8), to_photo, (side, side),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def read_photo(path: str | Path) -> np.ndarray:
    """A photo as RGB uint8 at full size, turned upright by its EXIF orientation (as a viewer shows it,
    so the boxes are in the picture the user sees). Raises PIL's OSError/ValueError for a bad file."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB image to `size` square as a file is decoded for the model (data/images.py: PIL, bilinear)."""
    from PIL import Image

    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if pixels.shape[:2] == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def looks_like_face_crop(width: int, height: int) -> bool:
    """Whether an image of this size can be a face crop like UTKFace's: at most 5:4 and at most
    MAX_CROP_SIDE px on its short side. A cheap rule, on the size alone (no detector, no decoding)."""
    short, long = sorted((width, height))
    return long <= MAX_CROP_ASPECT * short and short <= MAX_CROP_SIDE


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def not_a_crop_warning(images: list[str], model_size: int) -> str | None:
    """One line for the images that do not look like face crops ("name WxH"), or None when all do."""
    if not images:
        return None
    shown = ", ".join(images[:3]) + (", ..." if len(images) > 3 else "")
    return (f"{len(images)} image(s) do not look like face crops ({shown}): each is squashed whole to the model's "
            f"{model_size}x{model_size} input; pass --detect-faces (Python: detect_faces=True) to find, align and crop every face")
