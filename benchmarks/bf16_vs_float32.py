"""float32 vs mixed_bfloat16: the bf16 test's tiny model and data, several seeds, 5 epochs, batch 16.

Usage: python benchmarks/bf16_vs_float32.py [--seeds 0 5] [--epochs 5] [--batch 16]
  (TF_ENABLE_ONEDNN_OPTS=0 for the run without oneDNN/AMX; the old SEED0, SEEDS, EPOCHS and BATCH
  environment variables still set the defaults). The data is the built-in synthetic set: no --data.
Prints per-epoch val MAE, objective and accuracy per seed and precision, and the epoch kept.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs=2, metavar=("FIRST", "STOP"), default=[int(os.environ.get("SEED0", 0)), int(os.environ.get("SEEDS", 3))],
                   help="seeds FIRST..STOP-1 (default: $SEED0 or 0, $SEEDS or 3)")
    p.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 5)), help="epochs per fit")
    p.add_argument("--batch", type=int, default=int(os.environ.get("BATCH", 16)), help="batch size")
    args = p.parse_args()

    import keras
    import numpy as np

    from agesearch.models import ModelConfig, TrainConfig
    from agesearch.search.data.images import Split, default_cache_dir, load_faces, split_indices
    from agesearch.search.data.synthetic import synthetic_folder
    from agesearch.search.training.fit import TrainingData, fit

    tiny = ModelConfig(image_size=16, shared_blocks=1, age_blocks=2, gender_blocks=1, filters=(8, 16, 16), dense_dropout=0.0, age_dense=16, gender_dense=16)
    cache = default_cache_dir()
    folder = synthetic_folder(1200, seed=0, cache_dir=cache)
    ds = load_faces(folder, 16, cache_dir=cache)
    split = split_indices(len(ds), seed=0)
    rng = np.random.default_rng(0)  # as tests/search/training/test_training_options.py's `data` fixture
    train, val = (np.sort(rng.choice(idx, n, replace=False)) for idx, n in ((split.train, 320), (split.val, 96)))
    data = TrainingData.from_split(ds, Split(train=train, val=val, test=split.test))
    print(f"onednn={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')} train={len(data.x_train)} val=96 mae_trivial={data.baselines.mae_trivial:.2f} error_trivial={data.baselines.error_trivial:.3f}", flush=True)
    for seed in range(*args.seeds):
        for precision in ("float32", "mixed_bfloat16"):
            keras.utils.set_random_seed(seed)
            t = time.time()
            r = fit(tiny, TrainConfig(epochs=args.epochs, batch_size=args.batch, precision=precision), data)
            print(f"seed {seed} {precision:15s} val_age_mae per epoch {[round(v, 2) for v in r.history['val_age_mae']]} "
                  f"objective per epoch {[round(v, 3) for v in r.history['val_objective']]} kept epoch {r.best_epoch + 1}: {r.val_age_mae:.2f} y "
                  f"val_acc per epoch {[round(v, 3) for v in r.history['val_gender_accuracy']]} ({time.time()-t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
