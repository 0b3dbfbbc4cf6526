"""Which age head? One preset trained with each age head (regression, DLDL-v2, CORAL), over seeds.

The same model and training (default: the preset `double-conv-stem` at 32 px, 9 epochs, its
early stopping) with only `age_head` changed, on the split `agesearch run` makes (the same
`load_data`: grouped near-duplicate split, data seed 0, 70/15/15), each head trained once per
training seed (TrainConfig.seed, so the weights, shuffling, augmentation and dropout of seed k
are the same draws for every head). Per head: the val age MAE, val gender accuracy and val
objective at the best epoch (what a trial records), and the TEST split's age MAE and gender
accuracy of the restored best weights (the inference model, as an export scores it); mean and
sd over the seeds, then one row per run.

Every head keeps the preset's training config, `age_loss_weight` included (0.1 for
double-conv-stem, chosen for its MSE on years); `--age-loss-weight` sets one weight for all.
DLDL's loss is the paper's (KL + |E - age| in years, lambda 1), with sigma `--dldl-sigma`.

Usage (3 heads x 3 seeds = 9 fits; the 1-epoch smoke on 1,200 synthetic faces took 30-50 s a fit on 2 busy cores):
  python benchmarks/age_heads.py --data DIR
Smoke: python benchmarks/age_heads.py --data synthetic --epochs 1 --seeds 1 --image-size 32 --out /tmp/x.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402

HEADS = ("regression", "dldl", "coral")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--preset", default="double-conv-stem", help="the model and training to compare the heads on")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per head")
    p.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated, of {', '.join(HEADS)}")
    p.add_argument("--dldl-sigma", type=float, default=2.0, help="DLDL label distribution width, years")
    p.add_argument("--age-loss-weight", type=float, help="one age loss weight for every head (default: the preset's)")
    p.add_argument("--limit", type=int, help="a seeded random subset of this many images")
    p.add_argument("--synthetic-count", type=int, default=1200, help="images of --data synthetic")
    p.add_argument("--out", help="append the record here instead of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if not heads or any(h not in HEADS for h in heads):
        p.error(f"--heads: each must be one of {', '.join(HEADS)}; got {args.heads!r}")
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    args.heads = heads
    return args


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    args = parse_args()
    from agesearch.models.inference import inference_model
    from agesearch.models.presets import get_preset
    from agesearch.search.loop.run import DataSpec, load_data
    from agesearch.search.export.trial import score_on_test
    from agesearch.search.training.fit import fit

    ds, split, data = load_data(DataSpec(data=args.data, image_size=args.image_size, seed=0, limit=args.limit, synthetic_count=args.synthetic_count))
    model0, train0 = get_preset(args.preset).configs(args.image_size)
    train0 = dataclasses.replace(train0, epochs=args.epochs)
    if args.age_loss_weight is not None:
        train0 = dataclasses.replace(train0, age_loss_weight=args.age_loss_weight)

    runs: dict[str, list[dict]] = {h: [] for h in args.heads}
    for seed in range(args.seeds):
        for head in args.heads:
            model_cfg = dataclasses.replace(model0, age_head=head, dldl_sigma=args.dldl_sigma)
            start = time.perf_counter()
            r = fit(model_cfg, dataclasses.replace(train0, seed=seed), data, keep_model=True)
            test = score_on_test(inference_model(r.model, model_cfg, data.baselines.age_scale), ds, split)
            row = {"seed": seed, "val_age_mae": r.val_age_mae, "val_gender_accuracy": r.val_gender_accuracy, "objective": r.objective,
                   "test_age_mae": test["age_mae"], "test_gender_accuracy": test["gender_accuracy"], "best_epoch": r.best_epoch,
                   "epochs_run": r.epochs_run, "seconds": time.perf_counter() - start}
            runs[head].append(row)
            print(f"{head:10s} seed {seed}  val MAE {r.val_age_mae:.2f} y  val acc {r.val_gender_accuracy:.3f}  objective {r.objective:.4f}  "
                  f"test MAE {test['age_mae']:.2f} y  test acc {test['gender_accuracy']:.3f}  best epoch {r.best_epoch}  {row['seconds']:.0f} s", flush=True)

    keys = ("val_age_mae", "val_gender_accuracy", "objective", "test_age_mae", "test_gender_accuracy")
    sd = "mean ± sd" if args.seeds > 1 else "one seed"
    table = [f"| head | val age MAE (y) | val gender acc | val objective | test age MAE (y) | test gender acc | best epoch | s/fit |",
             "|---|---|---|---|---|---|---|---|"]
    for head, rows in runs.items():
        cells = [mean_sd([row[k] for row in rows]) for k in keys]
        table.append(f"| {head} ({sd}) | " + " | ".join(cells) + f" | {', '.join(str(row['best_epoch']) for row in rows)} | {statistics.mean(row['seconds'] for row in rows):.0f} |")
    for head, rows in runs.items():
        for row in rows:
            table.append(f"| {head}, seed {row['seed']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + f" | {row['best_epoch']} | {row['seconds']:.0f} |")
    lines = [
        f"data: {len(ds)} images at {args.image_size} px, split {len(split.train)}/{len(split.val)}/{len(split.test)} (train/val/test, `agesearch run`'s, data seed 0)",
        f"config: preset `{args.preset}`, {args.epochs} epochs (early stopping as the search's), age_loss_weight {train0.age_loss_weight}, "
        f"DLDL sigma {args.dldl_sigma}; only `age_head` differs; training seeds 0..{args.seeds - 1} (TrainConfig.seed)",
        f"val at the best epoch (restored weights); test = the restored model on the test split; trivial val MAE {data.baselines.mae_trivial:.2f} y, "
        f"trivial gender error {data.baselines.error_trivial:.3f}",
    ]
    record(f"Age heads: {', '.join(args.heads)} on `{args.preset}`", lines, out=args.out, table=table)


if __name__ == "__main__":
    main()
