"""Per-trial overhead of `agesearch run` against a bare `keras.Model.fit` of the same model.

Both train the same fixed config (the `train` space's write-up model) on the same arrays for
the same epochs. The bare side is build + compile + fit; the agesearch side is a trial's
duration as Optuna recorded it (sampling, clear_session, build, fit with the per-epoch
report and early stopping callbacks, SQLite writes of intermediate values and user attrs,
saving the best model). Target (foundation issue): overhead <= 10 %.
Usage: python benchmarks/bench_overhead.py --data DIR|synthetic [--image-size 64] [--epochs 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--limit", type=int, default=2000)
    args = p.parse_args()
    warnings.simplefilter("ignore")

    import keras
    import optuna

    from agesearch.search.cli import main as cli_main
    from agesearch.search.data.study_data import data_folder
    from agesearch.search.data.images import load_faces, split_indices
    from agesearch.models.config import TrainConfig
    from agesearch.search.training.fit import TrainingData, build_trainable
    from agesearch.spaces import SPACES
    from agesearch.spaces.train import seed_model

    model_cfg = seed_model(args.image_size)
    train_cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, flip=False)

    def fixed(trial, image_size):  # one config, so both sides train the same network
        trial.suggest_int("repeat", 0, 1000)
        return model_cfg, train_cfg

    SPACES["bench_fixed"] = fixed
    folder = data_folder(args.data)
    ds = load_faces(folder, args.image_size, limit=args.limit, seed=0)
    data = TrainingData.from_split(ds, split_indices(len(ds), seed=0))
    scale = data.baselines.age_scale

    bare = []
    for _ in range(args.trials):
        keras.backend.clear_session()
        start = time.perf_counter()
        model = build_trainable(model_cfg, train_cfg)  # same compile (losses, weights, metrics)
        model.fit(
            data.x_train, {"age": data.age_train / scale, "gender": data.gender_train},
            validation_data=(data.x_val, {"age": data.age_val / scale, "gender": data.gender_val}),
            batch_size=train_cfg.batch_size, epochs=args.epochs, verbose=0,
        )
        bare.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            code = cli_main(["run", "--space", "bench_fixed", "--data", str(folder), "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--n-trials", str(args.trials), "--limit", str(args.limit), "--pruner", "none"])
            wall = time.perf_counter() - start
            assert code == 0
            study = optuna.load_study(study_name="bench_fixed", storage="sqlite:///studies/bench_fixed.db")
            trial_secs = [t.duration.total_seconds() for t in study.trials]
        finally:
            os.chdir(cwd)

    b, a = statistics.median(bare), statistics.median(trial_secs)
    record(
        f"Per-trial overhead of agesearch run vs bare fit, {args.image_size} px",
        [
            f"data: {len(ds)} images from {folder}, {args.epochs} epochs, model {model_cfg.filters} (write-up model), batch {train_cfg.batch_size}",
            f"bare build+compile+fit, median of {args.trials}: {b:.2f} s ({', '.join(f'{x:.2f}' for x in bare)})",
            f"agesearch trial duration, median of {args.trials}: {a:.2f} s ({', '.join(f'{x:.2f}' for x in trial_secs)})",
            f"overhead per trial: {100 * (a - b) / b:+.1f} % (target <= 10 %)",
            f"whole `agesearch run` wall time incl. data load and study setup: {wall:.1f} s",
        ],
    )


if __name__ == "__main__":
    main()
