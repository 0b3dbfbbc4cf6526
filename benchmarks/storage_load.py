"""The driver and the SQLite study under load: W concurrent Ray workers, a dummy objective.

Each trial sleeps a little and reports `--steps` values (no Keras); the driver (the only writer)
records every report, asks the pruner and tells the outcome, while another process reads the
study in a loop as optuna-dashboard or `agesearch report` would. Counts errors and lost trials.

    python benchmarks/storage_load.py                   # 16 workers, 400 trials, 5 steps
    python benchmarks/storage_load.py --workers 8 --n-trials 200

Appends its numbers, with the command and the machine, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_parallel import append_results  # noqa: E402

READER = """
import sys, time, pathlib, optuna
from agesearch.search.store.study import open_storage
s = optuna.load_study(study_name="load", storage=open_storage(sys.argv[1], heartbeat=False))
reads = errors = 0
while not pathlib.Path(sys.argv[2]).exists():
    try:
        s.get_trials(deepcopy=False); reads += 1
    except Exception as e:
        errors += 1; print(repr(e), file=sys.stderr)
    time.sleep(0.05)
print(reads, errors)
"""


def sleep_work(payload: dict, data, reporter):
    """The dummy trial: `steps` reports of a made-up value, a short sleep before each.

    Defined in this script (run as __main__), so Ray sends it to the workers by value.
    """
    from optuna.trial import TrialState

    from agesearch.search.loop.trial import TrialOutcome

    value = 0.0
    for step in range(payload["steps"]):
        time.sleep(payload["seconds"])
        value = (payload["x"] - 0.3) ** 2 + 1.0 / (step + 1)
        if reporter is not None and reporter(step, value):
            return TrialOutcome(TrialState.PRUNED, None, {"pruned_at_epoch": step})
    return TrialOutcome(TrialState.COMPLETE, [value], {"objective": value})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--step-seconds", type=float, default=0.01)
    args = p.parse_args()

    import optuna
    import ray
    from optuna.trial import TrialState

    from agesearch.search.loop.ray_executor import drive
    from agesearch.search.store.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        url = f"sqlite:///{tmp}/load.db"
        study = optuna.create_study(study_name="load", storage=open_storage(url, heartbeat=False), pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        stop = Path(tmp) / "stop"
        reader = subprocess.Popen([sys.executable, "-c", READER, url, str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        start = time.perf_counter()
        try:
            stats = drive(
                study,
                sample=lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": args.steps, "seconds": args.step_seconds},
                work=sleep_work,
                data=None,
                n_trials=args.n_trials,
                workers=args.workers,
                cpus_per_trial=2 / args.workers,
                fresh_process=False,
                progress=lambda line: None,
            )
        finally:
            stop.touch()
            out, err = reader.communicate(timeout=60)
            ray.shutdown()
        seconds = time.perf_counter() - start
        reads, read_errors = map(int, out.split())
        trials = study.get_trials()
        lost = args.n_trials - sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        bad = sum(t.state not in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    append_results(
        "Storage under load: driver as the one SQLite writer",
        [
            f"{args.workers} concurrent Ray workers (reused processes), {args.n_trials} trials of {args.steps} reports each ({args.step_seconds}s per step), MedianPruner, SQLite WAL",
            f"{stats.complete} complete, {stats.pruned} pruned, {stats.failed} failed; {stats.reports} reports; {len(trials)} trials in the study, {lost} lost, {bad} not finished",
            f"throughput: {args.n_trials / seconds:.1f} trials/s, {stats.reports / seconds:.0f} reports/s ({seconds:.1f}s in all, incl. worker start-up)",
            f"reader process: {reads} full reads of the study during the run, {read_errors} errors",
        ],
    )


if __name__ == "__main__":
    main()
