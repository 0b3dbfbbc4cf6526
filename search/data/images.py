"""UTKFace folders: parse names, decode once, cache uint8 arrays, split deterministically."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agesearch.search.errors import DataError
from agesearch.search.files import atomic_folder

GENDERS = ("male", "female")  # UTKFace's gender codes: 0 = male, 1 = female
RACES = ("White", "Black", "Asian", "Indian", "Others")  # UTKFace's race codes 0-4, its own names


def decade_label(age: int) -> str:
    """'0-9', '10-19', ...: the bins of every per-decade table agesearch prints."""
    lo = (int(age) // 10) * 10
    return f"{lo}-{lo + 9}"


MAX_AGE = 116
# AGE_GENDER_RACE_DATETIME.jpg.chip.jpg (cropped/aligned set) or ...DATETIME.jpg (in-the-wild set).
NAME_PATTERN = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_(?P<stamp>\d+)"
    r"\.(?:jpg|jpeg|png)(?:\.chip\.jpg)?$",
    re.IGNORECASE,
)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class FaceLabel:
    age: int  # 0..116 years
    gender: int  # 0 = male, 1 = female
    race: int  # 0..4 (RACES), not used by the models; the cards score by it
    stamp: str  # capture date-time digits


def parse_name(name: str) -> FaceLabel | None:
    """Labels from a UTKFace file name, or None for a malformed one."""
    m = NAME_PATTERN.match(name)
    if m is None:
        return None
    age = int(m["age"])
    if age > MAX_AGE:
        return None
    return FaceLabel(age, int(m["gender"]), int(m["race"]), m["stamp"])


@dataclass
class FaceDataset:
    """Decoded images and labels, in a fixed order (sorted file names)."""

    images: np.ndarray  # (n, size, size, 3) uint8
    ages: np.ndarray  # (n,) int16 years
    genders: np.ndarray  # (n,) int8, 1 = female
    races: np.ndarray  # (n,) int8
    names: list[str]
    fingerprint: str  # hash of the file list (names and byte sizes), independent of image size

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> "FaceDataset":
        return FaceDataset(
            self.images[idx],
            self.ages[idx],
            self.genders[idx],
            self.races[idx],
            [self.names[i] for i in idx],
            self.fingerprint,
        )


@dataclass(frozen=True)
class Split:
    """Indices into a FaceDataset; the search sees train and val, test waits for evaluation."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def list_faces(folder: Path, *, limit: int | None = None, seed: int = 0) -> tuple[list[Path], list[str]]:
    """Image files of `folder` with parsable names, and the names that were skipped.

    With `limit`, a seeded random subset of that many files (the same for the same seed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    good, malformed = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if parse_name(entry.name) is None:
            malformed.append(entry.name)
        else:
            good.append(Path(entry.path))
    if not good:
        what = f"{len(malformed)} files, none named AGE_GENDER_RACE_DATETIME.jpg[.chip.jpg]" if malformed else "no files"
        raise DataError(f"no UTKFace images in {folder}: {what}")
    if limit is not None and limit < len(good):
        pick = np.sort(np.random.default_rng(seed).permutation(len(good))[:limit])
        good = [good[i] for i in pick]
    return good, malformed


def fingerprint_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("AGESEARCH_CACHE_DIR", Path.home() / ".cache" / "agesearch"))


def decode_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 array of side `size`, whatever the file's size and mode."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _summarise(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {kind} ({shown})"


def load_faces(
    folder: str | Path,
    image_size: int = 128,
    *,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress=None,
) -> FaceDataset:
    """Decode a UTKFace folder into arrays, once: later calls read the on-disk cache.

    Malformed names and unreadable files are skipped; one warning line counts them.
    The cache key is the file list (names, byte sizes) and the image size.
    """
    files, malformed = list_faces(Path(folder), limit=limit, seed=seed)
    fingerprint = fingerprint_files(files)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = cache_dir / f"faces-{fingerprint}-{image_size}px-v{CACHE_FORMAT}"
    if (entry / "meta.json").exists():
        meta = json.loads((entry / "meta.json").read_text())
        images = np.load(entry / "images.npy")
        labels = np.load(entry / "labels.npy")
        skipped = {"malformed names": malformed, "unreadable files": meta["unreadable"]}
    else:
        images_list, names, unreadable = [], [], []
        for i, f in enumerate(files):
            try:
                images_list.append(decode_image(f, image_size))
                names.append(f.name)
            except (OSError, ValueError, SyntaxError):  # PIL's errors for corrupt/truncated files
                unreadable.append(f.name)
            if progress is not None and (i + 1) % 500 == 0:
                progress(f"decoded {i + 1}/{len(files)} images")
        if not images_list:
            raise DataError(f"no readable image in {folder}: {len(unreadable)} files could not be decoded")
        images = np.stack(images_list)
        labels = np.array(
            [[(lab := parse_name(n)).age, lab.gender, lab.race] for n in names], dtype=np.int16
        )
        meta = {"format": CACHE_FORMAT, "names": names, "unreadable": unreadable, "folder": str(folder)}
        _write_cache(entry, images, labels, meta)
        skipped = {"malformed names": malformed, "unreadable files": unreadable}
    parts = [_summarise(kind, names) for kind, names in skipped.items() if names]
    if parts:
        warnings.warn(f"skipped {'; '.join(parts)} in {folder}", stacklevel=2)
    return FaceDataset(
        images=images,
        ages=labels[:, 0].astype(np.int16),
        genders=labels[:, 1].astype(np.int8),
        races=labels[:, 2].astype(np.int8),
        names=list(meta["names"]),
        fingerprint=fingerprint,
    )


def _write_cache(entry: Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """Write the entry as a whole: a crash never leaves half a cache entry, and when another
    process wrote the same entry first, theirs is kept (it is as good)."""
    with atomic_folder(entry) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps(meta))


def check_split(fractions) -> tuple[float, float, float]:
    """The one rule of a split (data, duplicates and the CLI's --split all use it).

    Returns:
        The fractions as a tuple of three floats.

    Raises:
        ValueError: not three fractions >= 0 summing to 1, or an empty train or val share.
    """
    try:
        f = tuple(float(x) for x in fractions)
    except (TypeError, ValueError):
        f = ()
    if len(f) != 3 or any(not x >= 0 for x in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0 or f[1] <= 0:
        raise ValueError(
            f"Invalid value for `split`: must be three fractions >= 0 summing to 1, train and val > 0. Received: split={tuple(fractions)}"
        )
    return f  # type: ignore[return-value]


def split_indices(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> Split:
    """A seeded, disjoint train/val/test split of `n` items covering all of them."""
    fractions = check_split(fractions)
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n_train < 1 or n_val < 1:
        raise DataError(f"too few images ({n}) for a split with at least one train and one val image")
    return Split(
        train=np.sort(order[:n_train]),
        val=np.sort(order[n_train : n_train + n_val]),
        test=np.sort(order[n_train + n_val :]),
    )
