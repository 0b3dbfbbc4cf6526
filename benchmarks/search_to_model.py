"""From a cheap search to the best model: search at 32 px, train the chosen ensemble at 64 px, and compare.

The whole path of issue 22, on the data given by --data, in phases (each its own invocation with
--phase, or all in one; each phase writes a JSON file into --workdir that the later ones read back):

  search     `benchmarks/search_vs_presets.py`: a `cnn` search at --search-size of --budget-units U
             (presets included), then the best preset and the best searched trial refit on
             train+val at that size with seeds 0..N-1 (`agesearch export --trial N
             --refit-on-train-val --seed S`).
  ensemble   `agesearch export --ensemble K --refit-on-train-val --image-size TARGET --tta flip
             --epochs E --seed S` of that study, for each seed: members chosen by greedy selection
             on val, each retrained on train+val at the target size for --target-epochs (24; the
             trials' own 7-9 epochs at 64 px gave 6.56 y where 24 gave 5.91 y, RESULTS.md). A seed
             already trained with the same size, K and epochs is read back, not trained again.
  writeup-b  write-up B (preset deep-age-branch) at the target size on its own recipe (its epochs),
             refit on train+val, each seed; trained here with agesearch's own fit, on the study's
             split. About 30 minutes a seed on 2 CPU cores at 64 px: run it in its own invocation.
  report     reads the three back and writes this script's section of RESULTS.md: test age MAE,
             gender accuracy and 60+ age MAE (mean and sd over the seeds, paired by seed), the
             per-decade table, the wall time of each phase, and the issue's targets met or not.

agesearch's path is `search` (without its refits, which are the baselines) plus one `ensemble`
training; the script reports both.

Usage:
  python benchmarks/search_to_model.py --data DIR --workdir W --phase writeup-b   # the baseline, once
  python benchmarks/search_to_model.py --data DIR --workdir W                     # search, ensemble, report
Smoke: python benchmarks/search_to_model.py --data synthetic --workdir /tmp/s2m --epochs 2 --budget-units 3 \\
  --search-size 32 --target-size 48 --target-epochs 2 --seeds 2 --writeup-b-epochs 1 --out /tmp/s2m.md -- --synthetic-count 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record, split_run_flags  # noqa: E402

from search_vs_presets import agesearch_exe, option_value  # noqa: E402

WRITEUP_B = "deep-age-branch"
TARGETS = {"mae_vs_b": 0.7, "gender_vs_b": 0.015, "path_s": 2 * 3600, "old_mae": 11.0}


def over_60(metrics: dict) -> float | None:
    """Age MAE of the test faces aged 60 and over, from the per-decade MAE and counts."""
    rows = [(metrics["per_decade_mae"][k], n) for k, n in metrics["per_decade_n"].items() if int(k.split("-")[0].rstrip("+")) >= 60]
    total = sum(n for _, n in rows)
    return sum(m * n for m, n in rows) / total if total else None


def stats(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def phase_search(args, work: Path, extra: list[str]) -> dict:
    out = work / "search.json"
    cmd = [sys.executable, str(Path(__file__).with_name("search_vs_presets.py")), "--data", args.data, "--image-size", str(args.search_size),
           "--epochs", str(args.epochs), "--budget-units", str(args.budget_units), "--seeds", str(args.seeds), "--label", "search-to-model",
           "--workdir", str(work / "search"), "--timeline", str(out), "--out", str(work / "search.md"), "--", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    doc = json.loads(out.read_text())
    doc["wall_s_invocation"] = time.perf_counter() - start
    out.write_text(json.dumps(doc, indent=1, default=str))
    return doc


def study_of(work: Path, search: dict) -> tuple[str, str]:
    name = f"vs-presets-{search['space']}-{search['image_size']}px"
    return name, f"sqlite:///{work / 'search' / (name + '.db')}"


def phase_ensemble(args, work: Path, search: dict, extra: list[str]) -> dict:
    name, url = study_of(work, search)
    runs = []
    for seed in range(args.seeds):
        out = work / "ensemble" / f"seed{seed}.keras"
        out.parent.mkdir(parents=True, exist_ok=True)
        # A seed's ensemble (up to half an hour at 64 px) is kept when its card matches this run: a
        # stopped invocation loses only the seed it was training.
        kept = read_back_ensemble(out, args, seed)
        if kept:
            print(f"ensemble at {args.target_size} px, seed {seed}: read back from {out.name}", flush=True)
            runs.append(kept)
            continue
        cmd = [*agesearch_exe(), "export", "--study", name, "--storage", url, "--ensemble", str(args.ensemble), "--refit-on-train-val",
               "--image-size", str(args.target_size), "--tta", "flip", "--seed", str(seed), "--out", str(out)]
        if args.target_epochs:
            cmd += ["--epochs", str(args.target_epochs)]
        if option_value(extra, "--cache-dir"):
            cmd += ["--cache-dir", option_value(extra, "--cache-dir")]
        start = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        (work / "ensemble" / f"seed{seed}.log").write_text(p.stdout + p.stderr)
        if p.returncode:
            raise SystemExit(f"export --ensemble failed (seed {seed}): {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        runs.append({"seed": seed, "seconds": time.perf_counter() - start, "card": json.loads(out.with_suffix(".json").read_text())})
        # The card records the size and K (`ensemble.selection.k`); this file adds only what it cannot.
        out.with_suffix(".run.json").write_text(json.dumps({"seconds": runs[-1]["seconds"], "target_epochs": args.target_epochs}))
    doc = {"runs": runs}
    (work / "ensemble.json").write_text(json.dumps(doc, indent=1, default=str))
    return doc


def read_back_ensemble(out: Path, args, seed: int) -> dict | None:
    """The finished seed at `out` when it was trained with this invocation's size, K and epochs."""
    run_file, card_file = out.with_suffix(".run.json"), out.with_suffix(".json")
    if not (run_file.exists() and card_file.exists() and out.exists()):
        return None
    run, card = json.loads(run_file.read_text()), json.loads(card_file.read_text())
    k = (card.get("ensemble", {}).get("selection") or {}).get("k")
    if (k, run["target_epochs"], card["input"]["image_size"]) != (args.ensemble, args.target_epochs, args.target_size):
        return None
    return {"seed": seed, "seconds": run["seconds"], "card": card}


def phase_writeup_b(args, work: Path, search: dict) -> dict:
    """Write-up B on its own recipe at the target size, refit on train+val, scored on the study's test split."""
    import dataclasses

    import keras
    import numpy as np
    import optuna

    from agesearch.models.inference import inference_model
    from agesearch.models.presets import get_preset
    from agesearch.search.data.images import Split
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.export.trial import score_on_test
    from agesearch.search.training.fit import TrainingData, fit

    name, url = study_of(work, search)
    meta = optuna.load_study(study_name=name, storage=url).user_attrs["agesearch"]
    ds, split = study_dataset(meta, image_size=args.target_size)
    fit_split = Split(train=np.sort(np.concatenate([split.train, split.val])), val=split.val, test=split.test)
    data = TrainingData.from_split(ds, fit_split)
    model_cfg, train_cfg = get_preset(WRITEUP_B).configs(args.target_size)
    epochs = args.writeup_b_epochs or train_cfg.epochs
    record_file = work / "writeup-b.json"
    # Each seed is written as it ends (about 30 minutes each): a stopped invocation keeps its finished
    # seeds, and the next one trains only the seeds still missing.
    done = json.loads(record_file.read_text()) if record_file.exists() else {}
    same = done.get("image_size") == args.target_size and all(r.get("epochs") == epochs for r in done.get("runs", []))
    runs = [r for r in done.get("runs", []) if r["seed"] < args.seeds] if same else []
    for seed in range(args.seeds):
        if any(r["seed"] == seed for r in runs):
            print(f"write-up B at {args.target_size} px, seed {seed}: read back from {record_file.name}", flush=True)
            continue
        cfg = dataclasses.replace(train_cfg, epochs=epochs, patience=epochs)
        if any(f.name == "seed" for f in dataclasses.fields(cfg)):
            cfg = dataclasses.replace(cfg, seed=seed)
        keras.utils.set_random_seed(seed)
        print(f"write-up B at {args.target_size} px, {epochs} epochs on train+val, seed {seed} ...", flush=True)
        start = time.perf_counter()
        result = fit(model_cfg, cfg, data, None, keep_model=True, early_stopping=False)
        model = inference_model(result.model, model_cfg, data.baselines.age_scale)
        runs.append({"seed": seed, "seconds": time.perf_counter() - start, "epochs": epochs, "test": score_on_test(model, ds, split)})
        print(f"  test age MAE {runs[-1]['test']['age_mae']:.2f} y, gender accuracy {runs[-1]['test']['gender_accuracy']:.3f}", flush=True)
        record_file.write_text(json.dumps(writeup_b_record(args, runs), indent=1, default=str))
    return writeup_b_record(args, runs)


def writeup_b_record(args, runs: list[dict]) -> dict:
    return {"preset": WRITEUP_B, "image_size": args.target_size, "runs": sorted(runs, key=lambda r: r["seed"])}


def phase_report(args, work: Path, search: dict, ens: dict, wb: dict | None) -> None:
    rows: dict[str, list[dict]] = {}  # model -> per-seed test metrics
    rows[f"ensemble at {args.target_size} px (+ flip TTA)"] = [r["card"]["test_metrics"] for r in ens["runs"]]
    if wb:
        rows[f"write-up B at {args.target_size} px, its recipe ({wb['runs'][0]['epochs']} epochs)"] = [r["test"] for r in wb["runs"]]
    for role in ("best preset", "best searched"):
        runs = search.get("exports", {}).get(role) or []
        if runs and all("test" in r for r in runs):
            rows[f"{role} at {args.search_size} px (refit)"] = [r["test"] for r in runs]
    table = ["| model (test split, mean ± sd over seeds) | seeds | age MAE (y) | gender accuracy | 60+ age MAE (y) |", "|---|---|---|---|---|"]
    for label, ms in rows.items():
        old = [v for v in (over_60(m) for m in ms) if v is not None]
        table.append(f"| {label} | {len(ms)} | {stats([m['age_mae'] for m in ms])} | {stats([100 * m['gender_accuracy'] for m in ms])} % | {stats(old) if old else 'n/a'} |")
    decades = list(next(iter(rows.values()))[0]["per_decade_n"])
    table += ["", "| decade (n) | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for d in decades:
        n = next(iter(rows.values()))[0]["per_decade_n"][d]
        table.append(f"| {d} ({n}) | " + " | ".join(f"{statistics.mean(m['per_decade_mae'].get(d, float('nan')) for m in ms):.2f}" for ms in rows.values()) + " |")

    search_s = search.get("phase1_process_s", 0) + search.get("phase2_process_s", 0)
    refit_s = sum(r["seconds"] for runs in search.get("exports", {}).values() for r in runs)
    ens_s = [r["seconds"] for r in ens["runs"]]
    path_s = search_s + statistics.mean(ens_s)
    member_epochs = "/".join(sorted({str(m["training"]["trained"]["epochs"]) for r in ens["runs"] for m in r["card"]["members"]}, key=int))
    lines = [
        f"search: cnn at {args.search_size} px, {args.epochs} epochs, {args.budget_units:g} U (U = {search['u_s']:.0f} s), presets included: "
        f"{search_s:.0f} s; best preset #{search['best_preset']['number']} ({search['best_preset']['preset']}) val objective {search['best_preset']['value']:.4f}, "
        + (f"best searched #{search['best_searched']['number']} {search['best_searched']['value']:.4f}" if search.get("best_searched") else "no searched trial"),
        f"the 32 px refits of the best preset and the best searched trial ({args.seeds} seeds each): {refit_s:.0f} s (baselines: outside the path)",
        f"ensemble at {args.target_size} px ({member_epochs} epochs a member), each seed: {', '.join(f'{s:.0f} s' for s in ens_s)}; members (seed 0): "
        + "; ".join(f"trial {m['trial']}" + (f" ({m['preset']})" if m.get("preset") else "") for m in ens["runs"][0]["card"]["members"]),
        f"**agesearch's path (search + one ensemble training): {path_s:.0f} s = {path_s / 3600:.2f} h** (target <= 2 h: {'met' if path_s <= TARGETS['path_s'] else 'NOT met'})",
    ]
    if wb:
        took = ", ".join(f"{r['seconds']:.0f} s" for r in wb["runs"])
        lines.append(f"write-up B at {args.target_size} px: {took} (its own invocation)")
    ens_m = rows[f"ensemble at {args.target_size} px (+ flip TTA)"]
    ens_mae = statistics.mean(m["age_mae"] for m in ens_m)
    ens_acc = statistics.mean(m["gender_accuracy"] for m in ens_m)
    old = [v for v in (over_60(m) for m in ens_m) if v is not None]
    if old:
        lines.append(f"target: the ensemble's 60+ age MAE <= {TARGETS['old_mae']:g} y: {'met' if statistics.mean(old) <= TARGETS['old_mae'] else 'NOT met'} ({statistics.mean(old):.2f} y)")
    if wb:
        b = [r["test"] for r in wb["runs"]]
        d_mae = [x["age_mae"] - e["age_mae"] for x, e in zip(b, ens_m)]
        d_acc = statistics.mean(e["gender_accuracy"] for e in ens_m) - statistics.mean(x["gender_accuracy"] for x in b)
        met = statistics.mean(d_mae) >= TARGETS["mae_vs_b"] and d_acc >= TARGETS["gender_vs_b"]
        lines.append(f"target: the ensemble beats write-up B by >= {TARGETS['mae_vs_b']} y age MAE and >= {100 * TARGETS['gender_vs_b']:.1f} points gender accuracy: "
                     f"{'**met**' if met else '**NOT met**'} (B minus ensemble, paired by seed: {', '.join(f'{d:+.2f}' for d in d_mae)} y, mean {statistics.mean(d_mae):+.2f} y; "
                     f"gender {100 * d_acc:+.1f} points)")
    # Its own best member: each seed's member with the lowest test MAE (the val-chosen first member may not be it).
    best_member = [min(r["card"]["members"], key=lambda m: m["test_metrics"]["age_mae"]) for r in ens["runs"]]
    first = [r["card"]["side_by_side"]["best_single"] for r in ens["runs"]]
    beats = [e["age_mae"] < b["test_metrics"]["age_mae"] for e, b in zip(ens_m, best_member)]
    lines.append(f"target: the ensemble beats its own best member on test: {'met' if all(beats) else 'NOT met'} "
                 f"(on {sum(beats)} of {len(beats)} seeds; best member by test {stats([b['test_metrics']['age_mae'] for b in best_member])} y "
                 f"(trials {', '.join(str(b['trial']) for b in best_member)}), the val-chosen first member {stats([f['age_mae'] for f in first])} y, "
                 f"ensemble {ens_mae:.2f} y; gender {100 * ens_acc:.1f} %)")
    sel = ens["runs"][0]["card"]["ensemble"].get("selection") or {}
    picks = [m.get("why") for m in ens["runs"][0]["card"]["members"]]
    lines.append(f"target: the ensemble beats its own best member on val (greedy selection on the stored {args.search_size} px models): "
                 + ("met" if len(picks) > 1 else "NOT met (one member)") + f": {'; '.join(p for p in picks if p)}")
    record(f"From a cheap search to the best model: {args.search_size} px search, {args.target_size} px ensemble", lines, out=args.out, table=table)


def main() -> None:
    argv, extra = split_run_flags(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--workdir", required=True, help="the phases' studies, models and JSON records (the later phases read them back)")
    p.add_argument("--phase", choices=("all", "search", "ensemble", "writeup-b", "report"), default="all",
                   help="all = search, ensemble, then report (write-up B read back when its phase ran before)")
    p.add_argument("--search-size", type=int, default=32)
    p.add_argument("--target-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=9, help="epochs of the search's trials")
    p.add_argument("--target-epochs", type=int, default=24,
                   help="epochs of each ensemble member at the target size (default: 24; 0: its trial's best epoch + 1)")
    p.add_argument("--budget-units", type=float, default=10.0)
    p.add_argument("--ensemble", type=int, default=3, help="at most this many members (default 3, the size every recorded run used)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--writeup-b-epochs", type=int, help="write-up B's epochs (default: its recipe's)")
    p.add_argument("--out", help="append the record here instead of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    read = lambda name: json.loads((work / name).read_text()) if (work / name).exists() else None  # noqa: E731
    search = phase_search(args, work, extra) if args.phase in ("all", "search") else read("search.json")
    if search is None:
        raise SystemExit(f"no search in {work}: run --phase search first")
    if args.phase == "writeup-b":
        phase_writeup_b(args, work, search)
        return
    ens = phase_ensemble(args, work, search, extra) if args.phase in ("all", "ensemble") else read("ensemble.json")
    if args.phase in ("all", "report") and ens is not None:
        phase_report(args, work, search, ens, read("writeup-b.json"))


if __name__ == "__main__":
    main()
