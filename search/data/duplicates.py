"""Near-duplicate faces: perceptual hashes, duplicate pairs and groups, a group-aware split.

UTKFace holds near-duplicate photos (the same picture twice, sometimes under different labels).
A random split that puts one copy in train and the other in val or test leaks: the model is
scored on a photo it was trained on. Here every image gets a 64-bit DCT perceptual hash (pHash);
pairs within a small Hamming distance whose grey thumbnails also correlate strongly are
near-duplicates; union-find joins them into groups; `group_split` keeps each group on one side.

Why a NumPy pHash and not the `imagehash` package: the images are already decoded into one
uint8 array (and cached) by `data.load_faces`, so hashing works on that array in one batch -
two matrix products give the 2-D DCT of all images at once - instead of re-opening every file
as a PIL image; the 32x32 thumbnails it needs anyway serve the correlation check; and the core
install does not gain scipy and PyWavelets (imagehash's dependencies) for twenty lines of
arithmetic. The hash is imagehash's `phash` (grey levels, 32x32 Lanczos resize, 2-D DCT-II, the
8x8 lowest frequencies compared with their median), so its thresholds carry over.

Why a second test: aligned, centred face crops look alike at low frequencies, so pHash alone
puts some different people within 4 bits. Measured on the 5,000-image UTKFace subset
(benchmarks/RESULTS.md, "Near-duplicates"): all 45 pairs at 0-2 bits are copies (thumbnail
correlation >= 0.98, many under other labels); at 4 bits copies (0.91-0.998) and different
faces (0.49-0.89) mix; at 6 bits (96 pairs) the most correlated ones (0.89-0.92) were
different faces by eye. Hence
Hamming <= 4 and Pearson correlation of the 32x32 grey thumbnails >= 0.90.

Why a third, colour test: both tests above ignore colour, and images drawn from one template
(agesearch's synthetic set, where hair colour carries the age) pass them by the thousand,
chaining 935 of 1,200 images into 35 groups of up to 205 - a split cannot keep those together
and stay near its fractions. Copies keep their colours: the mean absolute difference of 16x16
RGB thumbnails is <= 4 (0-255 scale) for 90 % of the UTKFace pairs above and 10 for a
re-processed copy, while the synthetic look-alikes start at 6 and sit at 33 in the median. A
cap of 12 keeps 49 of the 50 UTKFace pairs (the one lost is a copy on another background) and
leaves the synthetic set with groups of at most 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agesearch.search.data.images import DataError, FaceDataset, Split, check_split, default_cache_dir
from agesearch.search.files import atomic_path

HASH_SIZE = 8  # 8x8 low-frequency DCT coefficients -> 64 bits
HIGHFREQ_FACTOR = 4  # images are reduced to 32x32 before the DCT (imagehash's default)
# A pair is a near-duplicate when the hashes differ in at most DEFAULT_THRESHOLD of 64 bits and
# the grey thumbnails correlate at DEFAULT_MIN_CORRELATION or more (see the module docstring).
# pHash bits are split at their median, so a hash has (about) 32 ones and distances are even.
DEFAULT_THRESHOLD = 4
DEFAULT_MIN_CORRELATION = 0.90
DEFAULT_MAX_COLOUR_DIFF = 12.0  # mean |RGB difference| of 16x16 thumbnails, 0-255 scale
COLOUR_SIDE = 16
HASH_CACHE_FORMAT = 2
SPLIT_METHOD = "grouped-phash"  # recorded in a study's metadata by `agesearch run`


def _dct_matrix(n: int) -> np.ndarray:
    """Unnormalised DCT-II matrix, as scipy.fftpack.dct(type=2, norm=None) computes it."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def thumbnails(images: np.ndarray, *, side: int = HASH_SIZE * HIGHFREQ_FACTOR, colour_side: int = COLOUR_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Grey thumbnails (as imagehash's phash makes them) and small colour thumbnails.

    Args:
        images: (n, H, W, 3) uint8 array, any H and W.
        side: grey thumbnail side in pixels.
        colour_side: colour thumbnail side in pixels (box-averaged, so noise and JPEG
            artefacts average out).

    Returns:
        (n, side, side) uint8 grey and (n, colour_side, colour_side, 3) uint8 RGB arrays.
    """
    grey_out = np.empty((len(images), side, side), dtype=np.uint8)
    colour_out = np.empty((len(images), colour_side, colour_side, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        # PIL's "L" conversion and Lanczos resize, as imagehash does, so hashes match its phash.
        grey_out[i] = np.asarray(im.convert("L").resize((side, side), Image.Resampling.LANCZOS))
        colour_out[i] = np.asarray(im.resize((colour_side, colour_side), Image.Resampling.BOX))
    return grey_out, colour_out


def phash_bits(thumbs: np.ndarray, *, hash_size: int = HASH_SIZE) -> np.ndarray:
    """64-bit perceptual hashes of grey thumbnails (from `thumbnails`), as a (n, 64) bool array.

    Row-major over the 8x8 low-frequency DCT block, imagehash's bit order.
    """
    side = thumbs.shape[1]
    d = _dct_matrix(side)[:hash_size]
    # DCT along rows then columns for the whole batch: D @ X @ D^T, only the rows kept.
    coeffs = np.einsum("ki,nij,lj->nkl", d, thumbs.astype(np.float64), d, optimize=True)
    low = coeffs.reshape(len(thumbs), -1)
    return low > np.median(low, axis=1, keepdims=True)


def colour_difference(colour: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0-255) of the two colour thumbnails of each pair."""
    if len(pairs) == 0:
        return np.zeros(0)
    a = colour[pairs[:, 0]].astype(np.float32)
    b = colour[pairs[:, 1]].astype(np.float32)
    return np.abs(a - b).reshape(len(pairs), -1).mean(axis=1)


def thumbnail_correlation(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of the two thumbnails of each pair (rows i, j, ...)."""
    if len(pairs) == 0:
        return np.zeros(0)
    t = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1)
    norm[norm == 0] = 1.0  # a flat image correlates with nothing (0), not NaN
    t /= norm[:, None]
    return np.einsum("ij,ij->i", t[pairs[:, 0]], t[pairs[:, 1]])


def hamming_pairs(bits: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, chunk: int = 2048) -> np.ndarray:
    """All pairs (i < j) whose hashes differ in at most `threshold` bits.

    Returns:
        (m, 3) int64 array of rows (i, j, distance), sorted by i then j.
    """
    b = bits.astype(np.float32)
    nb = 1.0 - b
    out = []
    n = len(b)
    # Hamming distance as two matrix products (bits that are 1 here and 0 there, and the
    # reverse): BLAS does 5,000 x 5,000 in well under a second; chunks bound the memory.
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        dist = b[start:stop] @ nb.T + nb[start:stop] @ b.T
        rows, cols = np.nonzero(dist <= threshold + 0.5)
        rows = rows + start
        keep = cols > rows
        out.append(np.stack([rows[keep], cols[keep], np.rint(dist[rows[keep] - start, cols[keep]])], axis=1))
    pairs = np.concatenate(out).astype(np.int64) if out else np.zeros((0, 3), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 3)


def duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over the pairs: a group label per item, the smallest index of its group.

    Returns:
        (n,) int64 array; items in no pair are their own group (label = own index).
    """
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for i, j in np.asarray(pairs)[:, :2]:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            # The smaller index becomes the root, so a label is the group's smallest member.
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def group_split(n: int, groups: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> Split:
    """A seeded train/val/test split that keeps every group on one side.

    The groups are shuffled with the seed and dealt out in that order: a group goes to train
    while fewer than round(train * n) items were dealt, then to val, then to test, so each
    side's size misses its target by less than one group. With no duplicates (every item its
    own group) this is exactly `data.split_indices(n, fractions, seed)`.

    Args:
        n: number of items.
        groups: (n,) group label per item (any integers; equal labels = one group).
        fractions: train, val, test fractions summing to 1.
        seed: seed of the shuffle.

    Raises:
        ValueError: bad fractions or a `groups` array of another length.
        DataError: train or val would be empty.
    """
    fractions = check_split(fractions)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"Invalid value for `groups`: must have one label per item (n={n}). Received: shape {groups.shape}")
    # Canonical group order (by smallest member) so the result depends only on the partition.
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order_of_label = np.argsort(first)  # label positions sorted by their first member
    rank = np.empty_like(order_of_label)
    rank[order_of_label] = np.arange(len(order_of_label))
    group_of = rank[inverse]  # 0..g-1, numbered by smallest member
    sizes = np.bincount(group_of)
    perm = np.random.default_rng(seed).permutation(len(sizes))
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    dealt_before = np.concatenate([[0], np.cumsum(sizes[perm])[:-1]])
    side_of_group = np.empty(len(sizes), dtype=np.int8)
    side_of_group[perm] = np.where(dealt_before < n_train, 0, np.where(dealt_before < n_train + n_val, 1, 2))
    side = side_of_group[group_of]
    train, val, test = (np.flatnonzero(side == k) for k in range(3))
    if len(train) < 1 or len(val) < 1:
        raise DataError(f"too few images ({n}) for a split with at least one train and one val image")
    return Split(train=train, val=val, test=test)  # flatnonzero: sorted, like split_indices


def _hash_cache_path(ds: FaceDataset, cache_dir: Path) -> Path:
    size = ds.images.shape[1] if ds.images.ndim == 4 else 0
    return cache_dir / f"thumbs-{ds.fingerprint}-{size}px-n{len(ds)}-v{HASH_CACHE_FORMAT}.npz"


def dataset_thumbnails(ds: FaceDataset, *, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The grey and colour thumbnails of a dataset's images, cached next to the decoded images.

    The thumbnails are the slow part (PIL resizes per image); hash bits, correlations and
    colour differences follow from them in milliseconds. The key is the data's fingerprint
    (file names and sizes), the image size and the count, the things that key the decoded images.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _hash_cache_path(ds, cache_dir)
    side = HASH_SIZE * HIGHFREQ_FACTOR
    if path.exists():
        try:
            with np.load(path) as z:
                grey, colour = z["grey"], z["colour"]
            if grey.shape == (len(ds), side, side) and len(colour) == len(ds):
                return grey, colour
        except (OSError, KeyError, ValueError):  # a damaged entry is recomputed
            pass
    grey, colour = thumbnails(ds.images)
    with atomic_path(path) as tmp:  # a crash or a concurrent writer never leaves half a file
        np.savez(tmp, grey=grey, colour=colour)
    return grey, colour


@dataclass
class Duplicates:
    """Near-duplicate pairs and groups of one dataset."""

    pairs: np.ndarray  # (m, 3) rows (i, j, hamming distance), i < j
    correlation: np.ndarray  # (m,) Pearson correlation of the pair's grey thumbnails
    colour_diff: np.ndarray  # (m,) mean |RGB difference| of the pair's colour thumbnails, 0-255
    groups: np.ndarray  # (n,) group label per image (smallest index of its group)
    threshold: int  # Hamming distance used
    min_correlation: float  # thumbnail correlation used
    max_colour_diff: float  # colour difference used

    @property
    def n_groups_with_copies(self) -> int:
        _, counts = np.unique(self.groups, return_counts=True)
        return int((counts > 1).sum())

    @property
    def largest_group(self) -> int:
        return int(np.bincount(self.groups).max()) if len(self.groups) else 0

    @property
    def n_images_in_groups(self) -> int:
        _, inverse, counts = np.unique(self.groups, return_inverse=True, return_counts=True)
        return int((counts[inverse] > 1).sum())


def find_duplicates(
    ds: FaceDataset,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    max_colour_diff: float = DEFAULT_MAX_COLOUR_DIFF,
    *,
    cache_dir: Path | None = None,
) -> Duplicates:
    """Near-duplicate pairs and their groups (see the module docstring for the three tests).

    Args:
        ds: the images.
        threshold: most differing pHash bits (of 64) for a candidate pair.
        min_correlation: least Pearson correlation of the candidates' 32x32 grey thumbnails.
        max_colour_diff: most mean |RGB difference| (0-255) of their 16x16 colour thumbnails.
        cache_dir: where the thumbnails are cached (default: the decoded-image cache).
    """
    grey, colour = dataset_thumbnails(ds, cache_dir=cache_dir)
    pairs = hamming_pairs(phash_bits(grey), threshold)
    corr = thumbnail_correlation(grey, pairs)
    diff = colour_difference(colour, pairs)
    keep = (corr >= min_correlation) & (diff <= max_colour_diff)
    pairs, corr, diff = pairs[keep], corr[keep], diff[keep]
    return Duplicates(
        pairs=pairs,
        correlation=corr,
        colour_diff=diff,
        groups=duplicate_groups(len(ds), pairs),
        threshold=threshold,
        min_correlation=min_correlation,
        max_colour_diff=max_colour_diff,
    )


def pair_table(ds: FaceDataset, dups: Duplicates):
    """The pairs with both images' names and labels, and whether the labels disagree.

    Returns:
        pandas.DataFrame with columns name_a, name_b, distance, age_a, age_b, gender_a,
        gender_b, race_a, race_b, disagree (age, gender or race differ), sorted with the
        disagreeing pairs first, then by distance.
    """
    import pandas as pd

    i, j, dist = (dups.pairs[:, k] for k in range(3))
    t = pd.DataFrame(
        {
            "name_a": [ds.names[k] for k in i],
            "name_b": [ds.names[k] for k in j],
            "distance": dist,
            "correlation": np.round(dups.correlation, 4),
            "colour_diff": np.round(dups.colour_diff, 2),
            "age_a": ds.ages[i].astype(int),
            "age_b": ds.ages[j].astype(int),
            "gender_a": ds.genders[i].astype(int),
            "gender_b": ds.genders[j].astype(int),
            "race_a": ds.races[i].astype(int),
            "race_b": ds.races[j].astype(int),
        }
    )
    t["disagree"] = (t.age_a != t.age_b) | (t.gender_a != t.gender_b) | (t.race_a != t.race_b)
    return t.sort_values(["disagree", "distance", "name_a"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def split_faces(ds: FaceDataset, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0, *, cache_dir: Path | None = None) -> Split:
    """The split `agesearch run` uses: seeded, and every near-duplicate group on one side.

    Deterministic for the same images, image size, fractions and seed (the hashes are a pure
    function of the decoded pixels). See `group_split` for how groups are dealt out.
    """
    dups = find_duplicates(ds, cache_dir=cache_dir)
    return group_split(len(ds), dups.groups, fractions, seed)


def split_sides(split: Split, n: int) -> np.ndarray:
    """(n,) side per item: 0 train, 1 val, 2 test."""
    side = np.full(n, -1, dtype=np.int8)
    for k, idx in enumerate((split.train, split.val, split.test)):
        side[idx] = k
    return side

