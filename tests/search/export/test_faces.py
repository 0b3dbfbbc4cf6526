"""Faces in photos: `agesearch predict --detect-faces`, `predict(..., detect_faces=True)`, and the
warning for images that are not face crops.

The repository ships no face photo: the real faces are the NASA astronaut portrait (Eileen Collins,
public domain) inside the scikit-image wheel, `skimage.data.astronaut()`, put twice side by side
into a picture in the test's folder. The model is a tiny untrained one: the tests check rows,
boxes and lines, not ages.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from agesearch.search.errors import UsageError
from agesearch.search.export import faces
from conftest import run_cli

# In the test extra, so CI runs them; the size rule and the install hint need no OpenCV.
needs_opencv = pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason='the face tests need the faces extra: pip install "agesearch[faces]"')

# The astronaut's face box (x, y, w, h) in skimage.data.astronaut() (512x512) by the alt2 cascade.
ASTRONAUT_BOX = (177, 65, 98, 98)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small inference model saved as `export` saves one (untrained: only rows and boxes are checked)."""
    import keras

    from agesearch.models import ModelConfig, build_model
    from agesearch.models.inference import inference_model

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(image_size=16, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_dense=16, gender_dense=16)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    inference_model(build_model(cfg), cfg, age_scale=30.0).save(path)
    return path


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="the astronaut photo ships in scikit-image (the test extra)")
    return data.astronaut()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut):
    """two.png: the astronaut and her mirror image side by side (1024x512); noise.png: no face (640x480)."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)).save(root / "two.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(root / "noise.png")
    return root


def _near(box, expected, tol=6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, expected))


@needs_opencv
def test_faces_predict_detect_faces_on_a_picture_of_two_faces_gives_two_rows_with_their_boxes(model_file, photos, capsys):
    two = str(photos / "two.png")
    code, out, err = run_cli(["predict", "--model", str(model_file), "--detect-faces", two], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and err == "" and len(lines) == 2
    assert lines[0].startswith(f"{two} face 1 (x=") and lines[1].startswith(f"{two} face 2 (x=") and all(" (p=" in l for l in lines)
    code, out, _ = run_cli(["predict", "--model", str(model_file), "--detect-faces", "--json", two], capsys)
    rows = [json.loads(l) for l in out.strip().splitlines()]
    assert code == 0 and [r["face"] for r in rows] == [1, 2] and all(r["image"] == two for r in rows)
    assert {"box", "angle", "age", "gender", "probability", "p_female"} <= set(rows[0])
    boxes = [tuple(r["box"][k] for k in "xywh") for r in rows]
    # The left face where it is in the astronaut photo, the right one mirrored into the right half.
    x, y, w, h = ASTRONAUT_BOX
    assert _near(boxes[0], ASTRONAUT_BOX) and _near(boxes[1], (1024 - x - w, y, w, h))
    assert f"x={boxes[0][0]}, y={boxes[0][1]}, w={boxes[0][2]}, h={boxes[0][3]})" in lines[0]


@needs_opencv
def test_faces_photo_without_a_face_is_one_line_and_the_others_are_still_predicted(model_file, photos, capsys):
    noise, two = str(photos / "noise.png"), str(photos / "two.png")
    code, out, err = run_cli(["predict", "--model", str(model_file), "--detect-faces", noise, two, str(photos / "missing.jpg")], capsys)
    assert code == 1 and len(out.strip().splitlines()) == 2  # exit 1, as for an unreadable file
    assert err.splitlines() == [f"agesearch: error: {noise}: no face found", f"agesearch: error: {photos / 'missing.jpg'}: no such file"]


def test_predict_without_detect_faces_warns_once_for_photos_that_are_not_face_crops(model_file, photos, capsys):
    code, out, err = run_cli(["predict", "--model", str(model_file), str(photos / "two.png"), str(photos / "noise.png")], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 2
    assert err.count("\n") == 1 and err.startswith("agesearch: warning: 2 image(s) do not look like face crops (")
    assert f"{photos / 'two.png'} 1024x512, {photos / 'noise.png'} 640x480" in err and "--detect-faces" in err


@needs_opencv
def test_predict_without_detect_faces_does_not_warn_for_utkface_like_crops(model_file, tmp_path, astronaut, capsys):
    from agesearch.search.data.synthetic import NATIVE_SIZE, draw_face

    drawn = draw_face(30, 1, 0, np.random.default_rng(0))  # a face of the synthetic set, 128 px as it draws them
    drawn.save(tmp_path / "synthetic.png")
    drawn.resize((200, 200)).save(tmp_path / "utk-sized.jpg")  # UTKFace's crops are 200 px squares
    (crop,) = faces.find_faces(astronaut)
    Image.fromarray(crop.crop).save(tmp_path / "aligned.png")  # what --detect-faces makes of a photo
    files = [str(tmp_path / n) for n in ("synthetic.png", "utk-sized.jpg", "aligned.png")]
    code, out, err = run_cli(["predict", "--model", str(model_file), *files], capsys)
    assert drawn.size == (NATIVE_SIZE, NATIVE_SIZE) and code == 0 and len(out.strip().splitlines()) == 3 and err == ""


@pytest.mark.parametrize("size, crop", [
    ((200, 200), True),     # UTKFace
    ((128, 128), True),     # utkface-5k, the synthetic set
    ((250, 200), True),     # 5:4, the widest taken for a crop
    ((800, 800), True),
    ((251, 200), False),
    ((1024, 512), False),   # two astronauts side by side
    ((4032, 3024), False),  # a phone photo (4:3)
    ((801, 900), False),    # square-ish but large
])
def test_faces_looks_like_face_crop_rule(size, crop):
    assert faces.looks_like_face_crop(*size) is crop


@needs_opencv
def test_faces_api_predict_detect_faces_one_row_per_face_from_files_and_arrays(model_file, photos):
    import agesearch

    model = agesearch.load_model(model_file)
    two, noise = photos / "two.png", photos / "noise.png"
    with pytest.warns(UserWarning, match=rf"no face found in 1 image\(s\): {noise}"):
        frame = model.predict([two, noise], detect_faces=True)
    assert list(frame.columns) == ["image", "face", "x", "y", "w", "h", "angle", "age", "gender", "p_female", "probability"]
    assert frame["image"].tolist() == [str(two)] * 2 and frame["face"].tolist() == [1, 2]
    assert _near(tuple(frame.loc[0, ["x", "y", "w", "h"]]), ASTRONAUT_BOX)
    picture = np.asarray(Image.open(two))
    from_arrays = model.predict(np.stack([picture, picture]), detect_faces=True)
    assert from_arrays["image"].tolist() == [0, 0, 1, 1] and from_arrays["face"].tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(from_arrays["age"], np.tile(frame["age"], 2), rtol=1e-5)  # the same crops from a PNG or its array
    with pytest.warns(UserWarning, match=r"do not look like face crops .*1024x512.*detect_faces=True"):
        assert len(model.predict(two)) == 1


@needs_opencv
def test_faces_alignment_turns_the_eyes_level(astronaut):
    (upright,) = faces.find_faces(astronaut)
    turned = np.asarray(Image.fromarray(astronaut).rotate(-10, resample=Image.Resampling.BILINEAR))  # 10 degrees clockwise
    (face,) = faces.find_faces(turned)
    assert upright.angle is not None and face.angle is not None
    assert 6 <= face.angle - upright.angle <= 14  # the eye line's slope, measured by the eye cascade (~3 degrees coarse)
    assert abs(face.crop.shape[0] - face.box[2] / faces.BOX_PER_CROP) <= 1 and face.crop.shape[:2] == (face.crop.shape[0],) * 2


@needs_opencv
@pytest.mark.parametrize("angle, expected", [
    (None, (101, 110)),  # (x, y) of the crop's top-left pixel: side 100, centred on the box's centre, 9 px down
    (90.0, (191, 101)),  # eyes sloping 90 degrees: the crop's x runs down the photo, its y (and the 9 px) to the left
])
def test_faces_align_crop_cuts_the_utkface_square_around_the_box(angle, expected):
    # A photo whose red channel is x and green channel is y, so that each crop pixel tells where it came from.
    yy, xx = np.mgrid[0:256, 0:256]
    photo = np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8)
    crop = faces.align_crop(photo, (100, 100, 102, 102), angle)
    assert crop.shape == (100, 100, 3)
    assert tuple(int(v) for v in crop[0, 0, :2]) == expected


@needs_opencv
def test_faces_align_crop_is_black_outside_the_photo():
    crop = faces.align_crop(np.full((60, 60, 3), 200, np.uint8), (0, 0, 60, 60), None)
    assert crop[0, 0].tolist() == [200, 200, 200] and crop[-1, 0].tolist() == [0, 0, 0]  # below the photo's bottom edge


def test_faces_without_opencv_is_one_line_exit_2(model_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    code, out, err = run_cli(["predict", "--model", str(model_file), "--detect-faces", "photo.jpg"], capsys)
    assert code == 2 and out == "" and err.strip() == f"agesearch: error: {faces.INSTALL_HINT}"
    with pytest.raises(UsageError, match=r'pip install "agesearch\[faces\]"'):
        faces.import_cv2()
