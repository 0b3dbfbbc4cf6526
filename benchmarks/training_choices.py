"""The evidence for the training defaults (issue 11): what the learning curves of a finished study say.

Reads a study's per-epoch val objectives (user attr `history`) and prints and records:
  - where the complete trials' best epochs fall (share in the last fifth of --epochs: still
    improving when the budget ends), and the longest run of epochs without improvement before
    the best one (the early-stopping patience that would not have cut it short);
  - for each epoch k, the rank correlation (Spearman) between the trials' objective at epoch k
    and their final best objective: how early a median pruner's comparison means something.
Usage: python benchmarks/training_choices.py STUDY_DB [--study NAME] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _record import record  # noqa: E402


def longest_wait(curve: list[float]) -> int:
    """Most epochs between one improvement of the best value so far and the next, up to the best."""
    best, last, wait = np.inf, 0, 0
    for epoch, value in enumerate(curve):
        if value < best:
            wait, best, last = max(wait, epoch - last), value, epoch
    return wait


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db", help="the study's SQLite file")
    p.add_argument("--study", help="study name (default: the first in the file)")
    p.add_argument("--out", help="markdown file to append to (default: benchmarks/RESULTS.md)")
    args = p.parse_args()
    import optuna  # after the arguments: --help stays quick
    import pandas as pd
    storage = f"sqlite:///{Path(args.db).resolve()}"
    name = args.study or optuna.get_all_study_names(storage)[0]
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("history")]
    epochs = max(t.user_attrs["train_config"]["epochs"] for t in done)
    curves = {t.number: t.user_attrs["history"]["val_objective"] for t in done}
    best_epochs = np.array([int(np.argmin(c)) + 1 for c in curves.values()])
    waits = np.array([longest_wait(c) for c in curves.values()])
    full = [c for c in curves.values() if len(c) == epochs]
    late = float(np.mean(best_epochs > 0.8 * epochs))
    lines = [
        f"study {name}: {len(done)} complete trials with curves, --epochs {epochs}; {len(full)} ran every epoch",
        f"best epoch: median {np.median(best_epochs):.0f}, in the last fifth of the epochs for {late:.0%} of the trials",
        f"longest wait between improvements before the best epoch: median {np.median(waits):.0f}, 90th percentile {np.percentile(waits, 90):.0f}, max {waits.max()}",
    ]
    final = pd.Series({n: min(c) for n, c in curves.items()})
    corr = []
    for k in range(1, epochs + 1):
        at_k = pd.Series({n: c[k - 1] for n, c in curves.items() if len(c) >= k})
        if len(at_k) >= 5:
            corr.append((k, len(at_k), at_k.rank().corr(final[at_k.index].rank())))
    table = ["| epoch | trials | Spearman(objective at epoch, final best) |", "|---:|---:|---:|"]
    table += [f"| {k} | {n} | {r:.2f} |" for k, n, r in corr]
    record(f"Training choices: what the learning curves of {name} say", lines, table=table, out=args.out)


if __name__ == "__main__":
    main()
