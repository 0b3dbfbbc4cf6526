"""Does weight averaging steady the search? Configs trained with and without the optimizer's EMA, over seeds.

Issue 22: val curves are noisy (preset D at 64 px: 0.937, 0.848, 0.861, 0.853, 0.911, then 0.740),
so a trial's best epoch is partly luck. `TrainConfig.ema_momentum` scores val on the weights'
exponential moving average (Keras' optimizer `use_ema`, swapped in by `SwapEMAWeights`) and keeps
that average. This trains each config with each momentum (0 = off) and training seeds 0..N-1
(TrainConfig.seed: the same draws for every momentum), on the split `agesearch run` makes
(`load_data`, data seed 0), with the search's early stopping, and prints and records per config
and momentum, mean and sd over the seeds:
  - the val objective at the best epoch (what a trial records) and its sd (the seed noise);
  - the roughness of the val curve: mean |objective change| between consecutive epochs;
  - the mean val objective of the last 3 epochs run (the other smoothing the issue names: an
    objective over the last epochs instead of the best one), and its sd over the seeds;
  - the test split's age MAE and gender accuracy of the kept weights (as an export scores them).
Keep EMA only where it lowers both the seed spread and the test MAE.

Configs: `--preset NAME` (its own recipe) and/or `--trial DB:N` (trial N's model and training
config in the study file DB, e.g. the best searched trial), each with `--epochs` epochs.

Usage (2 configs x 2 momenta x 3 seeds = 12 fits):
  python benchmarks/weight_averaging.py --data DIR --preset double-conv-stem --trial studies/cnn.db:7
Smoke: python benchmarks/weight_averaging.py --data synthetic --preset double-conv-stem --epochs 1 --seeds 1 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--preset", action="append", default=[], help="a preset to train on its recipe (repeatable)")
    p.add_argument("--trial", action="append", default=[], metavar="DB:N", help="trial N of the study in the SQLite file DB (repeatable)")
    p.add_argument("--momenta", default="0,0.99", help="EMA momenta to compare, comma-separated (0 = off; default 0,0.99)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per config and momentum")
    p.add_argument("--synthetic-count", type=int, default=1200, help="images of --data synthetic")
    p.add_argument("--out", help="append the record here instead of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if not args.preset and not args.trial:
        p.error("name at least one config: --preset NAME or --trial DB:N")
    try:
        args.momenta = [float(m) for m in args.momenta.split(",")]
    except ValueError:
        p.error(f"--momenta: comma-separated numbers in [0, 1), got {args.momenta!r}")
    if any(not 0 <= m < 1 for m in args.momenta):
        p.error(f"--momenta: each must be in [0, 1), got {args.momenta}")
    for spec in args.trial:
        db, _, number = spec.rpartition(":")
        if not db or not number.isdigit() or not Path(db).is_file():
            p.error(f"--trial {spec!r}: expected DB:N with DB an existing study file and N a trial number")
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    return args


def configs(args) -> dict[str, tuple]:
    """label -> (ModelConfig, TrainConfig) at --image-size and --epochs."""
    import optuna

    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.models.presets import get_preset

    out = {}
    for name in args.preset:
        model_cfg, train_cfg = get_preset(name).configs(args.image_size)
        out[f"preset {name}"] = (model_cfg, dataclasses.replace(train_cfg, epochs=args.epochs))
    for spec in args.trial:
        db, _, number = spec.rpartition(":")
        url = f"sqlite:///{Path(db).resolve()}"
        study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
        attrs = study.trials[int(number)].user_attrs
        model_cfg = dataclasses.replace(ModelConfig.from_dict(attrs["model_config"]), image_size=args.image_size)
        out[f"{study.study_name} #{number}"] = (model_cfg, dataclasses.replace(TrainConfig.from_dict(attrs["train_config"]), epochs=args.epochs))
    return out


def mean_sd(values: list[float], spec: str = ".3f") -> str:
    return f"{values[0]:{spec}}" if len(values) == 1 else f"{statistics.mean(values):{spec}} ± {statistics.stdev(values):{spec}}"


def main() -> None:
    args = parse_args()
    from agesearch.models.inference import inference_model
    from agesearch.search.export.trial import score_on_test
    from agesearch.search.loop.run import DataSpec, load_data
    from agesearch.search.training.fit import fit

    ds, split, data = load_data(DataSpec(data=args.data, image_size=args.image_size, seed=0, synthetic_count=args.synthetic_count))
    runs: dict[tuple[str, float], list[dict]] = {}
    for label, (model_cfg, train_cfg) in configs(args).items():
        for seed in range(args.seeds):
            for momentum in args.momenta:
                start = time.perf_counter()
                r = fit(model_cfg, dataclasses.replace(train_cfg, seed=seed, ema_momentum=momentum), data, keep_model=True)
                test = score_on_test(inference_model(r.model, model_cfg, data.baselines.age_scale), ds, split)
                curve = r.history["val_objective"]
                row = {"seed": seed, "objective": r.objective, "last3": float(np.mean(curve[-3:])), "roughness": float(np.mean(np.abs(np.diff(curve)))) if len(curve) > 1 else 0.0,
                       "test_age_mae": test["age_mae"], "test_gender_accuracy": test["gender_accuracy"], "best_epoch": r.best_epoch,
                       "seconds": time.perf_counter() - start}
                runs.setdefault((label, momentum), []).append(row)
                print(f"{label}  ema {momentum:g}  seed {seed}  objective {r.objective:.4f}  roughness {row['roughness']:.4f}  "
                      f"test MAE {test['age_mae']:.2f} y  test acc {test['gender_accuracy']:.3f}  best epoch {r.best_epoch}  {row['seconds']:.0f} s", flush=True)

    keys = ("objective", "last3", "roughness", "test_age_mae", "test_gender_accuracy")
    table = ["| config | EMA momentum | val objective (best epoch) | val objective (mean of last 3) | val curve roughness | test age MAE (y) | test gender acc | best epochs | s/fit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (label, momentum), rows in runs.items():
        table.append(f"| {label} | {momentum:g} | " + " | ".join(mean_sd([row[k] for row in rows]) for k in keys)
                     + f" | {', '.join(str(row['best_epoch']) for row in rows)} | {statistics.mean(row['seconds'] for row in rows):.0f} |")
    lines = [
        f"data: {len(ds)} images at {args.image_size} px, split {len(split.train)}/{len(split.val)}/{len(split.test)} (train/val/test, `agesearch run`'s, data seed 0)",
        f"{args.epochs} epochs, the search's early stopping; training seeds 0..{args.seeds - 1} (TrainConfig.seed), the same for every momentum; "
        f"{'mean ± sd over the seeds' if args.seeds > 1 else 'one seed'}",
        "val objective at the best epoch (the kept weights); roughness = mean |change| of the val objective between consecutive epochs; "
        "test = the kept weights on the test split",
    ]
    record(f"Weight averaging (optimizer EMA) against none, {args.image_size} px", lines, out=args.out, table=table)


if __name__ == "__main__":
    main()
