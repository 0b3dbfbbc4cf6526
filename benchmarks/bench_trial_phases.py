"""Where one trial's time goes, and how a trial's epoch compares with a bare `model.fit`.

Phases (GPU issue, part 2: "then cut the largest of these"):
  process start     a fresh Python, to the first line of the script
  imports           keras + agesearch's training module
  backend init      the first op on the backend (CUDA/XLA client start on a GPU)
  data load         decoded images from the on-disk cache, split, train/val arrays
  to device         the train and val arrays copied to the device once (what a trial could do)
  model build       `build_model` of the config
  compile + first   the trial's first epoch less one steady epoch and the build: tracing, XLA
                    compilation of the train and val steps, first-call costs
  steady epochs     the trial's epochs after the first (train pass + val pass)
    of which val    the val pass per epoch (`model.evaluate` on val of the bare model, warm)
  after the fit     `fit` returning after its last epoch (restoring the best weights, ...)
  saving            the trained model saved as a .keras inference model
  CLI start         `agesearch run` on a fresh study up to the line it prints before its first
                    trial: process start, imports, data load, grouped split, study creation

The trial side is `agesearch.search.training.fit.fit` (what `agesearch run` calls per trial) with a
reporter that timestamps each epoch's end; the bare side is `model.fit` of the same compiled
model on the same arrays, batch size and validation data, with a callback timing each epoch.
Target (GPU issue): a trial's steady-state epoch within 1.5x of the bare one.

    python benchmarks/bench_trial_phases.py --data synthetic --image-size 32 --epochs 3 --limit 300
    python benchmarks/bench_trial_phases.py --data DIR --image-size 64 --epochs 5

Appends a section to benchmarks/RESULTS.md, or to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402

# Run in a fresh interpreter: stamps (wall clock) when the script starts, after the imports and
# after the first backend op, so that process start, imports and backend init can be told apart.
CHILD = """
import json, time
t_begin = time.time()
import keras
import agesearch.search.training.fit
t_imports = time.time()
import numpy as np
np.asarray(keras.ops.convert_to_numpy(keras.ops.ones((8, 8)) @ keras.ops.ones((8, 8))))
t_backend = time.time()
print("STAMPS " + json.dumps([t_begin, t_imports, t_backend]))
"""


def process_start(env: dict) -> dict:
    """Seconds from spawning a Python to its first line, through the imports, to the first op.

    Run after the wheel's import check on the device, so .pyc files are already written.
    """
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    line = next((l for l in out.stdout.splitlines() if l.startswith("STAMPS ")), None)
    if line is None:
        raise SystemExit(f"process-start probe failed:\n{out.stderr[-2000:]}")
    t_begin, t_imports, t_backend = json.loads(line[len("STAMPS "):])
    return {"process start": t_begin - t0, "imports": t_imports - t_begin, "backend init": t_backend - t_imports}


def first_trial_row(db: Path) -> bool:
    """Whether the study's SQLite file holds a trial yet (Optuna writes the row as the trial starts)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] > 0
    except sqlite3.Error:  # tables not made yet, or locked for a moment
        return False


def cli_start(args, env: dict) -> float:
    """Wall seconds from starting `agesearch run` on a fresh study to its first trial's row."""
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        db = Path(tmp) / "s.db"
        cmd = [
            sys.executable, "-m", "agesearch.search.cli", "run", "--space", "arch", "--n-trials", "1", "--epochs", "1",
            "--data", args.data, "--image-size", str(args.image_size), "--storage", f"sqlite:///{db}",
            "--synthetic-count", str(args.synthetic_count),
        ] + (["--limit", str(args.limit)] if args.limit else [])
        log = Path(tmp) / "log.txt"
        start = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
            seen = float("nan")
            try:
                while proc.poll() is None and time.perf_counter() - start < 300:
                    if first_trial_row(db):
                        seen = time.perf_counter() - start
                        break
                    time.sleep(0.05)
            finally:  # the trial itself is not part of this phase (and a time limit must not leave it running)
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if seen != seen:
            print(f"warning: CLI start probe saw no trial start (rc {proc.returncode}):\n{log.read_text()[-1500:]}", file=sys.stderr)
        return seen


def load_arrays(args):
    """Data as a trial gets it: decoded (cache), split, TrainingData. Returns (data, cold s, warm s)."""
    from agesearch.search.data.images import load_faces, split_indices
    from agesearch.search.data.study_data import data_folder
    from agesearch.search.training.fit import TrainingData

    folder = data_folder(args.data, synthetic_count=args.synthetic_count)
    t = time.perf_counter()
    load_faces(folder, args.image_size, limit=args.limit, seed=0)  # decodes once if the cache is cold
    first = time.perf_counter() - t
    t = time.perf_counter()
    ds = load_faces(folder, args.image_size, limit=args.limit, seed=0)
    data = TrainingData.from_split(ds, split_indices(len(ds), seed=0))
    return data, first, time.perf_counter() - t


def to_device(data) -> float:
    """Seconds to place the train and val images on the backend's device, synced."""
    import keras

    t = time.perf_counter()
    on_device = [keras.ops.convert_to_tensor(data.x_train), keras.ops.convert_to_tensor(data.x_val)]
    for a in on_device:  # a tiny read-back waits for the copy to finish (async backends)
        keras.ops.convert_to_numpy(a[:1, :1, :1, :1])
    seconds = time.perf_counter() - t
    del on_device
    return seconds


def configs(args):
    """The (ModelConfig, TrainConfig) measured: a preset if named, else the default ModelConfig."""
    import dataclasses

    from agesearch.models import ModelConfig, TrainConfig

    if args.preset:
        from agesearch.models.presets import get_preset

        try:
            model_cfg, train_cfg = get_preset(args.preset).configs(args.image_size)
        except KeyError as e:  # a one-shot device run should measure something rather than stop
            print(f"warning: {e.args[0]}; measuring ModelConfig() instead", file=sys.stderr)
            args.preset = None
    if not args.preset:
        model_cfg, train_cfg = ModelConfig(image_size=args.image_size), TrainConfig()
    # No augmentation (the bare fit trains exactly the same network), every epoch runs.
    fields = {f.name for f in dataclasses.fields(train_cfg)}
    changes = {k: v for k, v in dict(flip=False, rotation=0.0, zoom=0.0, brightness=0.0, translation=0.0, contrast=0.0).items() if k in fields}
    changes |= {"epochs": args.epochs, "patience": args.epochs + 1}
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    for item in args.set:  # e.g. precision=mixed_bfloat16, steps_per_execution=1
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {item}: TrainConfig has no field {key!r}; fields: {', '.join(sorted(fields))}")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return model_cfg, dataclasses.replace(train_cfg, **changes)


def trial_fit(model_cfg, train_cfg, data, save_dir: Path) -> dict:
    """One trial's training as `agesearch run` does it, with epoch-end stamps, then the save."""
    from agesearch.search.training.fit import fit

    ends: list[float] = []

    def reporter(epoch: int, value: float) -> bool:
        ends.append(time.perf_counter())
        return False

    start = time.perf_counter()
    result = fit(model_cfg, train_cfg, data, reporter, keep_model=True)
    done = time.perf_counter()
    t = time.perf_counter()
    from agesearch.models import inference_model

    inference_model(result.model, model_cfg, data.baselines.age_scale).save(str(save_dir / "trial.keras"))
    saving = time.perf_counter() - t
    epochs = [ends[0] - start] + [b - a for a, b in zip(ends, ends[1:])]
    return {"epochs": epochs, "after": done - ends[-1], "saving": saving, "params": result.params, "val_age_mae": result.val_age_mae}


def epoch_stamps():
    """A Keras callback recording each epoch's wall seconds (epoch-end logs are synced values)."""
    import keras

    class EpochStamps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.whole: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.whole.append(time.perf_counter() - self._t0)

    return EpochStamps()


def bare_model(model_cfg, train_cfg, data):
    """The trial's compiled model, built the way `fit` builds it (same losses, metrics, learning
    rate schedule and decade weights), and its age target scale (1 for an age output in years)."""
    import math

    from agesearch.search.training import fit as training

    scale = model_cfg.age_target_scale(data.baselines.age_scale)
    steps = math.ceil(len(data.x_train) / train_cfg.batch_size) * train_cfg.epochs
    weights = training.decade_weights(data.age_train, train_cfg.age_weighting)
    return training.build_trainable(model_cfg, train_cfg, age_scale=scale, age_weights=weights, decay_steps=steps), scale


def bare_fit(model_cfg, train_cfg, data):
    """`model.fit` of the same compiled model on the same arrays, no agesearch callbacks."""
    import keras

    from agesearch.search.training import fit as training

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(getattr(train_cfg, "precision", "float32"))
    t = time.perf_counter()
    model, scale = bare_model(model_cfg, train_cfg, data)
    build = time.perf_counter() - t

    def targets(ages):
        return training.age_targets(model_cfg, ages, scale)

    stamps = epoch_stamps()
    val = (data.x_val, {"age": targets(data.age_val), "gender": data.gender_val})
    model.fit(
        data.x_train, {"age": targets(data.age_train), "gender": data.gender_train}, validation_data=val,
        batch_size=train_cfg.batch_size, epochs=train_cfg.epochs, callbacks=[stamps], verbose=0,
    )
    # The val pass alone: JAX dispatches train steps asynchronously, so timing it inside fit
    # would charge it with the train steps still running. evaluate returns synced numbers.
    passes = []
    for _ in range(3):
        t = time.perf_counter()
        model.evaluate(*val, batch_size=train_cfg.batch_size, verbose=0)
        passes.append(time.perf_counter() - t)
    keras.mixed_precision.set_global_policy("float32")
    return {"build": build, "epochs": stamps.whole, "val": passes}


def steady(xs: list[float]) -> float:
    """Median of the epochs after the first (the first carries the compilation); NaN if none."""
    return statistics.median(xs[1:]) if len(xs) > 1 else (xs[0] if xs else float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5, help="epochs of each fit (>= 3 for a steady-state median)")
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--synthetic-count", type=int, default=1200, help="images drawn for --data synthetic")
    p.add_argument("--preset", default=None, help="a preset's model and recipe (`agesearch presets`); default: ModelConfig()")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field, e.g. --set precision=mixed_bfloat16 --set steps_per_execution=1")
    p.add_argument("--no-cli-start", action="store_true", help="skip the `agesearch run` start-up probe")
    p.add_argument("--out", default=None, help="markdown file to append to instead of benchmarks/RESULTS.md")
    args = p.parse_args()
    if args.data != "synthetic":  # the `agesearch run` processes start in temporary folders
        args.data = str(Path(args.data).expanduser().resolve())
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch carries the compilation)")
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGTERM, on_sigterm)
    m: dict = {}
    try:
        measure(args, m)
    except Stopped:
        m["stopped"] = True
    report(args, m)


class Stopped(Exception):
    """SIGTERM (a `timeout` around the script): record the phases measured so far."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped()


def measure(args, m: dict) -> None:
    """Fill `m` phase by phase, most wanted first, printing progress; a time limit keeps what is in."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    m["start"] = process_start(env)
    print(f"process start {m['start']}", flush=True)
    m["data"], m["first_load"], m["load"] = load_arrays(args)
    m["device"] = to_device(m["data"])
    m["model_cfg"], m["train_cfg"] = configs(args)
    import keras

    from agesearch.models import build_model

    keras.backend.clear_session()
    t = time.perf_counter()
    build_model(m["model_cfg"])
    m["build"] = time.perf_counter() - t
    print(f"data {m['load']:.2f} s, to device {m['device']:.2f} s, build {m['build']:.2f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        m["trial"] = trial_fit(m["model_cfg"], m["train_cfg"], m["data"], Path(tmp))
    print(f"trial epochs {[round(x, 3) for x in m['trial']['epochs']]}", flush=True)
    m["bare"] = bare_fit(m["model_cfg"], m["train_cfg"], m["data"])
    print(f"bare fit epochs {[round(x, 3) for x in m['bare']['epochs']]}", flush=True)
    if not args.no_cli_start:
        m["cli"] = cli_start(args, env)


def report(args, m: dict) -> None:
    """The phase table and the trial/bare ratio from what `measure` filled in (NaN: not measured)."""
    nan = float("nan")
    trial = m.get("trial", {"epochs": [], "after": nan, "saving": nan, "params": 0})
    bare = m.get("bare", {"epochs": [], "val": []})
    start = m.get("start", {})
    train_cfg = m.get("train_cfg")
    epochs = train_cfg.epochs if train_cfg else args.epochs
    s_trial, s_bare, val_pass = steady(trial["epochs"]), steady(bare["epochs"]), steady(bare["val"])
    first = trial["epochs"][0] if trial["epochs"] else nan
    data = m.get("data")
    n_train, n_val = (len(data.x_train), len(data.x_val)) if data is not None else (0, 0)
    mib = (data.x_train.nbytes + data.x_val.nbytes) / 2**20 if data is not None else nan
    rows = [
        ("process start (fresh Python)", start.get("process start", nan), ""),
        ("imports (keras, agesearch)", start.get("imports", nan), ""),
        ("backend init (first op)", start.get("backend init", nan), ""),
        ("data load (cache) + split", m.get("load", nan), f"first call {m.get('first_load', nan):.2f} s; {n_train} train / {n_val} val images"),
        ("train+val arrays to device", m.get("device", nan), f"{mib:.0f} MiB uint8"),
        ("model build", m.get("build", nan), f"{trial['params']:,} params"),
        ("compile + first steps", max(first - s_trial - m.get("build", nan), 0.0) if first == first else nan, f"trial's epoch 1 {first:.2f} s - steady epoch - build"),
        (f"steady epochs (x{epochs - 1})", s_trial * (epochs - 1), f"{s_trial:.3f} s/epoch, {n_train / s_trial:,.0f} train img/s incl. val"),
        ("  of which val pass", val_pass * (epochs - 1), f"{val_pass:.3f} s/epoch (model.evaluate on val)"),
        ("after the last epoch", trial["after"], "fit's return: best weights restored, per-decade val MAE, ..."),
        ("saving (.keras)", trial["saving"], ""),
        ("CLI start to first trial", m.get("cli", nan), "`agesearch run`, fresh study (overlaps rows 1-4)"),
    ]
    table = ["| phase | seconds | note |", "| --- | ---: | --- |"] + [f"| {name} | {sec:.2f} | {note} |" for name, sec, note in rows]
    ratio = s_trial / s_bare
    timed = [r for r in rows[:7] + rows[9:11] if r[1] == r[1]]
    lines = [
        f"data: {args.data} at {args.image_size} px, limit {args.limit}; model: {args.preset or 'ModelConfig() default'}, {trial['params']:,} params; {epochs} epochs, no augmentation",
        f"train config: {train_cfg}",
        f"trial epochs (s): {', '.join(f'{x:.3f}' for x in trial['epochs'])}",
        f"bare model.fit epochs (s): {', '.join(f'{x:.3f}' for x in bare['epochs'])} (val pass alone: {', '.join(f'{x:.3f}' for x in bare['val'])} s)",
        f"steady-state epoch, trial / bare fit: {s_trial:.3f} / {s_bare:.3f} s = **{ratio:.2f}x** (target <= 1.5x: {'met' if ratio <= 1.5 else 'not met' if ratio == ratio else 'not measured'})",
        f"largest phase of a {epochs}-epoch trial outside the steady epochs: {max(timed, key=lambda r: r[1])[0] if timed else 'n/a'}",
    ]
    if m.get("stopped"):
        lines.append("stopped by SIGTERM (time limit): NaN rows were not measured")
    record(f"Trial phases and trial vs bare fit, {args.image_size} px", lines, out=args.out, table=table)


if __name__ == "__main__":
    main()
