"""Atomic writes: a file or a folder appears whole or not at all.

Every file agesearch writes (the decoded-image cache, the synthetic set, the duplicates cache,
models, model cards, reports) is read by something else: a later run, another Ray worker, a
browser reloading the report, optuna-dashboard. Writing to a temporary name in the same folder
and renaming it into place (`os.replace`, atomic on POSIX and Windows within one file system)
means a crash or a concurrent reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` when the block ends without error.

    For writers that want a file name rather than bytes (`keras.Model.save`, `np.save`): the
    temporary name keeps `path`'s suffix, because Keras picks the format from it.

    Example:
        with atomic_path(out) as tmp:
            model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | Path, obj, *, indent: int | None = None, default=None) -> Path:
    """Write `obj` as JSON to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(obj, indent=indent, default=default))


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path`, renamed to `path` when the block ends without error.

    If `path` appeared meanwhile (another process wrote the same entry first), theirs is kept
    and this one is dropped: the folders written here are caches, so either is as good.
    On error the temporary folder is removed and the error goes on.

    Example:
        with atomic_folder(entry) as tmp:
            np.save(tmp / "images.npy", images)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)  # refuses to replace a non-empty folder: the first writer wins
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
