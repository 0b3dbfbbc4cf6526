"""What a folder of UTKFace-named images holds, and where it leaks.

Counts readable images, malformed names and unreadable files, draws age/gender/race
histograms as text, and lists near-duplicate pairs (search/data/duplicates.py) with both labels,
the pairs whose labels disagree first. Reads the folder through the same loader and cache as
`agesearch run`, so checking a folder also warms the cache for the search.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agesearch.search.data.images import FaceDataset, list_faces, load_faces
from agesearch.search.data.duplicates import Duplicates, find_duplicates, pair_table
from agesearch.search.data.images import GENDERS, decade_label

RACES = ("white", "black", "asian", "indian", "other")  # UTKFace's race codes 0..4
SHOWN_PAIRS = 30  # pairs listed in the text output (all of them go to --json)


@dataclass
class CheckResult:
    """Everything `data check` found; `to_dict` is the --json output."""

    folder: str
    files: int  # image files looked at (parsable names)
    images: int  # readable images among them
    malformed: list[str]
    unreadable: list[str]
    ages: dict[str, int]  # decade -> count
    genders: dict[str, int]
    races: dict[str, int]
    duplicates: dict  # threshold, min_correlation, pairs (list of dicts), groups, images_in_groups, disagreeing
    seconds: dict = field(default_factory=dict)  # load, duplicates

    def to_dict(self) -> dict:
        return {
            "folder": self.folder,
            "files": self.files,
            "images": self.images,
            "malformed": self.malformed,
            "unreadable": self.unreadable,
            "age_histogram": self.ages,
            "gender_histogram": self.genders,
            "race_histogram": self.races,
            "duplicates": self.duplicates,
            "seconds": self.seconds,
        }


def check_folder(folder: Path, image_size: int = 128, *, limit: int | None = None, seed: int = 0, cache_dir: Path | None = None) -> CheckResult:
    """Check one folder. Raises data.DataError for a missing folder or one with no UTKFace image."""
    start = time.perf_counter()
    files, malformed = list_faces(folder, limit=limit, seed=seed)
    with warnings.catch_warnings():
        # load_faces warns about what it skipped; here those files are listed by name instead.
        warnings.simplefilter("ignore")
        ds = load_faces(folder, image_size, limit=limit, seed=seed, cache_dir=cache_dir)
    loaded = time.perf_counter()
    readable = set(ds.names)
    unreadable = [f.name for f in files if f.name not in readable]
    dups = find_duplicates(ds, cache_dir=cache_dir)
    return CheckResult(
        folder=str(folder),
        files=len(files),
        images=len(ds),
        malformed=malformed,
        unreadable=unreadable,
        ages=_age_histogram(ds.ages),
        genders={g: int((ds.genders == k).sum()) for k, g in enumerate(GENDERS)},
        races={r: int((ds.races == k).sum()) for k, r in enumerate(RACES)},
        duplicates=_duplicates_dict(ds, dups),
        seconds={"load": round(loaded - start, 3), "duplicates": round(time.perf_counter() - loaded, 3)},
    )


def _age_histogram(ages: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(ages, dtype=int) // 10)
    return {decade_label(10 * d): int(c) for d, c in enumerate(counts) if c}


def _duplicates_dict(ds: FaceDataset, dups: Duplicates) -> dict:
    table = pair_table(ds, dups)
    return {
        "threshold_bits": dups.threshold,
        "min_correlation": dups.min_correlation,
        "max_colour_diff": dups.max_colour_diff,
        "largest_group": dups.largest_group,
        "n_pairs": len(table),
        "groups": dups.n_groups_with_copies,
        "images_in_groups": dups.n_images_in_groups,
        "disagreeing": int(table["disagree"].sum()),
        "disagreeing_gender": int((table["gender_a"] != table["gender_b"]).sum()),
        "disagreeing_age": int((table["age_a"] != table["age_b"]).sum()),
        "pairs": json.loads(table.to_json(orient="records")),
    }


def _bar(count: int, most: int, width: int = 40) -> str:
    return "#" * max(1 if count else 0, round(width * count / most)) if most else ""


def format_check(r: CheckResult, *, shown: int = SHOWN_PAIRS) -> str:
    """The terminal report of a check."""
    lines = [
        f"data check: {r.folder}",
        f"  images: {r.images} readable of {r.files} UTKFace-named files; "
        f"{len(r.malformed)} malformed name(s), {len(r.unreadable)} unreadable file(s)",
    ]
    for kind, names in (("malformed", r.malformed), ("unreadable", r.unreadable)):
        for name in names[:10]:
            lines.append(f"    {kind}: {name!r}")
        if len(names) > 10:
            lines.append(f"    ... {len(names) - 10} more {kind}")
    for title, hist in (("age (years)", r.ages), ("gender", r.genders), ("race", r.races)):
        lines.append(f"  {title}:")
        most = max(hist.values(), default=0)
        for key, count in hist.items():
            share = 100 * count / r.images if r.images else 0.0
            lines.append(f"    {key:>8} {count:>6} {share:5.1f} %  {_bar(count, most)}")
    d = r.duplicates
    lines.append(
        f"  near-duplicates (pHash <= {d['threshold_bits']} of 64 bits, grey correlation >= {d['min_correlation']:.2f}, "
        f"colour difference <= {d['max_colour_diff']:g}): {d['n_pairs']} pair(s) in {d['groups']} group(s), "
        f"{d['images_in_groups']} images, largest group {d['largest_group']}; "
        f"{d['disagreeing']} pair(s) with disagreeing labels ({d['disagreeing_age']} age, {d['disagreeing_gender']} gender)"
    )
    if d["pairs"]:
        lines.append(f"    {'':9} {'bits':>4} {'corr':>6} {'diff':>5}  {'image a (age/gender/race)':<52} image b (age/gender/race)")
    for p in d["pairs"][:shown]:
        flag = "DISAGREE" if p["disagree"] else "same"
        a = f"{p['name_a']} ({p['age_a']}/{GENDERS[p['gender_a']][0].upper()}/{p['race_a']})"
        b = f"{p['name_b']} ({p['age_b']}/{GENDERS[p['gender_b']][0].upper()}/{p['race_b']})"
        lines.append(f"    {flag:<9} {p['distance']:>4} {p['correlation']:>6.3f} {p['colour_diff']:>5.1f}  {a:<52} {b}")
    if len(d["pairs"]) > shown:
        lines.append(f"    ... {len(d['pairs']) - shown} more pair(s) (--json lists them all)")
    lines.append(
        "  `agesearch run` keeps each near-duplicate group on one side of the train/val/test split."
        if d["n_pairs"]
        else "  no near-duplicates."
    )
    lines.append(f"  ({r.seconds.get('load', 0):.1f}s to load, {r.seconds.get('duplicates', 0):.1f}s to find duplicates)")
    return "\n".join(lines)
