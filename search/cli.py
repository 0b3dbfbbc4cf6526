"""The `agesearch` command line: parse, check every input, then import the frameworks.

Each command is a parser function `_add_<command>` and a thin `cmd_<command>` that checks its
inputs with the light domain checks, then imports what it needs and calls the domain module.
Bad input (argparse's, or any error of search/errors.py) prints one line `agesearch: error: ...`
and exits 2, before any study is made and, where the check allows, before Keras/TensorFlow,
Ray or plotly load. TensorFlow's C++ start-up lines are filtered (search/frameworks.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from agesearch.search.errors import EXIT_INTERRUPTED, EXIT_USAGE, USER_ERRORS, UsageError
from agesearch.search.frameworks import import_keras_quietly, quiet_environment

quiet_environment()  # before anything imports TensorFlow, whichever command runs


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends in its default, unless there is none to show: a default of None or
    False (a flag) adds nothing, nor does a help that already says its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or "(default" in text or "%(default)" in text:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def version() -> str:
    """`agesearch X.Y.Z`: the installed distribution's version, else the package's own."""
    from importlib import metadata

    try:
        number = metadata.version("agesearch")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        from agesearch import __version__ as number
    return f"agesearch {number}"


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage dump) and exits 2; every
    command's help shows its options' defaults (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# Argument types: argparse turns an ArgumentTypeError into "argument --x: <message>".
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative(kind: type):
    """A type accepting numbers >= 0 of `kind` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not value >= 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
        return value

    return parse


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be one or more names separated by commas, got {text!r}")
    return names


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
    from agesearch.search.data.images import check_split  # the one rule of a split

    try:
        return check_split(text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be three fractions TRAIN,VAL,TEST summing to 1 (train and val > 0), got {text!r}") from None


DATA_HELP = "folder of AGE_GENDER_RACE_DATETIME.jpg.chip.jpg images, or 'synthetic' for the built-in generated set"

# Options several commands share, declared once. A command adds them with `_add` and may
# override a default, `required` or the help (which is why these are not argparse parent
# parsers: a parent fixes all three for every command).
OPTIONS: dict[str, dict] = {
    "--study": dict(metavar="NAME", help="study name"),
    "--storage": dict(help="Optuna storage URL (default: sqlite:///studies/<study>.db)"),
    "--cache-dir": dict(type=Path, help="decoded-image cache (default: $AGESEARCH_CACHE_DIR or ~/.cache/agesearch)"),
    "--data": dict(required=True, help=DATA_HELP),
    "--image-size": dict(type=image_size, default=128, help="images are resized to this many pixels square"),
    "--limit": dict(type=positive_int, help="use only this many images (a seeded random subset)"),
    "--seed": dict(type=int, default=0, help="data seed: the split and the --limit subset (the sampler seeds derive from it unless --sampler-seed)"),
    "--epochs": dict(type=positive_int, default=30, help="most epochs per trial (early stopping may end sooner; the pruner may stop a trial from its second epoch, see --pruner)"),
    "--model": dict(type=Path, required=True, help=".keras model file (from `agesearch export`)"),
    "--json": dict(action="store_true", help="print JSON instead of text"),
    "--artifacts": dict(metavar="DIR|s3://BUCKET/PREFIX", help="Optuna artifact store of the trials' models (default: the one the study recorded, else studies/<study>-artifacts/; S3 needs the s3 extra)"),
}


# Other spellings of a shared option (same dest): Optuna calls a study's name `study_name`.
ALIASES: dict[str, tuple[str, ...]] = {"--study": ("--study", "--study-name")}


def _add(parser: argparse.ArgumentParser, *options: str | tuple[str, dict]) -> None:
    """Add shared options by name; `(name, {key: value})` overrides one command's settings."""
    for option in options:
        name, overrides = (option, {}) if isinstance(option, str) else option
        parser.add_argument(*ALIASES.get(name, (name,)), **(OPTIONS[name] | overrides))


def build_parser() -> Parser:
    p = Parser(
        prog="agesearch",
        description="Optuna search over two-branch Keras CNNs for age regression and gender "
        "classification on UTKFace-named face images.",
        epilog="Examples:\n  agesearch run --space arch --n-trials 20\n  agesearch report --study arch\n"
        "  optuna-dashboard sqlite:///studies/arch.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=version(), help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for add in (_add_run, _add_report, _add_dashboard, _add_spaces, _add_presets, _add_data, _add_export, _add_evaluate, _add_predict):
        add(sub)
    return p


# --- run --------------------------------------------------------------------------------------


def _add_run(sub) -> None:
    r = sub.add_parser(
        "run",
        help="run (or resume) a search; trials land in studies/<study>.db",
        description="Run or resume an Optuna study. --n-trials is the study's total: running the "
        "same command again after an interruption finishes the remaining trials.",
    )
    r.add_argument("--space", required=True, help="search space: arch, train, cnn, full or ablate (`agesearch spaces` lists them; `agesearch presets` the baseline models each holds)")
    _add(r, ("--data", dict(required=False, default="synthetic")), ("--study", dict(help="study name (default: the space name)")), "--storage")
    r.add_argument("--n-trials", type=positive_int, default=20, help="total finished trials the study should hold")
    r.add_argument("--timeout", type=positive_float, help="stop starting new trials after this many seconds")
    _add(r, "--epochs", "--image-size")
    from agesearch.search.loop.options import PRUNERS, SAMPLERS  # light: no framework

    r.add_argument("--sampler", choices=list(SAMPLERS), help="Optuna sampler (default: tpe; nsga2 for --objective multi): "
                   + "; ".join(f"{k}: {v.help}" for k, v in SAMPLERS.items()))
    r.add_argument("--pruner", choices=list(PRUNERS), help="Optuna pruner (default: median; none for --objective multi): "
                   + "; ".join(f"{k}: {v.help}" for k, v in PRUNERS.items()))
    r.add_argument("--objective", choices=["combined", "multi"], default="combined", help="combined: minimise val_age_mae/mae_trivial + val_gender_error/error_trivial; multi: age MAE down and gender accuracy up, a Pareto front")
    _add(r, ("--seed", dict(help="data seed: the split and the --limit subset (must match when a study is resumed)")))
    r.add_argument("--sampler-seed", type=int, help="base of the sampler's seeds, one per trial number (default: --seed); may differ between runs and processes of one study")
    r.add_argument("--split", type=split_fractions, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST", help="split fractions")
    _add(r, "--limit")
    r.add_argument("--synthetic-count", type=positive_int, default=1200, help="images in the built-in synthetic set")
    _add(r, "--cache-dir")
    r.add_argument("--backbone-weights", default="imagenet", metavar="imagenet|none|PATH", help="weights of the pretrained backbones a space samples (the full space): imagenet (downloaded by Keras on first use, needs the network), none (random init) or a weights file")
    base = r.add_mutually_exclusive_group()
    base.add_argument("--baselines", type=name_list, metavar="NAME,...", help="presets to run as the first trials of a new study (default: every preset the space holds at this image size; `agesearch presets` lists them)")
    base.add_argument("--no-baselines", action="store_true", help="enqueue no presets")
    _add(r, "--artifacts")
    r.add_argument("--keep-models", type=positive_int, metavar="K", help="keep only the best K trials' models in the artifact store (default: every complete trial's)")
    r.add_argument("--max-flops", type=positive_float, metavar="F", help="refuse (PRUNED, never trained) a draw whose model needs more than F FLOPs per image, e.g. 2e8")
    r.add_argument("--max-flops-ratio", type=non_negative(float), default=4.0, metavar="R", help="refuse a draw over R times the FLOPs of the best preset trial (presets and retries are never refused; no cap without presets; 0: off)")
    r.add_argument("--mlflow", metavar="URI", help="log each finished trial as an MLflow run (params, per-epoch metrics, state, model) of the experiment named as the study, "
                   "e.g. sqlite:///mlflow.db or http://HOST:5000; needs the mlflow extra")
    r.add_argument("--tensorboard", metavar="DIR", help="write Keras' TensorBoard logs of each trial to DIR/trial-N (tensorboard --logdir DIR)")
    _add_run_ray(r)
    r.set_defaults(handler=cmd_run, optuna=True)


def _add_run_ray(r: argparse.ArgumentParser) -> None:
    """Distributed search with Ray (search/loop/ray_executor.py): used when --workers > 1 or --address."""
    r.add_argument("--workers", type=positive_int, default=1, help="trials running at once, each in a fresh Ray worker process (> 1 starts a local Ray runtime)")
    r.add_argument("--gpus-per-trial", type=non_negative(float), help="GPUs per trial, fractions pack trials on a GPU (default: 1 if Ray sees GPUs, else 0)")
    r.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="CPUs per trial (Ray resources)")
    r.add_argument("--address", help="join this Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local runtime")
    r.add_argument("--max-retries", type=non_negative(int), default=1, help="run a trial again with the same parameters this many times when its worker dies")


def check_data_folder(data: str, *, limit: int | None = None, seed: int = 0) -> None:
    """A folder given as --data exists and holds UTKFace-named files (before any framework loads).

    Raises:
        DataError: a missing folder or one without a UTKFace-named file.
    """
    if data != "synthetic":
        from agesearch.search.data.images import list_faces

        list_faces(Path(data).expanduser(), limit=limit, seed=seed)


def run_options(args):
    """The RunOptions of `agesearch run`'s arguments, checked (no framework loads)."""
    from agesearch.search.loop.options import RunOptions

    return RunOptions(
        space=args.space, study_name=args.study, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout, epochs=args.epochs,
        sampler=args.sampler, pruner=args.pruner, objective=args.objective, sampler_seed=args.sampler_seed,
        backbone_weights=args.backbone_weights, baselines=False if args.no_baselines else args.baselines,
        max_flops=args.max_flops, max_flops_ratio=args.max_flops_ratio or None, workers=args.workers, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, address=args.address, max_retries=args.max_retries, artifacts=args.artifacts,
        keep_models=args.keep_models, mlflow=args.mlflow, tensorboard=args.tensorboard,
    ).check(args.image_size)


def cmd_run(args) -> int:
    """`agesearch run`: check the input, then `run_search` (search/loop/run.py)."""
    options = run_options(args)
    check_data_folder(args.data, limit=args.limit, seed=args.seed)
    import_keras_quietly()
    from agesearch.search.loop.run import DataSpec, run_search

    data = DataSpec(data=args.data, image_size=args.image_size, split=args.split, seed=args.seed, limit=args.limit,
                    synthetic_count=args.synthetic_count, cache_dir=args.cache_dir)
    run_search(options, data=data)
    return 0


# --- report, dashboard, spaces ------------------------------------------------------------------


def _add_report(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="write a study's HTML report and print its tables",
        description="Write one self-contained HTML report of a study (plots, ablation tables, the best "
        "model's predictions) and print the summary and ablation tables. Works while the search runs.",
    )
    _add(rep, ("--study", dict(help="study name (default: the only study in --storage, else in the only studies/*.db there is)")), "--storage")
    rep.add_argument("--out", type=Path, help="HTML file to write (default: studies/<study>-report.html, next to the study's database)")
    rep.add_argument("--csv", type=Path, help="also write every trial (params, state, values, metrics) to this CSV file")
    rep.add_argument("--no-predictions", action="store_true", help="skip the best model's predictions (no Keras, no images)")
    _add(rep, "--cache-dir", "--artifacts")
    rep.set_defaults(handler=cmd_report, optuna=True)


def cmd_report(args) -> int:
    from agesearch.search.store import study as st
    from agesearch.search.store.artifacts import models_dir

    if args.study is None:
        args.study, url = st.only_study(args.storage)
    else:
        url = args.storage or st.default_storage(args.study)
    study = st.load_existing(args.study, url)
    if not study.get_trials(deepcopy=False):
        raise UsageError(f"study {args.study!r} in {url} has no trials yet; nothing to report")
    if not args.no_predictions:
        import_keras_quietly()
    from agesearch.search.report import build_report, write_csv, write_report

    directory = models_dir(url, args.study)
    out = args.out or directory.parent / f"{args.study}-report.html"
    result = build_report(study, storage_url=url, artifacts=args.artifacts, predictions=not args.no_predictions, cache_dir=args.cache_dir)
    print(result.text)
    write_report(result, out)
    if args.csv is not None:
        write_csv(result, args.csv)
        print(f"csv: {len(result.trials)} trials -> {args.csv}")
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, {result.seconds:.1f}s)")
    return 0


def _add_dashboard(sub) -> None:
    dash = sub.add_parser(
        "dashboard",
        help="start optuna-dashboard on a study's storage (127.0.0.1 by default)",
        description="Serve optuna-dashboard for the study's storage: every study in that file with its "
        "intermediate values and user attrs, live while a search runs. Listens on loopback unless --host says otherwise.",
    )
    _add(dash, ("--study", dict(help="study name (default: the only studies/*.db there is)")), "--storage")
    dash.add_argument("--port", type=port_number, default=8080, help="TCP port")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the dashboard to the network")
    _add(dash, "--artifacts")
    dash.set_defaults(handler=cmd_dashboard, optuna=True)


def cmd_dashboard(args) -> int:
    """Serve optuna-dashboard until interrupted."""
    from agesearch.search.report import dashboard

    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError(dashboard.INSTALL_HINT) from None
    url, storage = dashboard.open_dashboard_storage(args.study, args.storage)
    study_id = storage.get_study_id_from_name(args.study) if args.study else None
    from agesearch.search.store.artifacts import serving_store

    store = serving_store(storage, url, args.study, args.artifacts)  # lists and serves the trials' models
    if not dashboard.is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read and edit the study", file=sys.stderr)
    print(f"optuna-dashboard for {url} at {dashboard.dashboard_address(args.host, args.port, study_id)} (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)
    except OSError as e:  # port taken, address not on this machine
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


def _add_spaces(sub) -> None:
    sp = sub.add_parser("spaces", help="list the search spaces with their parameters and ranges")
    _add(sp, ("--image-size", dict(help="ranges that depend on the image size are shown for this size")))
    sp.set_defaults(handler=cmd_spaces, optuna=True)


def cmd_spaces(args) -> int:
    from agesearch.spaces import SPACES, describe_space

    for name in sorted(SPACES):
        doc = (SPACES[name].fn.__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else ''}")
        for key, dist in describe_space(name, args.image_size).items():
            print(f"    {key:<18} {_describe(dist)}")
    return 0


def _add_presets(sub) -> None:
    pr = sub.add_parser(
        "presets",
        help="list the write-ups' models (the baseline trials of `run`) with parameter counts and results",
        description="List the presets: each published write-up's final model and training recipe, which "
        "`agesearch run` enqueues as the first trials of a new study when its space contains them.",
    )
    _add(pr, ("--image-size", dict(help="parameter counts and the spaces holding each preset are for this size")))
    pr.set_defaults(handler=cmd_presets, optuna=True)


def cmd_presets(args) -> int:
    import_keras_quietly()
    from agesearch.models import build_model
    from agesearch.models.presets import PRESETS
    from agesearch.spaces import baseline_trials, space_names

    holders = {name: [s for s in space_names() if name in dict(baseline_trials(s, args.image_size))] for name in PRESETS}
    print(f"presets at {args.image_size} px (run --baselines NAME,... or --no-baselines):")
    for name, preset in PRESETS.items():
        try:
            params = f"{build_model(preset.configs(args.image_size)[0]).count_params():,} params"
        except ValueError as e:  # too deep for so small an image
            params = f"does not fit: {str(e).split('. Received')[0]}"
        print(f"  {name:<24} {params}")
        print(f"      {preset.summary}")
        print(f"      reported: {preset.reported}; in spaces: {', '.join(holders[name]) or 'none at this size'}")
        train = preset.configs(128)[1]  # the recipe does not depend on the size (the model may not fit a small one)
        print(f"      recipe: {train.epochs} epochs, early stopping patience {train.early_stopping_patience}; as a baseline trial the run "
              "sets both: --epochs, and patience max(5, epochs // 3)")
    return 0


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    step = f" step {dist.step}" if dist.step not in (None, 1) else ""
    return f"{dist.low}..{dist.high}{' (log)' if dist.log else ''}{step}"


# --- data check, export, evaluate, predict -------------------------------------------------------


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="inspect a folder of images: `agesearch data check --data DIR`")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="SUBCOMMAND")
    chk = data_sub.add_parser(
        "check",
        help="images, malformed names, unreadable files, histograms, near-duplicate pairs",
        description="Check a folder of UTKFace-named images: counts, malformed names, unreadable files, age/gender/race "
        "histograms, and near-duplicate pairs (perceptual hash) with their labels, disagreeing labels flagged.",
    )
    _add(chk, "--data", ("--image-size", dict(help="images are decoded at this size (as `agesearch run` does) before hashing")))
    _add(chk, ("--limit", dict(help="check only this many images (a seeded random subset)")))
    _add(chk, ("--json", dict(help="print one JSON object instead of the text report")), "--cache-dir")
    chk.set_defaults(handler=cmd_data_check, optuna=False)


def cmd_data_check(args) -> int:
    """`agesearch data check`: print the report (or one JSON object); 0 unless the input is bad."""
    from agesearch.search.data.check import check_folder, format_check
    from agesearch.search.data.study_data import data_folder

    folder = data_folder(args.data, cache_dir=args.cache_dir)
    result = check_folder(folder, args.image_size, limit=args.limit, cache_dir=args.cache_dir)
    print(json.dumps(result.to_dict()) if args.json else format_check(result))
    return 0


def _add_export(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="retrain the best (or a chosen) trial, or build an ensemble chosen on val, save a .keras model (and --format) with JSON and Markdown cards, print test metrics",
        description="Rebuild a trial's configs, retrain on the study's train split (val for early stopping), save an "
        "inference model (age in years, P(female)) as .keras (with --format, also as ONNX, LiteRT or a SavedModel beside it) "
        "plus two model cards next to it, model.json for machines and model.md for people (intended use, the data's terms, "
        "test metrics per age decade, gender and race), and print the "
        "test-split metrics. Default trial: the best one (multi-objective: the lowest combined objective on the Pareto front). "
        "With --ensemble K: one model averaging at most K members chosen by greedy selection on val from the stored models "
        "(no retraining unless --refit-on-train-val, optionally at another --image-size), shown beside the best single model on the test split.",
    )
    _add(ex, ("--study", dict(required=True)), "--storage")
    ex.add_argument("--trial", type=int, help="trial number to export (default: the best); not with --ensemble")
    ex.add_argument("--ensemble", type=positive_int, metavar="K", help="average at most K picks by greedy ensemble selection on val (Caruana et al. 2004): from the best stored model, "
                    "add (with replacement) the COMPLETE trial that most lowers the val objective of the average, only while it does; "
                    "candidates: the best max(2K, 10) trials with a stored model (the study's artifact store), one per configuration")
    ex.add_argument("--tta", choices=["flip"], help="test-time augmentation saved in the model: 'flip' averages each image and its horizontal mirror (with or without --ensemble)")
    _add(ex, ("--epochs", dict(default=None, help="most epochs (default: the trial's); with --refit-on-train-val, exactly this many")))
    ex.add_argument("--out", type=Path, help="model file (default: studies/<study>/model.keras); the card goes next to it as .json")
    ex.add_argument("--refit-on-train-val", action="store_true", help="train on train+val for the trial's best epoch count (best_epoch+1), no early stopping; "
                    "with --ensemble, each member so, instead of its stored model")
    _add(ex, ("--image-size", dict(default=None, help="retrain at this many pixels square instead of the searched size (search small, train big): "
                                    "the study's images and split decoded at that size; with --ensemble it needs --refit-on-train-val")))
    _add(ex, ("--seed", dict(default=None, help="seed of the weight initialisation, shuffling, augmentation and dropout (default: the one the search "
                                                "trained the trial with, 0 for trials made before trials were seeded)")), "--cache-dir")
    _add(ex, ("--artifacts", dict(help="artifact store of the trials' models, for --ensemble (default: the one the study recorded, else studies/<study>-artifacts/)")))
    ex.add_argument("--format", choices=["keras", "onnx", "litert", "saved_model"], default="keras",
                    help="also write the model beside the .keras file for runtimes without agesearch or Keras: onnx (model.onnx, onnxruntime; "
                    "pip install 'agesearch[onnx]'), litert (model.tflite), saved_model (model_saved_model/, TensorFlow); each checked against the Keras model")
    ex.set_defaults(handler=cmd_export, optuna=True)


def cmd_export(args) -> int:
    """`agesearch export`: `export_study` (search/export/study.py, which `agesearch.export` calls too), then
    print the card: how it was trained or its members, the test-split metrics, the files."""
    from agesearch.search.export.trial import format_side_by_side
    from agesearch.search.export.study import export_study
    from agesearch.search.training.metrics import format_metrics

    start = time.perf_counter()
    card, out = export_study(args.study, args.storage, args.out, trial=args.trial, ensemble=args.ensemble, tta=args.tta, epochs=args.epochs,
                             refit_on_train_val=args.refit_on_train_val, image_size=args.image_size, seed=args.seed, cache_dir=args.cache_dir,
                             artifacts=args.artifacts, format=args.format)
    if args.ensemble is not None:
        from agesearch.search.export.ensemble import format_members

        print(format_members(card))
    else:
        t = card["training"]
        print(f"trained in {t['seconds']:.1f}s ({t['epochs_run']} epochs, weights of epoch {t['weights_from_epoch']}); "
              f"search's val age MAE {card['study']['search_val_age_mae']}, this run's {t['val_age_mae']}")
    m = card["test_metrics"]
    print(format_metrics(m, f"test split of study {args.study}") if m["n"] else "no test split (its fraction is 0): no test metrics")
    if "side_by_side" in card:
        print(format_side_by_side(card["side_by_side"], f"best single model vs exported, test split of study {args.study}"))
    for x in card["exports"]:
        check = f"largest difference from the Keras model {x['max_abs_diff']:.2g} ({x['checked_with']})" if x["max_abs_diff"] is not None else f"not checked: {x['not_checked']}"
        print(f"{x['format']}: {out.with_name(x['file'])}  ({check})")
    print(f"model: {out}\ncard:  {out.with_suffix('.json')}, {out.with_suffix('.md')}  ({time.perf_counter() - start:.1f}s in all)")
    return 0


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="age MAE (overall, per decade), gender accuracy and confusion of a model on a folder",
        description="Score a saved model on any folder of UTKFace-named images (any pixel size, resized to the model's "
        "input); malformed names and unreadable files are skipped and counted.",
    )
    _add(ev, ("--model", dict(required=False, help=".keras model file (from `agesearch export`); or --study")), "--data", "--limit")
    _add(ev, ("--study", dict(help="evaluate this study's best trial's model, from its artifact store (instead of --model)")), "--storage", "--artifacts")
    _add(ev, ("--json", dict(help="print one JSON object (n, age_mae, gender_accuracy, per_decade_mae, confusion, skipped)")), "--cache-dir")
    ev.set_defaults(handler=cmd_evaluate, optuna=False)


def _model_file(args) -> Path:
    """--model, or the best model of --study from its artifact store (downloaded once)."""
    if (args.model is None) == (args.study is None):
        raise UsageError("pass --model FILE or --study NAME (one of them)")
    if args.model is not None:
        return args.model
    from agesearch.search.store.artifacts import study_model

    return study_model(args.study, args.storage, args.artifacts)


def cmd_evaluate(args) -> int:
    """`agesearch evaluate`: metrics of a model on a folder of UTKFace-named images."""
    from agesearch.search.export.evaluate import check_model_path, evaluate_folder, load_inference_model
    from agesearch.search.training.metrics import format_metrics
    from agesearch.search.data.study_data import data_folder

    args.model = _model_file(args)
    check_model_path(args.model)
    check_data_folder(args.data, limit=args.limit)
    import_keras_quietly()
    model = load_inference_model(args.model)
    folder = data_folder(args.data, cache_dir=args.cache_dir)
    m = evaluate_folder(model, folder, limit=args.limit, cache_dir=args.cache_dir) | {"model": str(args.model)}
    if args.json:
        print(json.dumps(m))
    else:
        print(format_metrics(m, f"evaluate {args.model} on {folder}"))
        print(f"  skipped: {m['skipped']['malformed_names']} malformed name(s), {m['skipped']['unreadable_files']} unreadable file(s)")
    return 0


def _add_predict(sub) -> None:
    pr = sub.add_parser(
        "predict",
        help="predicted age and gender (with its probability) per image, or per face with --detect-faces",
        description="Predict age (years) and gender for each image. The models are trained on aligned face crops "
        "(UTKFace's): an image is squashed whole to the model's input, and one warning line names the images that do "
        "not look like face crops (wider than 5:4 or over 800 px on the short side). With --detect-faces, every face of "
        "each photo is found (OpenCV's Haar cascades, shipped in its wheel: pip install 'agesearch[faces]'), turned so "
        "that its eyes are level, cropped as UTKFace crops are, and predicted: one row per face with its box (x, y, w, h "
        "in the photo). An unreadable or missing file, or a photo with no face found, gets one error line on stderr and "
        "the others are still predicted; the exit code is then 1.",
    )
    _add(pr, "--model")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files, any size (resized to the model's input)")
    pr.add_argument("--detect-faces", action="store_true", help="find, align and crop every face of each photo and predict each (pip install 'agesearch[faces]')")
    _add(pr, ("--json", dict(help="one JSON object per image (per face with --detect-faces, with its box)")))
    pr.set_defaults(handler=cmd_predict, optuna=False)


def cmd_predict(args) -> int:
    """`agesearch predict`: age and gender per image, or per face; exit 1 if any image could not be
    read or had no face."""
    from agesearch.search.export.evaluate import check_model_path, load_inference_model, predict_files

    check_model_path(args.model)
    if args.detect_faces:
        from agesearch.search.export.faces import import_cv2

        import_cv2()  # the install hint before Keras loads
    import_keras_quietly()
    rows, errors, warning = predict_files(load_inference_model(args.model), args.images, detect_faces=args.detect_faces)
    for line in errors:
        print(f"agesearch: error: {line}", file=sys.stderr)
    if warning:
        print(f"agesearch: warning: {warning}", file=sys.stderr)
    for r in rows:
        face = f" face {r['face']} (x={r['box']['x']}, y={r['box']['y']}, w={r['box']['w']}, h={r['box']['h']})" if "face" in r else ""
        print(json.dumps(r) if args.json else f"{r['image']}{face}: age {r['age']:.1f}, {r['gender']} (p={r['probability']:.2f})")
    return 1 if errors else 0


# --- main ---------------------------------------------------------------------------------------


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress lines replace Optuna's
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.optuna:
            _quiet_optuna()
        return args.handler(args)
    except USER_ERRORS as e:
        message = " ".join(str(e).split("\n"))  # one line, whatever the error says
        print(f"agesearch: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # run's SearchInterrupted carries the line to show
        print(f"agesearch: {e or 'interrupted.'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
