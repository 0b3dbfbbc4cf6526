"""Quality on real faces: the write-ups' presets inside agesearch, a search that starts from them, an export.

Issue 11's proof. On the UTKFace 5k (one split for everything) it runs `agesearch run` with
baselines: the presets that are points of the space are the study's first trials, each trained
inside agesearch's loop with its own recipe (at the run's --epochs). The same processes then
search for the rest of the budget (--processes of them side by side on one study, sharing the
device, as README's "several processes" recipe). Then `agesearch export --refit-on-train-val` of
the best trial scores the test split. Records:
  - each preset's val age MAE and gender accuracy;
  - the best searched trial, and when (seconds after the start) a searched trial first beat the
    best preset on the val objective;
  - the exported model's test metrics;
  - which targets were met: preset B (deep-age-branch) <= 7.0 y and >= 0.87; the search >= 0.5 y
    under the best preset at equal or better accuracy; test <= 6.0 y and >= 91 %.
Usage: python benchmarks/quality_utkface.py --data DIR [--space cnn] [--image-size 64] [--epochs 30]
       [--processes 4] [--budget 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402

B = "deep-age-branch"


def run_search(args, exe: list[str], work: Path, study: str) -> tuple[list[str], float]:
    """`--processes` `agesearch run` on one study; the first alone for a head start (it enqueues the presets)."""
    cmd = [*exe, "run", "--space", args.space, "--data", args.data, "--study", study, "--image-size", str(args.image_size),
           "--epochs", str(args.epochs), "--n-trials", "10000", "--timeout", str(args.budget), "--backbone-weights", "none"]
    start = time.perf_counter()
    logs = [open(work / f"run-{i}.log", "w") for i in range(args.processes)]
    procs = [subprocess.Popen(cmd, cwd=work, stdout=logs[0], stderr=subprocess.STDOUT)]
    time.sleep(args.head_start)
    for i in range(1, args.processes):
        procs.append(subprocess.Popen(cmd, cwd=work, stdout=logs[i], stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    if any(codes):
        print((work / "run-0.log").read_text()[-3000:])
        raise SystemExit(f"agesearch run exited with {codes}")
    return cmd, time.perf_counter() - start


def summarise(study) -> dict:
    import optuna

    from agesearch.search.store.study import best_trial

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    start = min(t.datetime_start for t in study.trials if t.datetime_start is not None)
    presets = {t.user_attrs["preset"]: t for t in done if "preset" in t.user_attrs}
    searched = [t for t in done if "preset" not in t.user_attrs]
    best_preset = best_trial(study, list(presets.values()))
    best_search = best_trial(study, searched)
    beat = None
    if best_preset is not None:
        better = [t for t in searched if t.value < best_preset.value]
        if better:
            beat = min((t.datetime_complete - start).total_seconds() for t in better)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return dict(presets=presets, best_preset=best_preset, best_search=best_search, beat_s=beat, states=states, n=len(study.trials))


def line(t) -> str:
    u = t.user_attrs
    return f"#{t.number}: objective {t.value:.4f}, val age MAE {u['val_age_mae']:.2f} y, val gender accuracy {u['val_gender_accuracy']:.3f}, {u.get('epochs_run')} epochs, {u.get('seconds', 0):.0f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--space", default="cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--processes", type=int, default=1, help="agesearch run processes on the one study")
    p.add_argument("--budget", type=float, default=600, help="seconds of search (each process's --timeout)")
    p.add_argument("--head-start", type=float, default=8.0, help="seconds the first process runs alone")
    p.add_argument("--workdir", help="keep the study here (default: a temporary folder)")
    p.add_argument("--out", help="markdown file to append to (default: benchmarks/RESULTS.md)")
    args = p.parse_args()
    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())  # the runs work in their own folder
    exe = [sys.executable, "-m", "agesearch.search.cli"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agesearch-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    study_name = f"quality-{args.space}-{args.image_size}px"
    cmd, search_s = run_search(args, exe, work, study_name)
    start = time.perf_counter()
    export = subprocess.run([*exe, "export", "--study", study_name, "--refit-on-train-val"], cwd=work, capture_output=True, text=True)
    export_s = time.perf_counter() - start
    print(export.stdout[-2000:], export.stderr[-2000:])

    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{work / 'studies' / (study_name + '.db')}")
    s = summarise(study)
    lines = [
        f"search: `agesearch {' '.join(cmd[3:])}` x {args.processes} processes on one study, {search_s:.0f} s wall: {s['n']} trials ({', '.join(f'{k} {v}' for k, v in s['states'].items())})",
        *[f"preset {name}: {line(t)}" for name, t in sorted(s["presets"].items())],
    ]
    bp, bs = s["best_preset"], s["best_search"]
    if bs is not None:
        lines.append(f"best searched trial {line(bs)}; params {bs.params}")
    if bp is not None and bs is not None:
        d_mae = bp.user_attrs["val_age_mae"] - bs.user_attrs["val_age_mae"]
        d_acc = bs.user_attrs["val_gender_accuracy"] - bp.user_attrs["val_gender_accuracy"]
        lines.append(f"search vs best preset ({bp.user_attrs['preset']}): objective {bp.value - bs.value:+.4f} lower, age MAE {d_mae:+.2f} y lower, accuracy {d_acc:+.3f}; first beaten on the objective {'after %.0f s' % s['beat_s'] if s['beat_s'] is not None else 'never'}")
    b = s["presets"].get(B)
    card_path = work / "studies" / study_name / "model.json"
    m = json.loads(card_path.read_text())["test_metrics"] if card_path.exists() else None
    if m:
        lines.append(f"export: `agesearch export --study {study_name} --refit-on-train-val` in {export_s:.0f} s: test age MAE {m['age_mae']:.2f} y, test gender accuracy {m['gender_accuracy']:.3f} (n={m['n']}), per decade {m.get('per_decade_mae')}")
    targets = [
        ("preset B <= 7.0 y and >= 0.87", b is not None and b.user_attrs["val_age_mae"] <= 7.0 and b.user_attrs["val_gender_accuracy"] >= 0.87),
        ("search >= 0.5 y under the best preset at equal or better accuracy", bp is not None and bs is not None and bp.user_attrs["val_age_mae"] - bs.user_attrs["val_age_mae"] >= 0.5 and bs.user_attrs["val_gender_accuracy"] >= bp.user_attrs["val_gender_accuracy"]),
        ("exported test <= 6.0 y and >= 91 %", bool(m) and m["age_mae"] <= 6.0 and m["gender_accuracy"] >= 0.91),
    ]
    lines += [f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in targets]
    record(f"Quality on UTKFace-5k: presets, then a {args.space} search at {args.image_size} px, then export", lines, out=args.out)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
