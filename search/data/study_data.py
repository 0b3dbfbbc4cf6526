"""The data a study was searched on, found again from the study's metadata.

`agesearch run` records where the images came from, the image size, the subset and the split
in the study's user attrs (key "agesearch"); report, export and evaluation reload exactly the
same images and split from there (decoded once, then from the cache).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from agesearch.search.data.images import DataError, FaceDataset, Split, load_faces, split_indices
from agesearch.search.data.duplicates import SPLIT_METHOD, split_faces
from agesearch.search.data.synthetic import synthetic_folder


def data_folder(data: str, *, synthetic_count: int = 1200, cache_dir: Path | None = None) -> Path:
    """`data` is a folder or "synthetic" (the built-in set, drawn on first use)."""
    if data == "synthetic":
        return synthetic_folder(synthetic_count, seed=0, cache_dir=cache_dir)
    return Path(data).expanduser()


def study_dataset(meta: dict, *, cache_dir: Path | None = None, image_size: int | None = None) -> tuple[FaceDataset, Split]:
    """Reload a study's images and split; fails if the folder changed since the search.

    With `image_size` (another size than the searched one: `export --image-size`), the images
    are decoded at that size but the split is the study's own, computed at the searched size:
    near-duplicate groups come from the decoded pixels, so a split computed at another size
    could move a train image's twin into test.
    """
    folder = data_folder(meta["data"], synthetic_count=meta.get("synthetic_count", 1200), cache_dir=cache_dir)
    searched = load_faces(folder, meta["image_size"], limit=meta.get("limit"), seed=meta["seed"], cache_dir=cache_dir)
    if searched.fingerprint != meta["fingerprint"]:
        raise DataError(f"the images in {folder} changed since the study was run (fingerprint {searched.fingerprint} != {meta['fingerprint']})")
    if meta.get("split_method") == SPLIT_METHOD:
        split = split_faces(searched, tuple(meta["split"]), seed=meta["seed"], cache_dir=cache_dir)
    else:  # studies made before the grouped split keep the plain seeded split they were searched on
        split = split_indices(len(searched), tuple(meta["split"]), seed=meta["seed"])
    if image_size is None or image_size == meta["image_size"]:
        return searched, split
    with warnings.catch_warnings():  # the same files: their skipped names were reported once above
        warnings.simplefilter("ignore", UserWarning)
        ds = load_faces(folder, image_size, limit=meta.get("limit"), seed=meta["seed"], cache_dir=cache_dir)
    if ds.names != searched.names:
        raise DataError(f"the images decoded at {image_size} px are not those of the study (another order or subset)")
    return ds, split
