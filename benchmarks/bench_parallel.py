"""Trials per hour of `agesearch run` with --workers 1 (in-process) and --workers N (Ray), tiny config.

Each run is a fresh study in a temporary folder, with the same seeded random sampler, so both
runs train the same configs. Search throughput is measured over the trials themselves (first
start to last finish, from the study), so data loading and Ray's start-up are shown apart.

    python benchmarks/bench_parallel.py --data synthetic                # --workers 1 and 2, 8 trials each
    python benchmarks/bench_parallel.py --data synthetic --workers 1 2 4 --n-trials 12
    # on a GPU machine: 1, 2, 4, 8 trials packed on one GPU, 128 px, the 5,000 images
    python benchmarks/bench_parallel.py --workers 1 2 4 8 --gpus-per-trial-packed --image-size 128 \
        --data DIR --limit 5000 --epochs 5 --n-trials 16

Appends its numbers, with the command and the machine, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record as append_results  # noqa: E402


def gpu_utilisation_while(proc: subprocess.Popen) -> float | None:
    """Mean GPU utilisation (%, nvidia-smi, every second) while `proc` runs; None without a GPU."""
    samples: list[float] = []
    while proc.poll() is None:
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=10)
            samples.append(float(q.stdout.strip().splitlines()[0]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
        time.sleep(1.0)
    return sum(samples) / len(samples) if samples else None


def run_once(workers: int, args) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-par-") as tmp:
        cmd = [
            sys.executable, "-m", "agesearch.search.cli", "run", "--space", "arch", "--sampler", "random",
            "--n-trials", str(args.n_trials), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
            "--limit", str(args.limit), "--synthetic-count", str(args.limit), "--workers", str(workers),
            "--data", args.data,
        ]
        if args.gpus_per_trial_packed and workers > 1:
            cmd += ["--gpus-per-trial", f"{1 / workers:g}"]  # all N trials share one GPU
        env = dict(os.environ, AGESEARCH_CACHE_DIR=str(Path(tmp) / "cache"))
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        util = gpu_utilisation_while(proc)
        out, err = proc.communicate()
        done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"workers {workers} failed:\n{done.stderr[-2000:]}")
        study = optuna.load_study(study_name="arch", storage=f"sqlite:///{tmp}/studies/arch.db")
        trials = [t for t in study.get_trials() if t.datetime_complete is not None]
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        mean = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials) / len(trials)
        return {"util": util, "workers": workers, "trials": len(trials), "span": span, "wall": wall, "mean": mean, "per_hour": 3600 * len(trials) / span}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=400)
    add_data_argument(p)
    p.add_argument("--gpus-per-trial-packed", action="store_true", help="--workers N trials share one GPU (--gpus-per-trial 1/N)")
    args = p.parse_args()
    rows = [run_once(w, args) for w in args.workers]
    base = rows[0]["per_hour"]
    lines = [f"config: space arch, random sampler seed 0, {args.n_trials} trials, {args.epochs} epochs, {args.image_size} px, {args.limit} images from {args.data}"]
    lines += [
        f"--workers {r['workers']}: {r['per_hour']:.0f} trials/h ({r['per_hour'] / base:.2f}x), {r['trials']} trials in {r['span']:.1f}s "
        f"(mean {r['mean']:.1f}s per trial incl. worker start-up), command wall {r['wall']:.1f}s"
        + (f", GPU utilisation {r['util']:.0f}%" if r["util"] is not None else "")
        for r in rows
    ]
    lines.append("--workers 1 runs in-process (no Ray); --workers > 1 starts a local Ray runtime, one fresh worker process per trial")
    append_results("Parallel trials, CPU, tiny config", lines)


if __name__ == "__main__":
    main()
