"""Is the pruner fooled by seed noise? The best preset run again with other seeds, and the pruners replayed on the curves.

One `agesearch run --space cnn --pruner none` study in a fresh folder:
  1. the presets (baseline trials) run first, unpruned;
  2. the best of them is enqueued again `--reruns` times (each trial gets its own training seed
     from its trial number), plus once with a learning rate of 10 (a clearly bad trial), all
     unpruned, so every per-epoch curve is complete.
Then each candidate pruner is REPLAYED on the recorded curves: for each rerun, an in-memory study
holding the presets as finished trials (with their per-epoch values) asks a new trial, reports the
rerun's epochs one by one and asks the pruner after each, exactly as the search does
(`report_epoch`). Replaying is exact for Optuna's pruners (they read only the intermediate values
of the study's trials) and costs no training, so every candidate sees the same noise.

Recorded: per candidate, how many of the reruns it prunes (and at which epoch), at which epoch it
stops the bad trial, and, for "presets are priors, not sacred", what each weaker preset would have
cost had it been pruned against the presets before it.

Usage (about 4 presets + 6 reruns of training; 32 px takes ~15 min on 2 cores):
  python benchmarks/pruner_noise.py --data DIR --image-size 32
Smoke: python benchmarks/pruner_noise.py --data synthetic --epochs 3 --reruns 2 --out /tmp/x.md -- --synthetic-count 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record, split_run_flags  # noqa: E402

from search_vs_presets import agesearch_exe, count_presets, load_study, run_phase  # noqa: E402

BAD_LEARNING_RATE = 10.0  # diverges: the trial should end in its first rung
STUCK_LEARNING_RATE = 1e-6  # learns nothing, with finite values: only a pruner can stop it


def candidates(epochs: int, n_presets: int) -> dict:
    """name -> factory of a fresh pruner: the project's table plus the variants compared here."""
    import optuna

    from agesearch.search.loop.options import PRUNERS
    from agesearch.search.loop.pruning import MarginMedianPruner

    start = max(n_presets, 3)
    out = {f"{name} (--pruner {name})": (lambda c=c: c.make(epochs, n_presets)) for name, c in PRUNERS.items() if name != "none"}
    out["percentile 75"] = lambda: optuna.pruners.PercentilePruner(75.0, n_startup_trials=start, n_warmup_steps=1)
    out["patient(median, 2)"] = lambda: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=start, n_warmup_steps=1), patience=2)
    for margin in (0.1, 0.2, 0.3):
        out[f"median + margin {margin}"] = lambda m=margin: MarginMedianPruner(m, n_startup_trials=start, n_warmup_steps=1)
    return out


def curve(t) -> list[float]:
    return list(t.user_attrs.get("history", {}).get("val_objective") or [])


def replay(make_pruner, reference: list, values: list[float]) -> int | None:
    """The epoch at which `make_pruner()` prunes a trial reporting `values` after `reference`, or None."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=make_pruner())
    for ref in reference:
        c = curve(ref)
        if c:
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=min(c), intermediate_values=dict(enumerate(c))))
    trial = study.ask()
    for epoch, value in enumerate(values):
        trial.report(value, epoch)
        if trial.should_prune():
            return epoch
    return None


def main() -> None:
    from agesearch.search.store.study import best_trial  # the one rule for the best trial

    argv, extra = split_run_flags(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--reruns", type=int, default=5, help="reruns of the best preset, each with its own seed")
    p.add_argument("--workdir", help="keep the study and logs here (default: a new temporary folder)")
    p.add_argument("--replay-only", action="store_true", help="replay the pruners on the study already in --workdir")
    p.add_argument("--out", help="append the record here instead of benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    exe = agesearch_exe()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pruner-noise-"))
    work.mkdir(parents=True, exist_ok=True)
    name = f"pruner-noise-{args.image_size}px"
    url = f"sqlite:///{work / name}.db"
    base = [*exe, "run", "--space", "cnn", "--data", args.data, "--study", name, "--storage", url, "--image-size", str(args.image_size),
            "--epochs", str(args.epochs), "--backbone-weights", "none", "--pruner", "none", *extra]
    n_presets = count_presets(exe, "cnn", args.image_size, extra)
    wall = {}
    if not args.replay_only:
        wall["presets"] = run_phase([*base, "--n-trials", str(n_presets)], work, "presets.log")
        study = load_study(name, url)
        presets = [t for t in study.trials if "preset" in t.user_attrs and t.state.name == "COMPLETE"]
        best = best_trial(study, presets)
        for i in range(args.reruns):
            study.enqueue_trial(best.params, user_attrs={"rerun_of": best.number})
        for lr in (BAD_LEARNING_RATE, STUCK_LEARNING_RATE):
            study.enqueue_trial(best.params | {"learning_rate": lr}, user_attrs={"bad": f"learning_rate={lr}"})
        wall["reruns"] = run_phase([*base, "--n-trials", str(n_presets + args.reruns + 2)], work, "reruns.log")

    study = load_study(name, url)
    trials = sorted(study.trials, key=lambda t: t.number)
    presets = [t for t in trials if "preset" in t.user_attrs and t.state.name == "COMPLETE"]
    best = best_trial(study, presets)
    reruns = [t for t in trials if t.user_attrs.get("rerun_of") is not None and curve(t)]
    bads = [t for t in trials if "bad" in t.user_attrs]
    vals = [min(curve(t)) for t in [best, *reruns]]
    import statistics

    lines = [
        f"data {study.user_attrs['agesearch']['data'].split('/')[-1]}, {args.image_size} px, {args.epochs} epochs, space cnn, --pruner none while recording",
        f"best preset {best.user_attrs['preset']} #{best.number}: val objective {best.value:.4f}; its {len(reruns)} reruns (seeds "
        f"{', '.join(str(t.user_attrs.get('seed', '?')) for t in reruns)}): "
        f"{', '.join(f'{v:.4f}' for v in vals[1:])}; all {len(vals)} runs: mean {statistics.mean(vals):.4f}, sd {statistics.stdev(vals):.4f}",
        "per-epoch val objective of the runs: " + "; ".join(f"#{t.number} " + " ".join(f"{v:.3f}" for v in curve(t)) for t in [best, *reruns]),
        *[f"bad trial #{bad.number} ({bad.user_attrs['bad']}): {bad.state.name}"
          + (f", {bad.user_attrs.get('fail_reason')}" if bad.state.name == "FAIL" else f", curve {' '.join(f'{v:.3f}' for v in curve(bad))}") for bad in bads],
        "wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()) if wall else "wall: replay only",
    ]
    table = ["| pruner | runs of the best preset pruned against the presets (epoch) | ... against the presets and its other runs | ... against its other runs only | "
             + " | ".join(f"{b.user_attrs['bad']}: stopped at epoch" for b in bads)
             + " |", "|---|---|---|---|" + "---|" * len(bads)]
    for label, make in candidates(args.epochs, len(presets)).items():
        pruned = [(t.number, replay(make, presets, curve(t))) for t in reruns]
        hits = [f"#{n} ({e})" for n, e in pruned if e is not None]
        # As later in a search, when trials as good as the best preset have finished: each run of
        # it (the preset's own run included) against the presets and all its other runs.
        runs = [best, *reruns]
        loo = [(t.number, replay(make, [p for p in presets if p is not best] + [r for r in runs if r is not t], curve(t))) for t in runs]
        loo_hits = [f"#{n} ({e})" for n, e in loo if e is not None]
        # The hardest case: every finished trial is as good as it (only its other runs finished).
        peers = [(t.number, replay(make, [r for r in runs if r is not t], curve(t))) for t in runs]
        peer_hits = [f"#{n} ({e})" for n, e in peers if e is not None]
        bad_cells = []
        for bad in bads:
            at = replay(make, presets + reruns, curve(bad)) if curve(bad) else None
            bad_cells.append("FAIL at epoch 0 (NaN loss)" if not curve(bad) else ("not stopped" if at is None else str(at)))
        table.append(f"| {label} | {len(hits)} of {len(reruns)}{': ' + ', '.join(hits) if hits else ''} | "
                     f"{len(loo_hits)} of {len(runs)}{': ' + ', '.join(loo_hits) if loo_hits else ''} | "
                     f"{len(peer_hits)} of {len(runs)}{': ' + ', '.join(peer_hits) if peer_hits else ''} | {' | '.join(bad_cells)} |")
    # Presets as priors, not sacred: each preset against the finished presets before it, under the
    # default rule from the first finished one (as if presets were not protected).
    from agesearch.search.loop.pruning import MarginMedianPruner

    order = sorted(presets, key=lambda t: t.number)
    stops = [(t, replay(lambda: MarginMedianPruner(n_startup_trials=1, n_warmup_steps=1), order[:i], curve(t))) for i, t in enumerate(order)]
    total = sum(len(curve(t)) for t in order)
    saved = sum(len(curve(t)) - (e + 1) for t, e in stops if e is not None)
    lines.append("presets as priors (each preset pruned by the default rule against the presets finished before it): "
                 + (", ".join(f"{t.user_attrs['preset']} at epoch {e}" + (" (the BEST preset)" if t is best else "") for t, e in stops if e is not None) or "none stopped")
                 + f"; {saved} of the presets' {total} epochs saved")
    record(f"Pruner on seed noise: the best preset rerun {len(reruns)} times, cnn at {args.image_size} px", lines, out=args.out, table=table)


if __name__ == "__main__":
    main()
