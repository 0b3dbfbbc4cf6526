"""Models better than any single trial: ensembles, flip TTA and the label-distribution head, on the test split.

Reads one finished study (`--study NAME --storage URL`; by default the one
`benchmarks/search_vs_presets.py --workdir /tmp/bench/default` leaves) and measures, on the
study's test split (which the search never saw), through the `agesearch export` CLI run as
subprocesses in a work folder (`--workdir`, default a new temporary folder):

  1. the best preset refit on train+val: `export --trial <P> --refit-on-train-val`, P the preset
     trial (user attr `preset`) with the best ranking value among the COMPLETE ones;
  2. the single best trial refit the same way: `export --trial <B> --refit-on-train-val` (B the
     study's best trial, as `export` picks it; when B is P, the one export serves both);
  3. the ensembles of the top K distinct trials, for each K of `--sizes` (3 and 5), from the
     trials' stored models (no retraining): `export --ensemble K`, and again with `--tta flip`;
     with `--refit-ensembles` also `export --ensemble K --refit-on-train-val --tta flip` (each
     member retrained on train+val: K trainings per export, so only the flipped variant; the
     stored-model rows show what the flip alone is worth);
  4. the label-distribution age head against regression on the same model and training: the
     configs of `--head-trial` (the best trial by default) trained twice per seed (`--head-seeds`,
     2 by default: seeds 0 and 1), once with `age_head="regression"` and once with
     `age_head="dldl"` (dldl_sigma at its default), nothing else changed; in this process
     through agesearch's own training (`search.training.fit.fit` on the study's train split, val
     for early stopping, as `export` without a refit trains), scored on test with
     `search.training.metrics`. Reported per seed and as the mean over the seeds.
  5. for each model, the test age MAE per decade of true age (from the cards' `per_decade_mae`
     and `per_decade_n`), and the 60+ MAE: the count-weighted mean of the decades 60-69 and up,
     i.e. the MAE over all test faces aged 60 or more.

Targets (each printed as met / NOT met, with its numbers):
  - the ensemble: the best ensemble (lowest test age MAE among the ensembles above; chosen on the
    test split, so slightly flattering) is >= 0.5 y under the best preset's refit in test age
    MAE, with a test gender accuracy no lower;
  - the head: DLDL's mean test age MAE over the seeds is no higher than regression's;
  - old faces: the 60+ MAE of that best ensemble is >= 2 y under the best preset refit's.

Recorded: one section of benchmarks/RESULTS.md (or `--out`), titled with the study and
`--label`, with the per-decade table; every number (the cards whole, the head runs, the
verdicts) goes to a JSON file (`--json`; default benchmarks/timelines/ensemble_quality-<label>-<time>.json,
next to the record).

Usage (the full-size run, after search_vs_presets.py finished; 2 + 2 x 5 trainings without
--refit-ensembles, each about a trial's time):
  python benchmarks/ensemble_quality.py --label default
Smoke (a tiny study of your own, synthetic images, seconds per training on a CPU):
  agesearch run --space cnn --data synthetic --image-size 32 --epochs 2 --n-trials 7 \
      --study smoke --storage sqlite:////tmp/eq/s.db --synthetic-count 300 --backbone-weights none
  python benchmarks/ensemble_quality.py --study smoke --storage sqlite:////tmp/eq/s.db \
      --label smoke --out /tmp/eq/smoke.md --workdir /tmp/eq/work
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import RESULTS, neutral_paths, record  # noqa: E402
from search_vs_presets import agesearch_exe  # noqa: E402

DEFAULT_STUDY = "vs-presets-cnn-32px"
DEFAULT_STORAGE = f"sqlite:////tmp/bench/default/{DEFAULT_STUDY}.db"
ENSEMBLE_GAIN = 0.5  # years: the best ensemble's test age MAE at least this far under the best preset refit's
OLD_GAIN = 2.0  # years: the same for the 60+ MAE
OLD_FROM = 60  # the first decade counted as "old"


def load(study_name: str, url: str):
    """The study, read through agesearch's store (a missing database or study fails in one line)."""
    import optuna

    from agesearch.search.errors import StorageError
    from agesearch.search.store.study import load_existing

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return load_existing(study_name, url)
    except StorageError as e:
        raise SystemExit(f"ensemble_quality: {e}") from None


def pick_trials(study, head_trial: str):
    """(best preset trial, best trial, the trial whose configs the head comparison trains)."""
    from optuna.trial import TrialState

    from agesearch.search.store.study import best_trial

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    usable = [t for t in complete if "model_config" in t.user_attrs and "train_config" in t.user_attrs]
    if not usable:
        raise SystemExit(f"ensemble_quality: study {study.study_name!r} has no COMPLETE trial with recorded configs")
    preset = best_trial(study, [t for t in usable if t.user_attrs.get("preset")])
    best = best_trial(study)
    if head_trial == "best":
        head = best
    elif head_trial == "preset":
        head = preset
    else:
        found = [t for t in usable if t.number == int(head_trial)]
        if not found:
            raise SystemExit(f"ensemble_quality: --head-trial {head_trial}: no such COMPLETE trial with configs")
        head = found[0]
    return preset, best, head


def export(exe: list[str], work: Path, key: str, args_: list[str], common: list[str]) -> dict:
    """One `agesearch export ... --out work/exports/<key>.keras`: its card (whole), wall seconds, command."""
    out = work / "exports" / f"{key}.keras"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*exe, "export", *common, *args_, "--out", str(out)]
    print(f"export {key}: agesearch {shlex.join(cmd[len(exe):])}", flush=True)
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / f"export-{key}.log").write_text(p.stdout + p.stderr)
    row = {"command": "agesearch " + shlex.join(cmd[len(exe):]), "seconds": round(seconds, 1)}
    if p.returncode:
        err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        print(f"  failed ({p.returncode}): {err}", flush=True)
        return row | {"error": err}
    card = json.loads(out.with_suffix(".json").read_text())
    m = card["test_metrics"]
    print(f"  {seconds:.0f} s: test age MAE {m['age_mae']:.2f} y, gender accuracy {m['gender_accuracy']:.3f}", flush=True)
    return row | {"card": card, "test": m}


def old_mae(m: dict, start: int = OLD_FROM) -> tuple[float | None, int]:
    """MAE over the test faces aged `start` or more: the per-decade MAEs weighted by their counts."""
    pairs = [(mae, m["per_decade_n"][label]) for label, mae in m["per_decade_mae"].items() if int(label.split("-")[0]) >= start]
    n = sum(c for _, c in pairs)
    return (sum(mae * c for mae, c in pairs) / n if n else None), n


def compare_heads(study, trial, seeds: list[int], cache_dir: str | None) -> dict:
    """Train `trial`'s configs with the regression and the DLDL age head, once per seed; test metrics.

    The one place this script imports Keras: `fit` on the study's train split with val for early
    stopping (as `agesearch export` without a refit), the inference model in years, then the
    metrics `export` prints. Only `age_head` (and DLDL's sigma, at its default) differs.
    """
    import dataclasses

    from agesearch.search.frameworks import import_keras_quietly

    keras = import_keras_quietly()
    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.models.inference import inference_model
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.store.study import META_KEY
    from agesearch.search.training.fit import TrainingData, fit
    from agesearch.search.training.metrics import age_gender_metrics, predict_age_gender

    ds, split = study_dataset(study.user_attrs[META_KEY], cache_dir=Path(cache_dir) if cache_dir else None)
    data = TrainingData.from_split(ds, split)
    base = ModelConfig.from_dict(trial.user_attrs["model_config"])
    train_cfg = TrainConfig.from_dict(trial.user_attrs["train_config"])
    sigma = next(f.default for f in dataclasses.fields(ModelConfig) if f.name == "dldl_sigma")
    heads = {"regression": dataclasses.replace(base, age_head="regression"), "dldl": dataclasses.replace(base, age_head="dldl", dldl_sigma=sigma)}
    out: dict = {"trial": trial.number, "preset": trial.user_attrs.get("preset"), "trial_age_head": base.age_head,
                 "train_config": train_cfg.to_dict(), "dldl_sigma": sigma, "runs": {h: [] for h in heads}}
    for seed in seeds:
        for head, cfg in heads.items():
            print(f"head {head}, seed {seed}: trial {trial.number}'s configs, train ({len(split.train)}) with val ({len(split.val)}) "
                  f"for early stopping, at most {train_cfg.epochs} epochs ...", flush=True)
            keras.utils.set_random_seed(seed)
            # The trial's recorded train seed would override this run's: fit() seeds from the config.
            r = fit(cfg, dataclasses.replace(train_cfg, seed=seed), data, None, keep_model=True, early_stopping=True)
            model = inference_model(r.model, cfg, data.baselines.age_scale)
            age, p_female = predict_age_gender(model, ds.images[split.test])
            m = age_gender_metrics(ds.ages[split.test], ds.genders[split.test], age, p_female)
            out["runs"][head].append({"seed": seed, "test": m, "val_age_mae": r.val_age_mae, "val_gender_accuracy": r.val_gender_accuracy,
                                      "val_objective": r.objective, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                      "seconds": round(r.seconds, 1), "params": r.params})
            print(f"  {r.seconds:.0f} s, {r.epochs_run} epochs: test age MAE {m['age_mae']:.2f} y, gender accuracy {m['gender_accuracy']:.3f}", flush=True)
    for head, runs in out["runs"].items():  # the mean over seeds, in the cards' shape (same test images each seed)
        tests = [r["test"] for r in runs]
        labels = tests[0]["per_decade_mae"]
        out.setdefault("mean", {})[head] = {
            "n": tests[0]["n"],
            "age_mae": sum(t["age_mae"] for t in tests) / len(tests),
            "gender_accuracy": sum(t["gender_accuracy"] for t in tests) / len(tests),
            "per_decade_mae": {lab: sum(t["per_decade_mae"][lab] for t in tests) / len(tests) for lab in labels},
            "per_decade_n": tests[0]["per_decade_n"],
        }
    return out


def decade_table(columns: dict[str, dict]) -> list[str]:
    """Markdown: a row per decade of true age (with its test count), a column per model, then overall and 60+."""
    labels = sorted({lab for m in columns.values() for lab in m["per_decade_mae"]}, key=lambda s: int(s.split("-")[0]))
    counts = {}
    for m in columns.values():
        counts.update(m["per_decade_n"])
    head = ["decade", "n", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lab in labels:
        cells = [f"{m['per_decade_mae'][lab]:.2f}" if lab in m["per_decade_mae"] else "" for m in columns.values()]
        lines.append(f"| {lab} | {counts.get(lab, '')} | " + " | ".join(cells) + " |")
    old = [old_mae(m) for m in columns.values()]
    n_old = max((n for _, n in old), default=0)
    lines.append(f"| {OLD_FROM}+ | {n_old} | " + " | ".join("" if v is None else f"{v:.2f}" for v, _ in old) + " |")
    lines.append(f"| all | {next(iter(columns.values()))['n']} | " + " | ".join(f"{m['age_mae']:.2f}" for m in columns.values()) + " |")
    lines.append("| gender acc. | | " + " | ".join(f"{m['gender_accuracy']:.3f}" for m in columns.values()) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=DEFAULT_STUDY, help=f"a finished agesearch study (default {DEFAULT_STUDY})")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"its storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--label", default="default", help="names this run in the record and the JSON")
    p.add_argument("--sizes", default="3,5", help="ensemble sizes, comma-separated (default 3,5)")
    p.add_argument("--refit-ensembles", action="store_true", help="also `--ensemble K --refit-on-train-val --tta flip` per size (K trainings each)")
    p.add_argument("--head-seeds", type=int, default=2, help="seeds (0..N-1) of the regression-vs-DLDL comparison; 0 skips it")
    p.add_argument("--head-trial", default="best", help="whose configs the head comparison trains: best | preset | a trial number")
    p.add_argument("--seed", type=int, default=0, help="`export --seed` of the refits")
    p.add_argument("--cache-dir", help="decoded-image cache, passed to export (default agesearch's)")
    p.add_argument("--artifacts", help="artifact store of the trials' models, passed to export --ensemble (default: the study's)")
    p.add_argument("--workdir", help="exports and logs go here (default: a new temporary folder)")
    p.add_argument("--json", help="file for every number (default: benchmarks/timelines/ensemble_quality-<label>-<time>.json, next to the record)")
    p.add_argument("--out", help="markdown file to append to (default: benchmarks/RESULTS.md)")
    args = p.parse_args()
    if args.head_trial not in ("best", "preset") and not args.head_trial.isdigit():
        p.error(f"--head-trial: best, preset or a trial number, got {args.head_trial!r}")
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 2:
        p.error(f"--sizes: each ensemble needs at least 2 members, got {args.sizes!r}")

    started = time.perf_counter()
    study = load(args.study, args.storage)
    meta = study.user_attrs.get("agesearch", {})
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    if states.get("RUNNING") or states.get("WAITING"):
        print(f"warning: study {args.study!r} is not finished ({states}): the trials ranked now may change", flush=True)
    preset, best, head_trial = pick_trials(study, args.head_trial)

    exe = agesearch_exe()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agesearch-ensemble-quality-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    common = ["--study", args.study, "--storage", args.storage] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    artifacts = ["--artifacts", args.artifacts] if args.artifacts else []

    # Name -> export result, in the order of the record's columns.
    runs: dict[str, dict] = {}
    if preset is not None:
        runs["preset refit"] = export(exe, work, f"preset-refit-trial-{preset.number}", ["--trial", str(preset.number), "--refit-on-train-val", "--seed", str(args.seed)], common)
    if preset is None or best.number != preset.number:
        runs["best refit"] = export(exe, work, f"best-refit-trial-{best.number}", ["--trial", str(best.number), "--refit-on-train-val", "--seed", str(args.seed)], common)
    else:
        runs["best refit"] = runs["preset refit"]  # the best trial is the best preset: one export serves both
    ensembles = []
    for k in sizes:
        for tta in (False, True):
            name = f"ens{k}" + (" +flip" if tta else "")
            runs[name] = export(exe, work, f"ensemble-{k}" + ("-flip" if tta else ""), ["--ensemble", str(k), *(["--tta", "flip"] if tta else []), *artifacts], common)
            ensembles.append(name)
    if args.refit_ensembles:
        for k in sizes:
            name = f"ens{k} refit +flip"
            runs[name] = export(exe, work, f"ensemble-{k}-refit-flip", ["--ensemble", str(k), "--refit-on-train-val", "--tta", "flip", "--seed", str(args.seed)], common)
            ensembles.append(name)

    heads = None
    if args.head_seeds > 0:
        heads = compare_heads(study, head_trial, list(range(args.head_seeds)), args.cache_dir)

    # --- the numbers and the verdicts ---
    def mae_line(m: dict) -> str:
        old, n_old = old_mae(m)
        return (f"test age MAE {m['age_mae']:.2f} y, gender accuracy {m['gender_accuracy']:.3f}, "
                f"{OLD_FROM}+ MAE {'n/a' if old is None else f'{old:.2f}'} y (n={n_old})")

    def trial_line(t) -> str:
        ua = t.user_attrs
        val = ua.get("val_age_mae")
        return (f"#{t.number}" + (f" (preset {ua['preset']})" if ua.get("preset") else "") +
                f": val objective {ua['objective'] if isinstance(ua.get('objective'), (int, float)) else t.value:.4f}" +
                (f", val age MAE {val:.2f} y" if isinstance(val, (int, float)) else "") +
                (f", val gender accuracy {ua['val_gender_accuracy']:.3f}" if isinstance(ua.get("val_gender_accuracy"), (int, float)) else ""))

    split_sizes = meta.get("split_sizes") or (runs[next(iter(runs))].get("card", {}).get("data", {}).get("split_sizes"))
    lines = [
        f"label **{args.label}**; study `{args.study}` in `{args.storage}`: trials {states}; data {meta.get('data')} "
        f"(limit {meta.get('limit')}), {meta.get('image_size')} px, split {split_sizes}",
        f"best preset: {trial_line(preset)}" if preset is not None else "best preset: none COMPLETE (no preset trial with configs)",
        f"best trial: {trial_line(best)}" + (" (the best preset itself)" if preset is not None and best.number == preset.number else ""),
    ]
    for name, r in runs.items():
        if name == "best refit" and r is runs.get("preset refit"):
            lines.append("best refit: the same export as the preset refit")
            continue
        if "error" in r:
            lines.append(f"{name}: `{r['command']}` failed: {r['error']}")
            continue
        card = r["card"]
        extra = ""
        if "members" in card:
            sb = card["side_by_side"]["best_single"]
            members = ", ".join(f"#{mb['trial']}" + (f" ({mb['preset']})" if mb.get("preset") else "") + f" {mb['test_metrics']['age_mae']:.2f}" for mb in card["members"])
            extra = f"; members (each alone, test age MAE): {members}; best single (#{sb['trial']}, {card['ensemble']['members_from'].split(' (')[0]}): {sb['age_mae']:.2f} y / {sb['gender_accuracy']:.3f}"
        elif "training" in card:
            tr = card["training"]
            extra = f"; trial #{card['study']['trial']}, {tr['trained_on']}, {tr['epochs_run']} epochs"
        lines.append(f"{name} ({r['seconds']:.0f} s): {mae_line(r['test'])}{extra}")

    if heads is not None:
        for h in ("regression", "dldl"):
            per = "; ".join(f"seed {x['seed']}: {x['test']['age_mae']:.2f} y / {x['test']['gender_accuracy']:.3f} "
                            f"({x['epochs_run']} epochs, best {x['best_epoch']}, val MAE {x['val_age_mae']:.2f}, {x['seconds']:.0f} s, {x['params']:,} params)"
                            for x in heads["runs"][h])
            mm = heads["mean"][h]
            lines.append(f"head {h} on trial #{heads['trial']}'s configs (its own head: {heads['trial_age_head']}; train, val early stopping, "
                         f"at most {heads['train_config']['epochs']} epochs{', sigma %g' % heads['dldl_sigma'] if h == 'dldl' else ''}): "
                         f"mean {mae_line(mm)}; {per}")

    verdicts: dict[str, dict] = {}
    base = runs.get("preset refit", {}).get("test")
    scored = [(n, runs[n]["test"]) for n in ensembles if "test" in runs[n]]
    top = min(scored, key=lambda x: x[1]["age_mae"]) if scored else None
    if base is None or top is None:
        why = "no preset refit" if base is None else "no ensemble was exported"
        verdicts["ensemble"] = verdicts["old"] = {"met": None, "why": why}
    else:
        name, m = top
        gain = base["age_mae"] - m["age_mae"]
        met = gain >= ENSEMBLE_GAIN and m["gender_accuracy"] >= base["gender_accuracy"]
        verdicts["ensemble"] = {"met": met, "best_ensemble": name, "gain_y": gain, "ensemble_age_mae": m["age_mae"], "preset_age_mae": base["age_mae"],
                                "ensemble_gender_accuracy": m["gender_accuracy"], "preset_gender_accuracy": base["gender_accuracy"],
                                "each": {n: {"gain_y": base["age_mae"] - t["age_mae"], "gender_delta": t["gender_accuracy"] - base["gender_accuracy"]} for n, t in scored}}
        eo, _ = old_mae(m)
        po, n_old = old_mae(base)
        old_gain = None if eo is None or po is None else po - eo
        verdicts["old"] = {"met": old_gain is not None and old_gain >= OLD_GAIN, "best_ensemble": name, "ensemble_60plus": eo, "preset_60plus": po,
                           "gain_y": old_gain, "n": n_old, "combined": f"decades {OLD_FROM}-{OLD_FROM + 9} and up, weighted by their test counts"}
    if heads is None:
        verdicts["head"] = {"met": None, "why": "skipped (--head-seeds 0)"}
    else:
        r_, d_ = heads["mean"]["regression"], heads["mean"]["dldl"]
        verdicts["head"] = {"met": d_["age_mae"] <= r_["age_mae"], "dldl_age_mae": d_["age_mae"], "regression_age_mae": r_["age_mae"],
                            "delta_y": d_["age_mae"] - r_["age_mae"], "seeds": args.head_seeds}

    word = lambda v: "not measured" if v["met"] is None else ("**met**" if v["met"] else "**NOT met**")  # noqa: E731
    v = verdicts["ensemble"]
    lines.append(f"target ensemble >= {ENSEMBLE_GAIN} y under the best preset refit in test age MAE, gender accuracy no worse: {word(v)} " + (
        f"({v['why']})" if v["met"] is None else
        f"(best ensemble {v['best_ensemble']}, chosen on test: {v['ensemble_age_mae']:.2f} vs {v['preset_age_mae']:.2f} y, {v['gain_y']:+.2f} y; "
        f"gender {v['ensemble_gender_accuracy']:.3f} vs {v['preset_gender_accuracy']:.3f}; each: "
        + ", ".join(f"{n} {e['gain_y']:+.2f} y / {e['gender_delta']:+.3f}" for n, e in v["each"].items()) + ")"))
    v = verdicts["head"]
    lines.append(f"target label-distribution head no worse than regression (same model and training, mean test age MAE): {word(v)} " + (
        f"({v['why']})" if v["met"] is None else
        f"(dldl {v['dldl_age_mae']:.2f} vs regression {v['regression_age_mae']:.2f} y, {v['delta_y']:+.2f} y, {v['seeds']} seed(s))"))
    v = verdicts["old"]
    y = lambda x, sign="": "n/a" if x is None else f"{x:{sign}.2f}"  # noqa: E731
    lines.append(f"target {OLD_FROM}+ MAE of the best ensemble >= {OLD_GAIN} y under the best preset refit's: {word(v)} " + (
        f"({v['why']})" if v["met"] is None else
        f"({v['best_ensemble']} {y(v['ensemble_60plus'])} vs {y(v['preset_60plus'])} y over {v['n']} faces aged {OLD_FROM}+, "
        f"{y(v['gain_y'], '+')} y; {v['combined']})"))

    columns = {n: r["test"] for n, r in runs.items() if "test" in r and not (n == "best refit" and r is runs.get("preset refit"))}
    if heads is not None:
        columns |= {f"head {h} (mean)": heads["mean"][h] for h in ("regression", "dldl")}
    table = (["Test age MAE (years) per decade of true age; 60+ = all test faces aged 60 or more (count-weighted).", "", *decade_table(columns)]
             if columns else None)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.out).resolve().parent if args.out else RESULTS.parent
    path = Path(args.json) if args.json else results_dir / "timelines" / f"ensemble_quality-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.label)}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "agesearch-ensemble-quality/1", "label": args.label, "created": datetime.now().isoformat(timespec="seconds"),
        "study": args.study, "storage": args.storage, "trial_states": states, "meta": meta,
        "best_preset": None if preset is None else {"trial": preset.number, "preset": preset.user_attrs.get("preset"), "value": preset.values},
        "best_trial": {"trial": best.number, "preset": best.user_attrs.get("preset"), "value": best.values},
        "exports": runs, "heads": heads, "verdicts": verdicts, "wall_s": round(time.perf_counter() - started, 1), "work": str(work),
    }
    path.write_text(neutral_paths(json.dumps(doc, indent=1, default=str)))  # no machine paths in a tracked file
    lines.append(f"all numbers (the cards whole, the head runs): {path}; exports and logs in {work}; {doc['wall_s']:.0f} s in all")
    record(f"Ensembles, flip TTA and the DLDL head on the test split [{args.label}]: study {args.study}", lines, out=args.out, table=table)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
