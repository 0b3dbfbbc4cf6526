"""Quality on real faces: a `full` search on the 5,000 UTKFace images, then `export`.

Issue target: held-out test age MAE <= 6.0 years and gender accuracy >= 91 % (the write-ups
report val MAE 6.9-8.1 and accuracy 86-92 %). Runs the real CLI end to end, in a scratch
folder, and records the search's best val metrics and the exported model's test metrics.
Without network access the backbones get random weights (`--backbone-weights none`).
Usage: python benchmarks/quality_utkface.py [--image-size 64] [--epochs 12] [--n-trials 30] [--timeout 2700]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-5k"))
    p.add_argument("--space", default="full")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-trials", type=int, default=30)
    p.add_argument("--timeout", type=float, default=2700)
    p.add_argument("--backbone-weights", default="none")
    p.add_argument("--workdir", help="keep the study here (default: a temporary folder)")
    args = p.parse_args()
    exe = str(Path(sys.executable).parent / "agesearch")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agesearch-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    study = f"quality-{args.space}-{args.image_size}px"
    run = [exe, "run", "--space", args.space, "--data", args.data, "--study", study, "--image-size", str(args.image_size),
           "--epochs", str(args.epochs), "--n-trials", str(args.n_trials), "--timeout", str(args.timeout),
           "--backbone-weights", args.backbone_weights]
    start = time.perf_counter()
    subprocess.run(run, cwd=work, check=True)
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([exe, "export", "--study", study], cwd=work, check=True)
    export_s = time.perf_counter() - start
    card = json.loads((work / "studies" / study / "model.json").read_text())

    import optuna

    s = optuna.load_study(study_name=study, storage=f"sqlite:///{work / 'studies' / (study + '.db')}")
    states = {}
    for t in s.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = s.best_trial
    m = card["test_metrics"]
    met = m["age_mae"] <= 6.0 and m["gender_accuracy"] >= 0.91
    record(
        f"Quality on UTKFace-5k: {args.space} search at {args.image_size} px, then export",
        [
            f"search: `{' '.join(['agesearch', *run[1:]])}` in {work}: {len(s.trials)} trials ({', '.join(f'{k.lower()} {v}' for k, v in states.items())}) in {search_s / 60:.1f} min",
            f"best trial #{best.number}: objective {best.value:.4f}, val age MAE {best.user_attrs['val_age_mae']:.2f} y, val gender accuracy {best.user_attrs['val_gender_accuracy']:.3f}, params {best.params}",
            f"export: `agesearch export --study {study}` in {export_s / 60:.1f} min: test age MAE {m['age_mae']:.2f} y, test gender accuracy {m['gender_accuracy']:.3f} (n={m['n']})",
            f"target (test MAE <= 6.0 y and accuracy >= 0.91): {'met' if met else 'NOT met'} on this CPU-only machine",
        ],
    )


if __name__ == "__main__":
    main()
