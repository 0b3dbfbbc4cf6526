"""Near-duplicates on the 5,000-image UTKFace subset: hashing time, pairs, groups, split effect.

    python benchmarks/bench_duplicates.py --data DIR [--image-size 128]

Decodes through the normal cache first (not timed), then times the thumbnails + hashing with
a cold thumbnail cache, the pair search, and a warm `split_faces`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import add_data_argument, record  # noqa: E402

from agesearch.search.data.images import load_faces, split_indices  # noqa: E402
from agesearch.search.data.duplicates import (  # noqa: E402
    colour_difference,
    dataset_thumbnails,
    find_duplicates,
    hamming_pairs,
    pair_table,
    phash_bits,
    split_faces,
    split_sides,
    thumbnail_correlation,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_faces(args.data, args.image_size)
    cold = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    grey, colour = dataset_thumbnails(ds, cache_dir=cold)
    t1 = time.perf_counter()
    bits = phash_bits(grey)
    t2 = time.perf_counter()
    candidates = hamming_pairs(bits, 4)
    t3 = time.perf_counter()
    corr = thumbnail_correlation(grey, candidates)
    diff = colour_difference(colour, candidates)
    dups = find_duplicates(ds, cache_dir=cold)
    t4 = time.perf_counter()
    split = split_faces(ds, (0.7, 0.15, 0.15), seed=0, cache_dir=cold)
    t5 = time.perf_counter()
    table = pair_table(ds, dups)
    # How many duplicate pairs the plain seeded split would have put on two sides.
    plain = split_sides(split_indices(len(ds), (0.7, 0.15, 0.15), seed=0), len(ds))
    leaks = int(sum(plain[i] != plain[j] for i, j, _ in dups.pairs))
    grouped = split_sides(split, len(ds))
    assert all(grouped[i] == grouped[j] for i, j, _ in dups.pairs)
    dist = np.bincount(candidates[:, 2], minlength=5)
    record(
        f"Near-duplicates ({len(ds)} images, {args.image_size} px)",
        [
            f"thumbnails (32x32 grey Lanczos + 16x16 RGB box, PIL, one image at a time, cold cache): {t1 - t0:.2f}s ({1e3 * (t1 - t0) / len(ds):.2f} ms/image)",
            f"pHash bits for all images (batched NumPy DCT): {t2 - t1:.3f}s; all-pairs Hamming <= 4 ({len(ds) * (len(ds) - 1) // 2:,} pairs, BLAS): {t3 - t2:.2f}s",
            f"candidates by pHash distance 0/2/4 bits: {dist[0]}/{dist[2]}/{dist[4]}; kept after grey correlation >= 0.90: {int((corr >= 0.9).sum())}, "
            f"and colour difference <= 12: {len(dups.pairs)}",
            f"near-duplicate pairs: {len(dups.pairs)} in {dups.n_groups_with_copies} groups ({dups.n_images_in_groups} images, largest group {dups.largest_group}); "
            f"labels disagree in {int(table.disagree.sum())} pairs (age {int((table.age_a != table.age_b).sum())}, gender {int((table.gender_a != table.gender_b).sum())}, "
            f"race {int((table.race_a != table.race_b).sum())})",
            f"find_duplicates with a warm thumbnail cache: {t4 - t3:.2f}s (incl. correlation and union-find); split_faces warm: {t5 - t4:.2f}s",
            f"the plain seeded split (split_indices, seed 0) puts {leaks} of these pairs on two sides; the grouped split 0, sizes "
            f"{len(split.train)}/{len(split.val)}/{len(split.test)}",
        ],
    )


if __name__ == "__main__":
    main()
