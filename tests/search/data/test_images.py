from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agesearch.search.data import images as data_mod
from agesearch.search.data.images import DataError, FaceLabel, list_faces, load_faces, parse_name, split_indices
from conftest import REAL_DATA


@pytest.mark.parametrize(
    "name, expected",
    [
        ("26_1_2_20170116174525125.jpg.chip.jpg", FaceLabel(26, 1, 2, "20170116174525125")),
        ("100_0_0_20170112215032192.jpg.chip.jpg", FaceLabel(100, 0, 0, "20170112215032192")),
        ("1_0_4_20161223220620124.jpg.chip.jpg", FaceLabel(1, 0, 4, "20161223220620124")),
        ("116_1_3_20170120134744096.jpg.chip.jpg", FaceLabel(116, 1, 3, "20170120134744096")),
        ("45_0_1_20170109012345678.jpg", FaceLabel(45, 0, 1, "20170109012345678")),
    ],
)
def test_parse_name_valid(name, expected):
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "39_1_20170116174525125.jpg.chip.jpg",  # missing field (a real UTKFace name)
        "55_0_0_20170116232725357jpg",  # missing dot (a real UTKFace name)
        "61_1_20170109150557335.jpg.chip.jpg",
        "26_2_0_20170116174525125.jpg.chip.jpg",  # gender 2
        "26_1_5_20170116174525125.jpg.chip.jpg",  # race 5
        "117_0_0_20170116174525125.jpg.chip.jpg",  # age over 116
        "x_0_0_20170116174525125.jpg.chip.jpg",
        "26_1_2_20170116174525125.txt",
        "README.md",
    ],
)
def test_parse_name_malformed(name):
    assert parse_name(name) is None


@pytest.mark.parametrize("n", [10, 101, 5000])
def test_split_indices_deterministic_disjoint_complete(n):
    a = split_indices(n, (0.7, 0.15, 0.15), seed=3)
    b = split_indices(n, (0.7, 0.15, 0.15), seed=3)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(x, y)
    parts = [set(a.train), set(a.val), set(a.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(n))
    assert abs(len(a.train) - 0.7 * n) <= 1


def test_split_indices_seed_changes_split():
    assert not np.array_equal(split_indices(200, seed=0).val, split_indices(200, seed=1).val)


def test_split_indices_rejects_bad_fractions():
    with pytest.raises(ValueError, match=r"Invalid value for `split`: must be three fractions >= 0 summing to 1"):
        split_indices(100, (0.5, 0.2, 0.2))


def _face_folder(tmp_path: Path, synthetic_dir: Path, count: int = 12) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    for f in sorted(synthetic_dir.iterdir())[:count]:
        shutil.copy(f, folder / f.name)
    return folder


def test_load_faces_skips_malformed_and_corrupt_with_one_warning(tmp_path, synthetic_dir):
    folder = _face_folder(tmp_path, synthetic_dir)
    good = sorted(p.name for p in folder.iterdir())
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes((folder / good[0]).read_bytes())
    (folder / "55_0_0_20170116232725357jpg").write_bytes(b"x")
    (folder / "30_0_0_20170116000000000.jpg.chip.jpg").write_bytes(b"not a jpeg at all")
    truncated = (folder / good[1]).read_bytes()[:200]
    (folder / "31_1_0_20170116000000001.jpg.chip.jpg").write_bytes(truncated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_faces(folder, 32, cache_dir=tmp_path / "cache")
    assert len(ds) == 12
    assert ds.names == good
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "2 malformed names (39_1_20170116174525125.jpg.chip.jpg, 55_0_0_20170116232725357jpg)" in messages[0]
    assert "2 unreadable files (30_0_0_20170116000000000.jpg.chip.jpg, 31_1_0_20170116000000001.jpg.chip.jpg)" in messages[0]


def test_load_faces_resizes_any_input_size_to_rgb(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("RGB", (200, 200), (255, 0, 0)).save(folder / "20_0_0_20170101000000000.jpg.chip.jpg")
    Image.new("L", (64, 48), 128).save(folder / "40_1_1_20170101000000001.jpg.chip.jpg")
    Image.new("RGBA", (90, 90), (0, 0, 255, 100)).save(folder / "60_1_2_20170101000000002.png")
    ds = load_faces(folder, 48, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (3, 48, 48, 3) and ds.images.dtype == np.uint8
    assert ds.ages.tolist() == [20, 40, 60] and ds.genders.tolist() == [0, 1, 1] and ds.races.tolist() == [0, 1, 2]
    assert ds.images[0, 24, 24, 0] > 200 and ds.images[0, 24, 24, 2] < 50


def test_load_faces_second_call_hits_cache(tmp_path, synthetic_dir, monkeypatch):
    folder = _face_folder(tmp_path, synthetic_dir, 20)
    first = load_faces(folder, 32, cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(f"faces-{first.fingerprint}-32px")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_mod, "decode_image", no_decoding)
    second = load_faces(folder, 32, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images, second.images)
    assert first.names == second.names and first.fingerprint == second.fingerprint
    # Another image size is another cache entry, decoded anew.
    monkeypatch.undo()
    load_faces(folder, 16, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_load_faces_limit_is_a_seeded_subset(tmp_path, synthetic_dir):
    a, _ = list_faces(synthetic_dir, limit=50, seed=1)
    b, _ = list_faces(synthetic_dir, limit=50, seed=1)
    c, _ = list_faces(synthetic_dir, limit=50, seed=2)
    assert a == b and a != c and len(a) == 50


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, r"data folder not found: .*missing"),
        (lambda p: p.mkdir(), r"no UTKFace images in .*missing: no files"),
        (lambda p: (p.mkdir(), (p / "face.jpg").write_bytes(b"x")), r"no UTKFace images in .*: 1 files, none named"),
        (lambda p: (p.mkdir(), (p / "20_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"x")), r"no readable image in .*: 1 files could not be decoded"),
    ],
)
def test_load_faces_bad_folder_errors(tmp_path, setup, message):
    folder = tmp_path / "missing"
    setup(folder)
    with pytest.raises(DataError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_faces(folder, 32, cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/utkface-5k is not here")
@pytest.mark.slow
def test_real_utkface_parse_all_and_load_some(tmp_path):
    files, malformed = list_faces(REAL_DATA)
    assert len(files) + len(malformed) == 5000
    assert len(files) >= 4990
    ds = load_faces(REAL_DATA, 64, limit=300, seed=0, cache_dir=tmp_path / "cache")
    assert len(ds) == 300 and ds.images.shape == (300, 64, 64, 3)
    assert 0 <= ds.ages.min() and ds.ages.max() <= 116
    assert set(np.unique(ds.genders)) <= {0, 1}
    assert ds.images.std() > 20  # real pictures, not blank arrays
