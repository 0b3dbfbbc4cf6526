"""The built-in synthetic data set: face-like drawings named like UTKFace files.

Nothing in the field generates labelled toy faces, so this is drawn by hand with PIL.
Age shows in hair colour (dark -> grey -> white), proportions (children: big head, eyes low,
small jaw), face lines and skin tone; gender in hair length (long hair down the sides),
jaw width and a beard on adult men. The signals are strong enough that a small CNN beats
the trivial predictors (median age, majority gender) within 2-3 epochs, even at 32 px.
Deterministic: the same seed and count give the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from agesearch.search.data.images import default_cache_dir
from agesearch.search.files import atomic_folder

DEFAULT_COUNT = 1200
NATIVE_SIZE = 128
SKIN_TONES = [(233, 198, 170), (160, 110, 80), (200, 160, 120), (215, 175, 140), (180, 135, 100)]


def sample_age(rng: np.random.Generator) -> int:
    """Ages shaped like UTKFace: many 20-40, a bump of small children, a long tail."""
    kind = rng.random()
    if kind < 0.12:
        return int(rng.integers(1, 10))
    if kind < 0.72:
        return int(np.clip(rng.normal(30, 8), 10, 60))
    return int(rng.integers(10, 100))


def draw_face(age: int, gender: int, race: int, rng: np.random.Generator, size: int = NATIVE_SIZE) -> Image.Image:
    s = size / 128
    bg = tuple(int(v) for v in rng.integers(40, 220, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    t = min(age, 90) / 90  # 0 child .. 1 old

    # Hair colour: dark brown/black in youth, greying from ~35, white by ~75.
    grey = float(np.clip((age - 35) / 40, 0, 1))
    base = np.array([60, 40, 25]) if race != 1 else np.array([25, 20, 18])
    hair = tuple(int(v) for v in (base * (1 - grey) + np.array([235, 235, 235]) * grey + rng.normal(0, 8, 3)).clip(0, 255))
    skin = np.array(SKIN_TONES[race]) * (1 - 0.12 * t)
    skin = tuple(int(v) for v in (skin + rng.normal(0, 6, 3)).clip(0, 255))

    cx = 64 * s + rng.normal(0, 2) * s
    cy = 66 * s + rng.normal(0, 2) * s
    # Children: wide round head; adults: longer face; men: wider jaw.
    half_w = (34 + 6 * (1 - t) + (4 if gender == 0 else 0)) * s
    half_h = (36 + 10 * min(age, 20) / 20) * s

    if gender == 1:  # long hair behind the head, down to the shoulders
        d.rectangle([cx - half_w - 10 * s, cy - half_h - 6 * s, cx + half_w + 10 * s, 124 * s], fill=hair)
    d.ellipse([cx - half_w - 4 * s, cy - half_h - 8 * s, cx + half_w + 4 * s, cy + 6 * s], fill=hair)
    d.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=skin)
    if gender == 0:  # square jaw
        d.rectangle([cx - half_w * 0.8, cy + half_h * 0.2, cx + half_w * 0.8, cy + half_h * 0.85], fill=skin)
        if age >= 18 and rng.random() < 0.5:  # beard, greying with the hair
            d.rectangle([cx - half_w * 0.7, cy + half_h * 0.45, cx + half_w * 0.7, cy + half_h * 0.9], fill=hair)

    # Eyes sit lower and bigger on children.
    eye_y = cy - half_h * (0.05 + 0.25 * t)
    eye_r = (7 - 3 * t) * s
    for side in (-1, 1):
        ex = cx + side * half_w * 0.42
        d.ellipse([ex - eye_r, eye_y - eye_r * 0.7, ex + eye_r, eye_y + eye_r * 0.7], fill=(250, 250, 250))
        d.ellipse([ex - eye_r * 0.45, eye_y - eye_r * 0.45, ex + eye_r * 0.45, eye_y + eye_r * 0.45], fill=(40, 30, 30))
    mouth_y = cy + half_h * 0.55
    lip = (170, 60, 70) if gender == 1 else (120, 60, 55)
    d.line([cx - 10 * s, mouth_y, cx + 10 * s, mouth_y], fill=lip, width=max(1, int(3 * s)))

    # Lines: forehead and cheek wrinkles from ~40, more with age.
    n_lines = int(np.clip((age - 35) / 8, 0, 7))
    line_col = tuple(int(v * 0.6) for v in skin)
    for k in range(n_lines):
        y = cy - half_h * 0.75 + k * 4 * s
        d.line([cx - half_w * 0.5, y, cx + half_w * 0.5, y], fill=line_col, width=max(1, int(2 * s)))

    im = im.filter(ImageFilter.GaussianBlur(radius=0.6 * s))
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray((np.asarray(im, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))


def write_synthetic(folder: Path, count: int = DEFAULT_COUNT, seed: int = 0) -> Path:
    """Draw `count` faces into `folder` as AGE_GENDER_RACE_DATETIME.jpg.chip.jpg files."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    with atomic_folder(folder) as tmp:  # another process drawing the same set: one of the two is kept
        for i in range(count):
            age = sample_age(rng)
            gender = int(rng.random() < 0.48)
            race = int(rng.choice(5, p=[0.42, 0.19, 0.15, 0.17, 0.07]))
            stamp = f"2017{seed % 10000:04d}{i:09d}"
            draw_face(age, gender, race, rng).save(tmp / f"{age}_{gender}_{race}_{stamp}.jpg.chip.jpg", quality=92)
    return folder


def synthetic_folder(count: int = DEFAULT_COUNT, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """The folder of the synthetic set for (count, seed), drawn on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"synthetic-{count}-seed{seed}"
    if not folder.is_dir():
        write_synthetic(folder, count, seed)
    return folder
