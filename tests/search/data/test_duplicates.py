"""Near-duplicates: hashing, pairs, groups, the grouped split, `agesearch data check`."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from agesearch.search.data.images import load_faces, split_indices
from agesearch.search.data.duplicates import (
    duplicate_groups,
    find_duplicates,
    group_split,
    hamming_pairs,
    pair_table,
    phash_bits,
    split_faces,
    split_sides,
    thumbnails,
)

from conftest import REAL_DATA, run_cli


@pytest.fixture(scope="module")
def planted(tmp_path_factory, synthetic_dir):
    """200 synthetic faces plus three planted copies of existing images under other labels."""
    folder = tmp_path_factory.mktemp("planted")
    names = sorted(p.name for p in synthetic_dir.iterdir() if p.suffix == ".jpg")[:200]
    for n in names:
        shutil.copy(synthetic_dir / n, folder / n)
    copies = {
        names[5]: "99_1_4_20990101000000001.jpg.chip.jpg",  # other age, gender and race
        names[50]: "1_0_0_20990101000000002.jpg.chip.jpg",
        names[120]: "77_0_0_20990101000000003.jpg.chip.jpg",
    }
    for src, dst in copies.items():
        # Re-encoded at another JPEG quality: a copy, not the same bytes.
        Image.open(synthetic_dir / src).save(folder / dst, quality=80)
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(b"")  # malformed name
    (folder / "40_1_0_20170116174525125.jpg.chip.jpg").write_bytes(b"not a jpeg")  # unreadable
    return folder, copies


def test_phash_bits_match_imagehash_when_installed(synthetic_dir):
    imagehash = pytest.importorskip("imagehash")
    files = sorted(synthetic_dir.iterdir())[:10]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    ours = phash_bits(thumbnails(images)[0])
    theirs = np.stack([imagehash.phash(Image.fromarray(im)).hash.reshape(-1) for im in images])
    assert (ours != theirs).sum(axis=1).max() <= 2  # float rounding at the median only


def test_hamming_pairs_finds_exact_distances():
    rng = np.random.default_rng(0)
    bits = rng.random((50, 64)) < 0.5
    bits[10] = bits[3]
    bits[20] = bits[3]
    bits[20, :3] = ~bits[20, :3]
    pairs = hamming_pairs(bits, threshold=3)
    found = {(int(i), int(j)): int(d) for i, j, d in pairs}
    assert found[(3, 10)] == 0 and found[(3, 20)] == 3 and found[(10, 20)] == 3
    brute = {(i, j) for i in range(50) for j in range(i + 1, 50) if (bits[i] != bits[j]).sum() <= 3}
    assert set(found) == brute


def test_duplicate_groups_union_find_labels_by_smallest_member():
    groups = duplicate_groups(8, np.array([[1, 5, 0], [5, 7, 0], [2, 3, 0]]))
    assert groups.tolist() == [0, 1, 2, 2, 4, 1, 6, 1]


@pytest.mark.parametrize("n", [10, 101, 1000])
def test_group_split_equals_split_indices_without_duplicates(n):
    a = group_split(n, np.arange(n), (0.7, 0.15, 0.15), seed=4)
    b = split_indices(n, (0.7, 0.15, 0.15), seed=4)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(x, y)


def test_group_split_keeps_groups_together_deterministic_and_near_fractions():
    rng = np.random.default_rng(1)
    groups = np.arange(1000)
    for _ in range(150):  # chain random items into groups of 2-5
        i, j = rng.integers(0, 1000, 2)
        groups[groups == groups[j]] = groups[i]
    a = group_split(1000, groups, (0.7, 0.15, 0.15), seed=0)
    b = group_split(1000, groups, (0.7, 0.15, 0.15), seed=0)
    side = split_sides(a, 1000)
    assert (side >= 0).all()
    for g in np.unique(groups):
        assert len(set(side[groups == g])) == 1
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(x, y)
    assert abs(len(a.train) - 700) <= 6 and abs(len(a.val) - 150) <= 6


def test_group_split_rejects_bad_groups_and_fractions():
    with pytest.raises(ValueError, match=r"Invalid value for `groups`: must have one label per item \(n=5\)"):
        group_split(5, np.arange(4))
    with pytest.raises(ValueError, match=r"Invalid value for `split`"):
        group_split(5, np.arange(5), (0.5, 0.2, 0.2))


def test_find_duplicates_flags_planted_copies_and_split_keeps_them_together(planted, cache_dir):
    folder, copies = planted
    with pytest.warns(UserWarning, match="skipped"):
        ds = load_faces(folder, 32)
    dups = find_duplicates(ds)
    table = pair_table(ds, dups)
    for src, dst in copies.items():
        row = table[((table.name_a == src) & (table.name_b == dst)) | ((table.name_a == dst) & (table.name_b == src))]
        assert len(row) == 1 and bool(row.disagree.iloc[0])
        assert dups.groups[ds.names.index(src)] == dups.groups[ds.names.index(dst)]
    assert dups.largest_group <= 6  # look-alike drawings do not chain into one big group
    for seed in range(5):
        side = split_sides(split_faces(ds, (0.6, 0.2, 0.2), seed=seed), len(ds))
        for src, dst in copies.items():
            assert side[ds.names.index(src)] == side[ds.names.index(dst)]


def test_data_check_cli_reports_counts_histograms_and_disagreeing_pairs(planted, capsys):
    folder, copies = planted
    code, out, err = run_cli(["data", "check", "--data", str(folder), "--image-size", "32", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["files"] == 204 and r["images"] == 203
    assert r["malformed"] == ["39_1_20170116174525125.jpg.chip.jpg"] and r["unreadable"] == ["40_1_0_20170116174525125.jpg.chip.jpg"]
    assert sum(r["age_histogram"].values()) == 203 and sum(r["gender_histogram"].values()) == 203
    flagged = {frozenset((p["name_a"], p["name_b"])) for p in r["duplicates"]["pairs"] if p["disagree"]}
    assert {frozenset(kv) for kv in copies.items()} <= flagged
    code, out, _ = run_cli(["data", "check", "--data", str(folder), "--image-size", "32"], capsys)
    assert code == 0 and "1 malformed name(s), 1 unreadable file(s)" in out and "DISAGREE" in out and "female" in out


def test_data_check_cli_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run_cli(["data", "check", "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.strip().startswith("agesearch: error: data folder not found") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data not found at {REAL_DATA}")
@pytest.mark.slow
def test_data_check_real_utkface_finds_known_copies(capsys):
    start = time.perf_counter()
    code, out, err = run_cli(["data", "check", "--data", str(REAL_DATA), "--image-size", "64", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == 4999 and len(r["malformed"]) == 1
    pairs = {frozenset((p["name_a"], p["name_b"])): p for p in r["duplicates"]["pairs"]}
    # The same baby photo under 1 y male and 2 y female.
    known = frozenset(("1_0_2_20161219213454832.jpg.chip.jpg", "2_1_2_20161219213559615.jpg.chip.jpg"))
    assert known in pairs and pairs[known]["disagree"]
    assert 30 <= r["duplicates"]["n_pairs"] <= 80 and r["duplicates"]["largest_group"] <= 5
    assert time.perf_counter() - start < 30
