"""`agesearch export --format`: the model in a file that runs without agesearch (or Keras).

The `.keras` file is always written: `evaluate`, `predict` and the card's reload check use it,
and it is the one format that can be trained further. `--format onnx|litert|saved_model` writes
the same inference model (input `image`: float32 RGB in the 0-255 range, (batch, size, size,
3); outputs `age` in years and `gender` = P(female), (batch, 1) each) beside it, by Keras 3's
own exporter (`model.export(path, format=...)`): agesearch's layers (the age heads, the flip
and the averaging of an ensemble) become plain graph ops, so the file needs neither agesearch
nor Keras to run:

    format       file beside model.keras   made by (TensorFlow backend)         runs in
    onnx         model.onnx                tf2onnx (pip install agesearch[onnx])  onnxruntime
    litert       model.tflite              TensorFlow's TFLite converter        ai-edge-litert (or TF)
    saved_model  model_saved_model/        TensorFlow                           TensorFlow, TF Serving

Each file is checked after it is written: it predicts a few of the study's test images in its
own runtime, and the largest difference from the Keras model goes into the card (`exports`);
a file that differs by more than `TOLERANCE` fails the export. A runtime that is not installed
leaves the file unchecked, and the card says so. Only the TensorFlow backend exports these
formats here (the .keras file itself is backend-neutral: export with KERAS_BACKEND=tensorflow).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from agesearch.search.errors import UsageError
from agesearch.search.files import atomic_path

FORMATS = ("keras", "onnx", "litert", "saved_model")
KERAS_NAME = {"onnx": "onnx", "litert": "litert", "saved_model": "tf_saved_model"}  # model.export's names
# (module that must be importable to write the format, the pip extra that installs it)
NEEDS = {"onnx": ("tf2onnx", "onnx")}
ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(uint8)": "uint8", "tensor(int64)": "int64"}  # as NumPy names them
# Largest difference (years or probability) allowed between the Keras model and the exported file.
TOLERANCE = 1e-3


def format_path(out: Path, fmt: str) -> Path:
    """Where `fmt` goes beside the .keras file `out`: model.onnx, model.tflite, model_saved_model/."""
    out = Path(out)
    if fmt == "keras":
        return out
    if fmt == "saved_model":
        return out.with_name(f"{out.stem}_saved_model")
    return out.with_suffix({"onnx": ".onnx", "litert": ".tflite"}[fmt])


def check_format(fmt: str, *, backend: str | None = None) -> None:
    """Fail in one line, before anything trains, if `fmt` cannot be written here.

    Args:
        fmt: one of FORMATS.
        backend: Keras' backend; None: Keras' own if it is imported already, else
            KERAS_BACKEND's if set, else not checked (the CLI calls this before Keras loads, and
            the export functions again after).

    Raises:
        UsageError: an unknown format, a backend other than TensorFlow, or the package that
            writes the format not installed (naming the pip extra).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "keras":
        return
    if backend is None and "keras" in sys.modules:
        import keras

        backend = keras.backend.backend()
    backend = backend or os.environ.get("KERAS_BACKEND")
    if backend is not None and backend != "tensorflow":
        raise UsageError(f"--format {fmt} is written through TensorFlow; Keras runs on {backend} here: run export with KERAS_BACKEND=tensorflow")
    if fmt in NEEDS:
        module, extra = NEEDS[fmt]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--format {fmt} needs the {module} package: pip install 'agesearch[{extra}]'")


def export_format(model, out: Path, fmt: str, probe: np.ndarray) -> dict:
    """Write `model` (an inference model) as `fmt` beside the .keras file `out`, check it, return
    the card's entry: file, inputs and outputs as the file declares them, and the largest
    difference from `model` on `probe` (uint8-range images) in the file's own runtime.

    Raises:
        UsageError: the file computes other answers than the model (more than TOLERANCE).
    """
    path = format_path(out, fmt)
    # Written under a temporary name (the LiteRT exporter wants the .tflite suffix: atomic_path
    # keeps it) and renamed only once it computes the model's answers.
    with _replacing_folder(path) if fmt == "saved_model" else atomic_path(path) as tmp:
        _write(model, tmp, fmt)
        entry = _check(model, tmp, fmt, probe)
        diff = entry["max_abs_diff"]
        if diff is not None and diff > TOLERANCE:
            raise UsageError(f"the {fmt} file does not reproduce the model (largest difference {diff:.3g}); nothing was exported")
    return {"format": fmt, "file": path.name} | entry


def _write(model, path: Path, fmt: str) -> None:
    with warnings.catch_warnings():
        # tf2onnx's NumPy 2 patch in Keras warns about `np.object`; it means nothing to the user.
        warnings.simplefilter("ignore")
        model.export(str(path), format=KERAS_NAME[fmt], verbose=False)


def _check(model, path: Path, fmt: str, probe: np.ndarray) -> dict:
    """What the file declares and how far its answers are from the model's, or why unchecked."""
    x = np.asarray(probe, dtype="float32")
    out = model.predict(x, verbose=0)
    want = {k: np.asarray(out[k], dtype=float).reshape(-1) for k in ("age", "gender")}
    run = {"onnx": _run_onnx, "litert": _run_litert, "saved_model": _run_saved_model}[fmt]
    try:
        got, signature, runtime = run(path, x)
    except ImportError as e:
        return {"checked_with": None, "max_abs_diff": None, "not_checked": f"{e.name or e} is not installed"}
    diff = max(float(np.max(np.abs(want[k] - np.asarray(got[k], dtype=float).reshape(-1)), initial=0.0)) for k in want)
    return signature | {"checked_with": runtime, "checked_on": len(x), "max_abs_diff": diff}


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


def _run_onnx(path: Path, x: np.ndarray):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = lambda s: [d if isinstance(d, int) else None for d in s]  # noqa: E731  (a named dynamic axis is the batch)
    dtype = lambda t: ONNX_TYPES.get(t, t)  # noqa: E731
    signature = {
        "inputs": [{"name": i.name, "shape": shape(i.shape), "dtype": dtype(i.type)} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": shape(o.shape), "dtype": dtype(o.type)} for o in session.get_outputs()],
    }
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))
    return got, signature, _version("onnxruntime")


def _run_litert(path: Path, x: np.ndarray):
    try:
        from ai_edge_litert.interpreter import Interpreter

        runtime = _version("ai-edge-litert")
    except ImportError:  # TensorFlow's own interpreter (deprecated there in favour of ai-edge-litert)
        import tensorflow as tf

        Interpreter, runtime = tf.lite.Interpreter, f"tensorflow {tf.__version__} (tf.lite)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        runner = Interpreter(model_path=str(path)).get_signature_runner()
    ins, outs = runner.get_input_details(), runner.get_output_details()
    # The signature's batch is 1; the runner resizes it to the batch it is given.
    shape = lambda d: [None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]  # noqa: E731
    signature = {
        "inputs": [{"name": k, "shape": shape(v), "dtype": np.dtype(v["dtype"]).name} for k, v in ins.items()],
        "outputs": [{"name": k, "shape": shape(v), "dtype": np.dtype(v["dtype"]).name} for k, v in outs.items()],
    }
    return runner(**{next(iter(ins)): x}), signature, runtime


def _run_saved_model(path: Path, x: np.ndarray):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    spec = serve.structured_input_signature[1]
    signature = {
        "inputs": [{"name": k, "shape": list(v.shape), "dtype": v.dtype.name} for k, v in spec.items()],
        "outputs": [{"name": k, "shape": list(v.shape), "dtype": v.dtype.name} for k, v in serve.structured_outputs.items()],
        "signature": "serving_default",
    }
    got = {k: v.numpy() for k, v in serve(**{next(iter(spec)): tf.constant(x)}).items()}
    return got, signature, f"tensorflow {tf.__version__}"


@contextmanager
def _replacing_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` that replaces `path` (an older export) when the block ends
    without error. (files.atomic_folder keeps the first writer's folder: right for a cache, wrong
    for a model exported again.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
