"""Import Keras (and so TensorFlow) without its start-up chatter, keeping real errors.

TensorFlow's C++ libraries print absl's pre-init line ("All log messages before
absl::InitializeLog() is called are written to STDERR") and the oneDNN notice straight to file
descriptor 2 while they load, once per shared library, even with TF_CPP_MIN_LOG_LEVEL=3: no
Python setting reaches them. So the import runs with fd 2 pointed at a temporary file; after it,
fd 2 is restored and every captured line that is not known chatter is written back, so a real
warning or error printed during the import still shows. Nothing else runs while fd 2 is away.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Set before the first TensorFlow import; a value the user set wins.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # C++ INFO and WARNING off, errors still shown
    "GRPC_VERBOSITY": "ERROR",
}

# Lines TensorFlow prints at import that say nothing about the user's run.
CHATTER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
)


def quiet_environment() -> None:
    """Set the frameworks' log environment (before their first import)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def import_keras_quietly():
    """`import keras` with the C++ start-up lines filtered out of stderr; returns the module.

    Cheap after the first call (the module is already loaded, nothing is redirected).
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    quiet_environment()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _replay(captured.read().decode(errors="replace"))
    return keras


def _replay(text: str) -> None:
    """Write the captured lines back to stderr, less the known chatter."""
    kept = [line for line in text.splitlines() if line.strip() and not CHATTER.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)
