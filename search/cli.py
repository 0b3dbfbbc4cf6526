"""The `agesearch` command: run a search, report on a study, serve the dashboard, list the spaces.

Bad input prints one line `agesearch: error: ...` and exits 2, before any study is made.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import warnings
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage dump) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0-65535, got {text!r}")
    return value


def image_size(text: str) -> int:
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be at least 16 pixels, got {text!r}")
    return value


def split_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0 or parts[1] <= 0:
        raise argparse.ArgumentTypeError(f"must be three fractions TRAIN,VAL,TEST summing to 1 (train and val > 0), got {text!r}")
    return parts  # type: ignore[return-value]


def build_parser() -> Parser:
    p = Parser(
        prog="agesearch",
        description="Optuna search over two-branch Keras CNNs for age regression and gender "
        "classification on UTKFace-named face images.",
        epilog="Examples:\n  agesearch run --space arch --n-trials 20\n  agesearch report --study arch\n"
        "  optuna-dashboard sqlite:///studies/arch.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run (or resume) a search; trials land in studies/<study>.db",
        description="Run or resume an Optuna study. --n-trials is the study's total: running the "
        "same command again after an interruption finishes the remaining trials.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("--space", required=True, help="search space: arch, train or full (`agesearch spaces` lists them)")
    r.add_argument("--data", default="synthetic", help="folder of AGE_GENDER_RACE_DATETIME.jpg.chip.jpg images, or 'synthetic' for the built-in generated set")
    r.add_argument("--study", help="study name (default: the space name)")
    r.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    r.add_argument("--n-trials", type=positive_int, default=20, help="total finished trials the study should hold")
    r.add_argument("--timeout", type=positive_float, help="stop starting new trials after this many seconds")
    r.add_argument("--epochs", type=positive_int, default=10, help="most epochs per trial (early stopping may end sooner)")
    r.add_argument("--image-size", type=image_size, default=128, help="images are resized to this many pixels square")
    r.add_argument("--sampler", choices=["tpe", "random", "cmaes", "nsga2"], help="Optuna sampler (default: tpe; nsga2 for --objective multi)")
    r.add_argument("--pruner", choices=["median", "hyperband", "none"], help="Optuna pruner (default: median; none for --objective multi)")
    r.add_argument("--objective", choices=["combined", "multi"], default="combined", help="combined: minimise val_age_mae/mae_trivial + val_gender_error/error_trivial; multi: age MAE down and gender accuracy up, a Pareto front")
    r.add_argument("--seed", type=int, default=0, help="seed of the split, the data subset and the sampler")
    r.add_argument("--split", type=split_fractions, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST", help="split fractions")
    r.add_argument("--limit", type=positive_int, help="use only this many images (a seeded random subset)")
    r.add_argument("--synthetic-count", type=positive_int, default=1200, help="images in the built-in synthetic set")
    r.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)")
    r.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|PATH", help="weights of the pretrained backbones a space samples (the full space): imagenet (downloaded by Keras on first use, needs the network), none (random init) or a weights file")

    def non_negative(kind):
        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                value = -1
            if not value >= 0 or not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
            return value

        return parse

    # Distributed search with Ray (search/distributed.py): used when --workers > 1 or --address.
    r.add_argument("--workers", type=positive_int, default=1, help="trials running at once, each in a fresh Ray worker process (> 1 starts a local Ray runtime)")
    r.add_argument("--gpus-per-trial", type=non_negative(float), help="GPUs per trial, fractions pack trials on a GPU (default: 1 if Ray sees GPUs, else 0)")
    r.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="CPUs per trial (Ray resources)")
    r.add_argument("--address", help="join this Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local runtime")
    r.add_argument("--max-retries", type=non_negative(int), default=1, help="run a trial again with the same parameters this many times when its worker dies")

    rep = sub.add_parser(
        "report",
        help="write a study's HTML report and print its tables",
        description="Write one self-contained HTML report of a study (plots, ablation tables, the best "
        "model's predictions) and print the summary and ablation tables. Works while the search runs.",
    )
    rep.add_argument("--study", default="arch", help="study name")
    rep.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    rep.add_argument("--out", type=Path, help="HTML file to write (default: studies/<study>-report.html, next to the study's database)")
    rep.add_argument("--csv", type=Path, help="also write every trial (params, state, values, metrics) to this CSV file")
    rep.add_argument("--no-predictions", action="store_true", help="skip the best model's predictions (no Keras, no images)")
    rep.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)")

    dash = sub.add_parser(
        "dashboard",
        help="start optuna-dashboard on a study's storage (127.0.0.1 by default)",
        description="Serve optuna-dashboard for the study's storage: every study in that file with its "
        "intermediate values and user attrs, live while a search runs. Listens on loopback unless --host says otherwise.",
    )
    dash.add_argument("--study", help="study name (default: the only studies/*.db there is)")
    dash.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    dash.add_argument("--port", type=port_number, default=8080, help="TCP port")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the dashboard to the network")

    sp = sub.add_parser("spaces", help="list the search spaces with their parameters and ranges")
    sp.add_argument("--image-size", type=image_size, default=128, help="ranges that depend on the image size are shown for this size")

    # From the best trial to a model (search/export.py, search/evaluate.py, search/datacheck.py).
    data = sub.add_parser("data", help="inspect a folder of images: `agesearch data check --data DIR`")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="SUBCOMMAND")
    chk = data_sub.add_parser(
        "check",
        help="images, malformed names, unreadable files, histograms, near-duplicate pairs",
        description="Check a folder of UTKFace-named images: counts, malformed names, unreadable files, age/gender/race "
        "histograms, and near-duplicate pairs (perceptual hash) with their labels, disagreeing labels flagged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    chk.add_argument("--data", required=True, help="folder of AGE_GENDER_RACE_DATETIME.jpg.chip.jpg images, or 'synthetic'")
    chk.add_argument("--image-size", type=image_size, default=128, help="images are decoded at this size (as `agesearch run` does) before hashing")
    chk.add_argument("--limit", type=positive_int, help="check only this many images (a seeded random subset)")
    chk.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    chk.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)")

    ex = sub.add_parser(
        "export",
        help="retrain the best (or a chosen) trial, save a .keras model and a JSON card, print test metrics",
        description="Rebuild a trial's configs, retrain on the study's train split (val for early stopping), save an "
        "inference model (age in years, P(female)) as .keras plus a JSON model card next to it, and print the "
        "test-split metrics. Default trial: the best one (multi-objective: the lowest combined objective on the Pareto front).",
    )
    ex.add_argument("--study", required=True, help="study name")
    ex.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    ex.add_argument("--trial", type=int, help="trial number to export (default: the best)")
    ex.add_argument("--epochs", type=positive_int, help="most epochs (default: the trial's); with --refit-on-train-val, exactly this many")
    ex.add_argument("--out", type=Path, help="model file (default: studies/<study>/model.keras); the card goes next to it as .json")
    ex.add_argument("--refit-on-train-val", action="store_true", help="train on train+val for the trial's best epoch count (best_epoch+1), no early stopping")
    ex.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation and shuffling")
    ex.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)")

    ev = sub.add_parser(
        "evaluate",
        help="age MAE (overall, per decade), gender accuracy and confusion of a model on a folder",
        description="Score a saved model on any folder of UTKFace-named images (any pixel size, resized to the model's "
        "input); malformed names and unreadable files are skipped and counted.",
    )
    ev.add_argument("--model", type=Path, required=True, help=".keras model file (from `agesearch export`)")
    ev.add_argument("--data", required=True, help="folder of AGE_GENDER_RACE_DATETIME.jpg.chip.jpg images, or 'synthetic'")
    ev.add_argument("--limit", type=positive_int, help="use only this many images (a seeded random subset)")
    ev.add_argument("--json", action="store_true", help="print one JSON object (n, age_mae, gender_accuracy, per_decade_mae, confusion, skipped)")
    ev.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)")

    pr = sub.add_parser(
        "predict",
        help="predicted age and gender (with its probability) per image",
        description="Predict age (years) and gender for each image. An unreadable or missing file gets one error line "
        "on stderr and the others are still predicted; the exit code is then 1.",
    )
    pr.add_argument("--model", type=Path, required=True, help=".keras model file (from `agesearch export`)")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files, any size (resized to the model's input)")
    pr.add_argument("--json", action="store_true", help="one JSON object per image")
    return p


# command -> (module to import when it runs, None for this one; function taking the args).
# The heavy modules (Keras, plotly, Ray) are imported only by the command that needs them.
COMMANDS = {
    "run": (None, "cmd_run"),
    "report": (None, "cmd_report"),
    "spaces": (None, "cmd_spaces"),
    "dashboard": ("agesearch.search.dashboard", "cmd_dashboard"),
    "data": ("agesearch.search.datacheck", "cmd_data_check"),
    "export": ("agesearch.search.export", "cmd_export"),
    "evaluate": ("agesearch.search.evaluate", "cmd_evaluate"),
    "predict": ("agesearch.search.evaluate", "cmd_predict"),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras loads TensorFlow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress lines replace Optuna's
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        module, function = COMMANDS[args.command]
        if module is None:
            return globals()[function](args)
        return getattr(importlib.import_module(module), function)(args)
    except UsageError as e:
        print(f"agesearch: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("agesearch: interrupted; running trials were marked FAIL. Run the same command to resume.", file=sys.stderr)
        return 130


def _sampler(name: str, seed: int, multi: bool):
    import optuna

    if name == "cmaes" and multi:
        raise UsageError("--sampler cmaes is single-objective; use nsga2, tpe or random with --objective multi")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the float and int parameters; categorical ones fall back to random.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _pruner(name: str, epochs: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def load_data(args):
    """Load and split the data; prints one progress line; raises UsageError for bad input."""
    from agesearch.search.data import DataError, load_faces
    from agesearch.search.duplicates import split_faces
    from agesearch.search.study_data import data_folder
    from agesearch.search.training import TrainingData  # imports Keras

    try:
        folder = data_folder(args.data, synthetic_count=args.synthetic_count, cache_dir=args.cache_dir)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = load_faces(folder, args.image_size, limit=args.limit, seed=args.seed, cache_dir=args.cache_dir, progress=lambda m: print(m, flush=True))
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        # Near-duplicate photos stay on one side, so val and test never hold a copy of a train image.
        split = split_faces(ds, args.split, seed=args.seed, cache_dir=args.cache_dir)
    except DataError as e:
        raise UsageError(str(e)) from None
    print(
        f"data: {len(ds)} images at {args.image_size} px from {folder} in {time.perf_counter() - start:.1f}s; "
        f"split {len(split.train)}/{len(split.val)}/{len(split.test)} (train/val/test)",
        flush=True,
    )
    return ds, split, TrainingData.from_split(ds, split)


def cmd_run(args) -> int:
    import optuna

    from agesearch.search import study as st
    from agesearch.search.artifacts import BestModelKeeper, models_dir
    from agesearch.search.objective import make_objective
    from agesearch.spaces import get_space, with_backbone_weights

    try:
        space = get_space(args.space)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    if args.backbone_weights not in ("imagenet", "none") and not Path(args.backbone_weights).is_file():
        raise UsageError(f"--backbone-weights: no such weights file {args.backbone_weights!r} (or use imagenet or none)")
    space = with_backbone_weights(space, args.backbone_weights)
    multi = args.objective == "multi"
    if multi and args.pruner not in (None, "none"):
        raise UsageError(f"--pruner {args.pruner} cannot be used with --objective multi: Optuna's pruners are single-objective only")
    sampler_name = args.sampler or ("nsga2" if multi else "tpe")
    pruner_name = args.pruner or ("none" if multi else "median")
    sampler = _sampler(sampler_name, args.seed, multi)
    if getattr(space, "grid", None) is not None:  # a grid space (`ablate`) walks its grid
        sampler_name, sampler = "grid", optuna.samplers.GridSampler(space.grid(args.image_size), seed=args.seed)
    study_name = args.study or args.space
    url = args.storage or st.default_storage(study_name)
    try:
        st.check_storage_url(url)
    except st.StorageError as e:
        raise UsageError(str(e)) from None

    ds, split, data = load_data(args)
    b = data.baselines
    meta = {
        "space": args.space,
        "objective": args.objective,
        "data": "synthetic" if args.data == "synthetic" else str(Path(args.data).expanduser().resolve()),
        "synthetic_count": args.synthetic_count if args.data == "synthetic" else None,
        "limit": args.limit,
        "fingerprint": ds.fingerprint,
        "images": len(ds),
        "image_size": args.image_size,
        "split": list(args.split),
        "split_method": "grouped-phash",  # studies without this key used data.split_indices
        "seed": args.seed,
        "split_sizes": [len(split.train), len(split.val), len(split.test)],
        "baselines": {"median_age": b.median_age, "majority_gender": b.majority_gender, "mae_trivial": b.mae_trivial, "error_trivial": b.error_trivial, "age_scale": b.age_scale},
    }
    try:
        storage = st.open_storage(url)
        study = st.create_or_resume(
            study_name,
            storage,
            directions=["minimize", "maximize"] if multi else ["minimize"],
            meta=meta,
            sampler=sampler,
            pruner=_pruner(pruner_name, args.epochs),
        )
    except (st.StorageError, st.StudyMismatch) as e:
        raise UsageError(str(e)) from None

    done = st.finished_count(study)
    remaining = args.n_trials - done
    print(
        f"study {study_name} in {url}: {done} finished, {max(remaining, 0)} to run "
        f"(space {args.space}, sampler {sampler_name}, pruner {pruner_name}, {args.epochs} epochs, "
        f"trivial val age MAE {b.mae_trivial:.2f} y, gender error {b.error_trivial:.3f})",
        flush=True,
    )
    if remaining > 0:
        keeper = BestModelKeeper(models_dir(url, study_name))
        if args.workers > 1 or args.address:
            from agesearch.search.distributed import DistributedError, run_distributed

            try:
                run_distributed(
                    study,
                    space,
                    data,
                    n_trials=args.n_trials,
                    image_size=args.image_size,
                    epochs=args.epochs,
                    multi=multi,
                    workers=args.workers,
                    gpus_per_trial=args.gpus_per_trial,
                    cpus_per_trial=args.cpus_per_trial,
                    address=args.address,
                    max_retries=args.max_retries,
                    timeout=args.timeout,
                    models_dir=keeper.directory,
                    cache_dir=args.cache_dir,
                    callbacks=[keeper, ProgressLine(multi)],
                )
            except DistributedError as e:
                raise UsageError(str(e)) from None
        else:
            objective = make_objective(space, args.image_size, args.epochs, data, multi=multi, models_dir=keeper.directory)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=args.timeout,
                catch=(Exception,),
                callbacks=[keeper, ProgressLine(multi)],
                gc_after_trial=True,
            )
    from agesearch.search.summary import summarize

    print(summarize(study), flush=True)
    return 0


class ProgressLine:
    """One line per finished trial: number, state, value, seconds, best so far."""

    def __init__(self, multi: bool):
        self.multi = multi

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        secs = trial.duration.total_seconds() if trial.duration else float("nan")
        if trial.state == TrialState.COMPLETE:
            value = " ".join(f"{v:.4f}" for v in trial.values)
        elif trial.state == TrialState.FAIL:
            value = trial.user_attrs.get("fail_reason", "failed")
        else:
            value = f"at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
        try:
            if self.multi:
                best = f"pareto {len(study.best_trials)} trials"
            else:
                best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "no best yet"
        print(f"trial {trial.number:>4} {trial.state.name:<8} {value}  {secs:.1f}s  {best}", flush=True)


def cmd_report(args) -> int:
    from agesearch.search import study as st
    from agesearch.search.artifacts import models_dir
    from agesearch.search.report import build_report, write_report

    url = args.storage or st.default_storage(args.study)
    try:
        study = st.load_existing(args.study, url)
    except st.StorageError as e:
        raise UsageError(str(e)) from None
    if not study.get_trials(deepcopy=False):
        raise UsageError(f"study {args.study!r} in {url} has no trials yet; nothing to report")
    directory = models_dir(url, args.study)
    out = args.out or directory.parent / f"{args.study}-report.html"
    result = build_report(study, models_dir=directory, predictions=not args.no_predictions, cache_dir=args.cache_dir)
    print(result.text)
    write_report(result, out)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        result.trials.to_csv(args.csv, index=False)
        print(f"csv: {len(result.trials)} trials -> {args.csv}")
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {result.seconds:.1f}s)")
    return 0


def cmd_spaces(args) -> int:
    from agesearch.spaces import SPACES, describe_space

    for name in sorted(SPACES):
        doc = (SPACES[name].__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for key, dist in describe_space(name, args.image_size).items():
            print(f"    {key:<18} {_describe(dist)}")
    return 0


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    step = f" step {dist.step}" if dist.step not in (None, 1) else ""
    return f"{dist.low}..{dist.high}{' (log)' if dist.log else ''}{step}"


if __name__ == "__main__":
    sys.exit(main())
