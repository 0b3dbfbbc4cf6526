"""The errors agesearch raises on purpose, in one light module (no framework import).

`UsageError` is what the user sees: the CLI prints it as one line `agesearch: error: ...` and
exits 2. The domain errors (bad data, an unusable storage, a study resumed with other settings,
a Ray cluster that cannot be used) are raised by the modules that find them; the CLI turns each
into a `UsageError` line. They live here, not in their modules, so that the CLI can catch them
without importing Optuna, SQLAlchemy, Keras or Ray, and so that no module needs to import the CLI.
"""

from __future__ import annotations

EXIT_USAGE = 2  # argparse's own exit status for bad input
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""


class DataError(ValueError):
    """Input data that cannot be used: missing folder, no parsable image, too few images, ..."""


class StorageError(ValueError):
    """A storage URL that cannot be used, or a study that is not in it."""


class StudyMismatch(ValueError):
    """Resuming a study with other data, split, image size, space or objective."""


class DistributedError(RuntimeError):
    """A Ray cluster or runtime that cannot be used (not installed, unreachable, refused)."""


# Domain errors that are the user's input (or environment) rather than a bug: the CLI prints
# them as one line and exits 2.
USER_ERRORS: tuple[type[Exception], ...] = (UsageError, DataError, StorageError, StudyMismatch, DistributedError)
