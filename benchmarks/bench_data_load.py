"""Dataset load time: cold (decode every JPEG) vs cached (read the uint8 arrays back).

Target (foundation issue): cached >= 20x faster than cold for the 5,000 UTKFace images.
Usage: python benchmarks/bench_data_load.py --data DIR [--image-size 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402

from agesearch.search.data.images import load_faces  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ds = load_faces(args.data, args.image_size, cache_dir=Path(cache))
        cold = time.perf_counter() - start
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_faces(args.data, args.image_size, cache_dir=Path(cache))
            cached.append(time.perf_counter() - start)
    best = min(cached)
    record(
        f"Dataset load, cold vs cached, {args.image_size} px",
        [
            f"images: {len(ds)} from {args.data}, array {ds.images.nbytes / 2**20:.0f} MiB",
            f"cold (decode + resize + write cache): {cold:.2f} s",
            f"cached (best of {args.repeats}): {best:.3f} s",
            f"speed-up: {cold / best:.0f}x (target >= 20x)",
        ],
    )


if __name__ == "__main__":
    main()
