"""KerasTuner's Hyperband on agesearch's data, training and objective: the search algorithm is the only difference.

The fairest comparison the brief allows: each KerasTuner trial's hyperparameters become an
agesearch `ModelConfig` + `TrainConfig`, and a custom `keras_tuner.Hyperband.run_trial` trains
them with agesearch's own `fit` (search/training: clear state, build, fit with early stopping on
the val objective, best weights restored) on the same images and the same train/val split that
`agesearch run` uses (its `load_data(DataSpec(...))`, grouped near-duplicate split, seed 0), and
returns agesearch's combined val objective
    val_age_mae / mae_trivial + val_gender_error / error_trivial   (minimised)
at the best epoch, exactly the value an agesearch trial reports. KerasTuner decides which
configs to train and for how many epochs (Hyperband: max_epochs = --epochs, factor 3, brackets
repeated until the budget is spent).

What differs from KerasTuner's stock Hyperband, on purpose:
  - no warm start between rungs: a promoted config is trained from scratch for its rung's
    epochs (stock Hyperband reloads the previous rung's weights and trains only the extra
    epochs; at factor 3 that saves up to a third of a promoted config's epochs). agesearch's
    `fit` builds its own model, so reusing it leaves no hook for loading weights; the timeline
    records each trial's epochs so the cost can be judged. agesearch's trials do not carry
    weights over either (its pruner stops a trial, it does not resume one).
  - the space is agesearch's main knobs, not all of them (spaces/arch.py + spaces/train.py):
    depth (the `arch` range for the image size), split point (`split` 0-1 in quarters of the
    depth: shared_blocks = round(split x depth); the gender branch as long as the age branch),
    filters per block (16-512, `filters_bK`, the first `depth` used), block order (BN before or
    after ReLU, or none), block dropout (0-0.3) and dense dropout (0-0.7), dense width per branch
    (64-512), age loss weight (1e-3-10, log), optimizer (adam, adamw, rmsprop, sgd), learning
    rate (1e-4-1e-2, log), batch size (32, 64, 128). Everything else takes agesearch's config
    defaults (kernel 3, max pooling, flatten, no L2, normalised linear age output, MAE age loss,
    flips, constant learning rate, float32). No presets: KerasTuner starts from random points.
  - the budget: no trial starts after --budget seconds (KerasTuner has no timeout; this script
    stops it between trials); a running trial finishes, and trials that finish after the budget
    are listed but not counted, as in search_vs_presets.py. t = 0 is the start of the search,
    after the data loaded (agesearch's clock also starts after its data load).
Everything runs in this one process, as agesearch's in-process executor does.

Recorded: the trials inside the budget (complete, failed, epochs trained), the best objective
and when it was reached, the best-so-far curve (each time a new best was reached), and a JSON
timeline (--timeline; default benchmarks/timelines/kerastuner_hyperband-<label>-<time>.json).
With --against A.json (a search_vs_presets.py timeline) the budget defaults to that run's
(10 U) and the record says whether agesearch reached KerasTuner's best objective in <= 0.5x the
time KerasTuner took to reach it (both clocks from their first trial; agesearch's presets count
as agesearch's trials).

Usage (the full-size run, after search_vs_presets.py on the same machine):
  python benchmarks/kerastuner_hyperband.py --data DIR --against benchmarks/timelines/search_vs_presets-default-<time>.json
  python benchmarks/kerastuner_hyperband.py --data DIR --budget 1800          # no comparison
Smoke: python benchmarks/kerastuner_hyperband.py --data synthetic --synthetic-count 300 --epochs 2 \
  --budget 60 --label smoke --out /tmp/kt.md
Needs keras-tuner (`pip install keras-tuner`, or the `bench` extra); --help works without it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from _record import RESULTS, add_data_argument, neutral_paths, record  # noqa: E402

FILTERS = [16, 32, 64, 128, 256, 512]  # spaces/arch.py's choices
DENSE = [64, 128, 256, 512]
BLOCK_ORDERS = ["conv_bn_relu", "conv_relu_bn", "conv_relu"]
OPTIMIZERS = ["adam", "adamw", "rmsprop", "sgd"]
BATCH_SIZES = [32, 64, 128]
TARGET = 0.5  # agesearch reaches KerasTuner's best in at most this fraction of KerasTuner's time


def agesearch_api() -> SimpleNamespace:
    """Every agesearch import of this script, in one place (they load Keras: after the arguments are parsed)."""
    from agesearch.models.config import ModelConfig, TrainConfig, max_depth
    from agesearch.search.loop.run import DataSpec, load_data
    from agesearch.search.training.fit import TrialFailed, fit

    return SimpleNamespace(DataSpec=DataSpec, load_data=load_data, fit=fit, TrialFailed=TrialFailed,
                           ModelConfig=ModelConfig, TrainConfig=TrainConfig, max_depth=max_depth)


def depth_range(image_size: int, max_depth) -> tuple[int, int]:
    """spaces/arch.py's range: down to a 1-px map, up to 4 blocks fewer, at least 2."""
    deepest = max_depth(image_size)
    return max(2, deepest - 4), deepest


def declare_space(kt, image_size: int, max_depth):
    """The KerasTuner hyperparameters: agesearch's main knobs (see the module docstring)."""
    hp = kt.HyperParameters()
    low, high = depth_range(image_size, max_depth)
    hp.Int("depth", low, high)
    hp.Float("split", 0.0, 1.0, step=0.25)
    for k in range(high):
        hp.Choice(f"filters_b{k + 1}", FILTERS)
    hp.Choice("block_order", BLOCK_ORDERS)
    hp.Float("block_dropout", 0.0, 0.3, step=0.05)
    hp.Float("dense_dropout", 0.0, 0.7, step=0.1)
    hp.Choice("age_dense", DENSE)
    hp.Choice("gender_dense", DENSE)
    hp.Float("age_loss_weight", 1e-3, 10.0, sampling="log")
    hp.Choice("optimizer", OPTIMIZERS)
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Choice("batch_size", BATCH_SIZES)
    return hp


def configs(api, values: dict, image_size: int, epochs: int):
    """(ModelConfig, TrainConfig) of one KerasTuner point; every knob not here keeps agesearch's default."""
    depth = int(values["depth"])
    shared = int(values["split"] * depth + 0.5)
    branch = depth - shared
    model = api.ModelConfig(
        image_size=image_size, shared_blocks=shared, age_blocks=branch, gender_blocks=branch,
        filters=tuple(int(values[f"filters_b{k + 1}"]) for k in range(depth)), block_order=values["block_order"],
        block_dropout=round(float(values["block_dropout"]), 4), dense_dropout=round(float(values["dense_dropout"]), 4),
        age_dense=int(values["age_dense"]), gender_dense=int(values["gender_dense"]),
    )
    train = api.TrainConfig(
        optimizer=values["optimizer"], learning_rate=float(values["learning_rate"]), batch_size=int(values["batch_size"]),
        age_loss_weight=float(values["age_loss_weight"]), epochs=int(epochs),
    )
    return model, train


class BudgetSpent(Exception):
    """Raised between trials once the budget is spent: KerasTuner has no timeout of its own."""


def make_tuner(kt, api, data, args, clock, rows: list[dict]):
    """A Hyperband tuner whose trials are agesearch `fit` calls; each trial appends a row to `rows`."""

    class AgesearchHyperband(kt.Hyperband):
        def pre_create_trial(self):
            if clock() >= args.budget:
                raise BudgetSpent()
            super().pre_create_trial()

        def run_trial(self, trial, *fit_args, **fit_kwargs):
            values = dict(trial.hyperparameters.values)
            epochs = int(values.get("tuner/epochs", args.epochs))
            row = {"number": len(rows), "trial_id": trial.trial_id, "start_s": clock(), "epochs": epochs,
                   "bracket": values.get("tuner/bracket"), "round": values.get("tuner/round"),
                   "promoted_from": values.get("tuner/trial_id"),
                   "hp": {k: v for k, v in values.items() if not k.startswith("tuner/")}}
            rows.append(row)
            try:
                model_cfg, train_cfg = configs(api, values, args.image_size, epochs)
                res = api.fit(model_cfg, train_cfg, data, None)
            except Exception as e:  # NaN loss, out of memory, an invalid config: the trial fails, the search goes on
                row.update(state="FAIL", value=None, end_s=clock(), fail_reason=f"{type(e).__name__}: {str(e).strip()[:300]}")
                print(f"KT trial {row['number']} ({epochs} epochs): FAIL {row['fail_reason']} at {row['end_s']:.0f} s", flush=True)
                raise kt.errors.FailedTrialError(row["fail_reason"]) from e
            row.update(state="COMPLETE", value=res.objective, end_s=clock(), val_age_mae=res.val_age_mae,
                       val_gender_accuracy=res.val_gender_accuracy, epochs_run=res.epochs_run, best_epoch=res.best_epoch,
                       params=res.params, fit_seconds=res.seconds)
            best = min(r["value"] for r in rows if r.get("value") is not None)
            print(f"KT trial {row['number']} ({epochs} epochs, bracket {row['bracket']} round {row['round']}): objective {res.objective:.4f}, "
                  f"val age MAE {res.val_age_mae:.2f} y, accuracy {res.val_gender_accuracy:.3f}, {row['end_s'] - row['start_s']:.0f} s; "
                  f"done at {row['end_s']:.0f} s, best so far {best:.4f}", flush=True)
            return {"val_objective": res.objective}

    return AgesearchHyperband(
        hypermodel=None, objective=kt.Objective("val_objective", direction="min"), max_epochs=args.epochs, factor=args.factor,
        hyperband_iterations=None,  # KerasTuner: None = repeat the brackets forever (the budget stops it)
        seed=args.seed, hyperparameters=declare_space(kt, args.image_size, api.max_depth), tune_new_entries=False,
        allow_new_entries=False, max_consecutive_failed_trials=10**6, directory=args.kt_dir, project_name="hyperband", overwrite=True,
    )


def best_so_far(rows: list[dict]) -> list[dict]:
    curve, best = [], None
    for r in sorted((r for r in rows if r.get("value") is not None), key=lambda r: r["end_s"]):
        if best is None or r["value"] < best:
            best = r["value"]
            curve.append({"t_s": r["end_s"], "value": best, "trial": r["number"]})
    return curve


def short(hp: dict) -> dict:
    """Hyperparameters with floats at 4 significant digits, for the record line."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in hp.items()}


def compare(kt_doc: dict, as_doc: dict) -> tuple[list[str], bool | None]:
    """Lines saying whether agesearch reached KerasTuner's best in <= TARGET x KerasTuner's time."""
    lines = []
    same = {k: (kt_doc.get(k), as_doc.get(k)) for k in ("image_size", "epochs", "data", "split_sizes", "fingerprint")}
    differ = {k: v for k, v in same.items() if v[0] != v[1]}
    if differ:
        lines.append(f"WARNING: the two runs differ in {differ}: the comparison is not like for like")
    kt_curve = kt_doc["best_so_far"]
    if not kt_curve:
        return lines + ["comparison: KerasTuner completed no trial inside its budget"], None
    kt_best = kt_curve[-1]
    reached = next((p for p in as_doc["best_so_far"] if p["value"] <= kt_best["value"]), None)
    as_best = as_doc["best_so_far"][-1] if as_doc["best_so_far"] else None
    lines.append(f"KerasTuner's best {kt_best['value']:.4f} reached at {kt_best['t_s']:.0f} s (budget {kt_doc['budget_s']:.0f} s); "
                 f"agesearch [{as_doc['label']}] best {as_best['value']:.4f} at {as_best['t_s']:.0f} s (budget {as_doc['budget_s']:.0f} s, U = {as_doc['u_s']:.1f} s)"
                 if as_best else "agesearch completed no trial inside its budget")
    if reached is None:
        lines.append(f"agesearch never reached KerasTuner's best objective {kt_best['value']:.4f} inside its budget")
        ok = False
    else:
        ratio = reached["t_s"] / kt_best["t_s"]
        who = f"preset {reached['preset']}" if reached.get("preset") else "a searched trial"
        lines.append(f"agesearch reached it at {reached['t_s']:.0f} s (trial #{reached['trial']}, {who}, objective {reached['value']:.4f}) = {ratio:.2f}x KerasTuner's time")
        ok = ratio <= TARGET
    lines.append(f"target (agesearch reaches KerasTuner's best objective in <= {TARGET}x its time): {'**met**' if ok else '**NOT met**'}")
    return lines, ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9, help="Hyperband's max_epochs (agesearch's --epochs)")
    p.add_argument("--factor", type=int, default=3, help="Hyperband's reduction factor")
    p.add_argument("--budget", type=float, help="seconds after which no trial starts (default: the --against run's budget)")
    p.add_argument("--against", help="a search_vs_presets.py timeline JSON: its budget, and the time-to-KerasTuner's-best comparison")
    p.add_argument("--seed", type=int, default=0, help="data seed (split and subset, as agesearch's --seed) and KerasTuner's seed")
    p.add_argument("--limit", type=int, help="a seeded random subset of this many images (as agesearch's --limit)")
    p.add_argument("--synthetic-count", type=int, default=1200, help="images of the built-in synthetic set")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache (as agesearch's --cache-dir)")
    p.add_argument("--label", default="hyperband", help="names this run in RESULTS.md and the timeline")
    p.add_argument("--timeline", help="JSON timeline to write (default: benchmarks/timelines/kerastuner_hyperband-<label>-<time>.json)")
    p.add_argument("--out", help="markdown file to append to (default: benchmarks/RESULTS.md)")
    args = p.parse_args()
    against = json.loads(Path(args.against).read_text()) if args.against else None
    if args.budget is None:
        if against is None:
            p.error("give --budget SECONDS or --against TIMELINE.json")
        args.budget = float(against["budget_s"])
    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())
        if not Path(args.data).is_dir():
            p.error(f"--data: no such folder {args.data}")
    from agesearch.search.frameworks import import_keras_quietly

    import_keras_quietly()  # Keras first, without TensorFlow's C++ start-up lines, as the CLI does; keras_tuner then finds it loaded
    try:
        import keras_tuner as kt
    except ImportError:
        p.error("keras-tuner is not installed: pip install keras-tuner")
    api = agesearch_api()
    spec = api.DataSpec(data=args.data, image_size=args.image_size, seed=args.seed, limit=args.limit,
                        synthetic_count=args.synthetic_count, cache_dir=args.cache_dir)
    ds, split, data = api.load_data(spec)
    b = data.baselines
    args.kt_dir = tempfile.mkdtemp(prefix="agesearch-kt-")
    rows: list[dict] = []
    start = time.perf_counter()
    clock = lambda: time.perf_counter() - start  # noqa: E731
    tuner = make_tuner(kt, api, data, args, clock, rows)
    start = time.perf_counter()  # t = 0: the search starts (data loaded, tuner made)
    try:
        tuner.search(verbose=0)
        stopped = "Hyperband finished"  # only with finite brackets
    except BudgetSpent:
        stopped = "budget spent"
    wall = clock()

    for r in rows:
        r["counted"] = r.get("end_s") is not None and r["end_s"] <= args.budget
    counted = [r for r in rows if r["counted"]]
    complete = [r for r in counted if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: r["value"]) if complete else None
    curve = best_so_far(counted)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.out).resolve().parent if args.out else RESULTS.parent
    path = Path(args.timeline) if args.timeline else results_dir / "timelines" / f"kerastuner_hyperband-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.label)}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = "synthetic" if args.data == "synthetic" else args.data
    doc = {
        "format": "agesearch-kerastuner-hyperband/1", "label": args.label, "created": datetime.now().isoformat(timespec="seconds"),
        "keras_tuner": kt.__version__, "image_size": args.image_size, "epochs": args.epochs, "factor": args.factor, "data": data_path,
        "limit": args.limit, "split_sizes": [len(split.train), len(split.val), len(split.test)], "fingerprint": ds.fingerprint,
        "trivial": {"mae_trivial": b.mae_trivial, "error_trivial": b.error_trivial},
        "clock": "t = 0 when the search starts (data loaded); a trial counts when it finished at t <= budget_s",
        "budget_s": args.budget, "wall_s": wall, "stopped": stopped, "trials": rows, "best": best, "best_so_far": curve,
        "against": args.against,
    }
    lines = [
        f"label **{args.label}**; KerasTuner {kt.__version__} Hyperband (max_epochs {args.epochs}, factor {args.factor}, no warm start between rungs) "
        f"training with agesearch's fit; data {data_path} (limit {args.limit}), split {doc['split_sizes']}, trivial val age MAE {b.mae_trivial:.2f} y, gender error {b.error_trivial:.3f}",
        f"budget {args.budget:.0f} s ({stopped}); last trial ended at {wall:.0f} s; {len(rows) - len(counted)} trial(s) ended after the budget and are not counted",
        f"trials inside the budget: {len(complete)} complete, {sum(r['state'] == 'FAIL' for r in counted)} failed; "
        f"{sum(r['epochs_run'] for r in complete)} epochs trained (rungs: " + ", ".join(f"{e} epochs x {sum(r['epochs'] == e for r in counted)}" for e in sorted({r['epochs'] for r in counted})) + ")",
    ]
    if best:
        lines.append(f"best: KT trial {best['number']} ({best['epochs']} epochs, {best['params']:,} params): objective {best['value']:.4f}, val age MAE {best['val_age_mae']:.2f} y, "
                     f"val gender accuracy {best['val_gender_accuracy']:.3f}, reached at {best['end_s']:.0f} s; hp {short(best['hp'])}")
        lines.append("best so far (s: objective): " + ", ".join(f"{c['t_s']:.0f}: {c['value']:.4f}" for c in curve))
    else:
        lines.append("best: no trial completed inside the budget")
    ok = None
    if against is not None:
        more, ok = compare(doc, against)
        lines += more
        doc["target_met"] = ok
    path.write_text(neutral_paths(json.dumps(doc, indent=1, default=str)))  # no machine paths in a tracked file
    lines.append(f"timeline: {path}")
    record(f"KerasTuner Hyperband on agesearch's training [{args.label}]: {args.image_size} px, {args.epochs} epochs, {args.budget:.0f} s", lines, out=args.out)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
