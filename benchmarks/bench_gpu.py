"""Packing trials on one GPU: N `agesearch run` processes on one study, for N = 1, 2, 4, 8.

For each image size and N, the script starts one `agesearch run` (it creates the study and
warms the data cache), waits for its first trial, then starts the other N-1 on the same SQLite
study. The measuring window opens once N trials run at once and lasts --seconds; then every
process is stopped (SIGTERM, then SIGKILL). Every 0.5 s a monitor thread samples the GPU (NVML,
else nvidia-smi; "n/a" without a GPU) and counts, read-only from the study's SQLite file, the
epochs reported (Optuna intermediate values) and the trials finished. From these:

  trials/h (finished)    trials finished inside the window, per hour
  trials/h (epoch-eq.)   epochs reported inside the window / --epochs, per hour: counts the work
                         of trials still running when the window closes, so short windows and
                         long packed trials are still compared fairly
  speed-up               epoch-equivalent trials/h against N = 1 at the same size
  img/s per trial        train images x epochs_run / the trial's `seconds` (finished trials)
  img/s all              train images x epochs in the window / window seconds
  GPU busy               mean NVML utilisation in the window, and the share of samples above 0
  peak mem               most GPU memory used during the run, less what was used before it

The processes run the same command (`--space arch --sampler random --pruner none`, small
--epochs), each with XLA_PYTHON_CLIENT_PREALLOCATE=false and the given KERAS_BACKEND.

    # here, on CPU, tiny
    python benchmarks/bench_gpu.py --packing 1 2 --seconds 20 --image-size 16 --data synthetic --synthetic-count 200
    # on one GPU
    python benchmarks/bench_gpu.py --packing 1 2 4 8 --image-size 64 128 --seconds 45 --data DIR

Appends a section with the table to benchmarks/RESULTS.md, or to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402

CLI = [sys.executable, "-m", "agesearch.search.cli"]
STUDY = "bench"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class Stopped(Exception):
    """SIGTERM arrived (a `timeout` around the script): stop the processes and record what was measured."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must not be cut short again
    raise Stopped()


class GpuProbe:
    """GPU 0's utilisation (%) and memory used (MiB): NVML, else nvidia-smi, else None."""

    def __init__(self) -> None:
        self.kind, self._h = "none", None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._h, self.kind = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0), "NVML"
            return
        except Exception:  # no module, no driver, no GPU
            pass
        if self._smi() is not None:
            self.kind = "nvidia-smi"

    @staticmethod
    def _smi() -> tuple[float, float] | None:
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
            util, mem = q.stdout.strip().splitlines()[0].split(",")
            return float(util), float(mem)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def sample(self) -> tuple[float, float] | None:
        if self.kind == "NVML":
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu
                return float(util), self._nvml.nvmlDeviceGetMemoryInfo(self._h).used / 2**20
            except Exception:
                return None
        return self._smi() if self.kind == "nvidia-smi" else None


def study_counts(db: Path) -> tuple[int, int, int, int] | None:
    """(epochs reported, trials finished, running, failed) in the study file, read-only; None if not readable yet."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            epochs = con.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0]
            states = dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:  # tables not made yet, or a writer holds the lock for a moment
        return None
    return epochs, sum(states.get(s, 0) for s in FINISHED), states.get("RUNNING", 0), states.get("FAIL", 0)


@dataclass
class Sample:
    t: float  # perf_counter seconds
    gpu: tuple[float, float] | None  # (util %, memory used MiB)
    study: tuple[int, int, int, int] | None  # (epochs, finished, running, failed)


@dataclass
class Monitor:
    """Samples the GPU and the study every `interval` seconds in a thread until stopped."""

    probe: GpuProbe
    db: Path
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            self.samples.append(Sample(t, self.probe.sample(), study_counts(self.db)))
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t)))

    def start(self) -> "Monitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


def run_command(args, size: int, db: Path, run_flags: str) -> list[str]:
    cmd = CLI + [
        "run", "--space", args.space, "--study", STUDY, "--storage", f"sqlite:///{db}", "--data", args.data,
        "--image-size", str(size), "--epochs", str(args.epochs), "--n-trials", str(args.n_trials or 100000),
        "--sampler", args.sampler, "--pruner", args.pruner, "--synthetic-count", str(args.synthetic_count),
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if "--no-baselines" in run_flags:  # the presets are the same work in every N; leave them out
        cmd += ["--no-baselines"]
    return cmd


def wait_for(monitor: Monitor, procs: list[subprocess.Popen], test, limit: float) -> float | None:
    """perf_counter time at which test(study counts) first held; None on timeout or a process dying."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        s = monitor.latest()
        if s is not None and s.study is not None and test(s.study):
            return s.t
        if any(p.poll() is not None for p in procs):
            return None
        time.sleep(0.1)
    return None


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after 3 s: the window is closed and the study is thrown away, so
    nothing needs a clean exit, and the next N should not wait for one."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.perf_counter() + 3
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_packed(args, size: int, n: int, run_flags: str, probe: GpuProbe, cache: Path) -> dict:
    """One size and N: start, measure the window, stop, then read the study."""
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{size}px-n{n}-") as tmp:
        db = Path(tmp) / "study.db"
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", KERAS_BACKEND=args.backend, AGESEARCH_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
        base = probe.sample()
        monitor = Monitor(probe, db, args.interval).start()
        cmd = run_command(args, size, db, run_flags)
        logs = [open(Path(tmp) / f"p{i}.log", "w") for i in range(n)]
        procs = [subprocess.Popen(cmd, cwd=tmp, env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
        try:
            first = wait_for(monitor, procs, lambda c: c[1] + c[2] > 0, args.startup_timeout)
            if first is not None:
                procs += [subprocess.Popen(cmd, cwd=tmp, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(1, n)]
                # The window opens when all N processes run a trial at once (or the start-up time is up).
                opened = wait_for(monitor, procs, lambda c: c[2] >= n, args.startup_timeout) or time.perf_counter()
                while time.perf_counter() < opened + args.seconds and all(p.poll() is None for p in procs):
                    time.sleep(0.1)
                closed = time.perf_counter()
            early = [i for i, q in enumerate(procs) if q.poll() is not None and q.returncode != 0]
        finally:
            stop_all(procs)
            monitor.stop()
            for f in logs:
                f.close()
        tails = {i: (Path(tmp) / f"p{i}.log").read_text()[-1500:] for i in range(n)}
        if first is None:
            raise RuntimeError(f"{size} px, N={n}: the first process started no trial within {args.startup_timeout:.0f} s:\n{tails[0]}")
        for i in early:  # died before the window closed: out of memory, a crash, a usage error
            print(f"warning: {size} px N={n}: process {i} exited early with {procs[i].returncode}:\n{tails[i]}", file=sys.stderr)
        return summarise(args, n, db, monitor.samples, opened, closed, base, len(early))


def window_delta(samples: list[Sample], opened: float, closed: float) -> tuple[int, int, float, int]:
    """(epochs, finished trials, seconds) between the study readings at the window's ends,
    and the trials failed by then (out of memory, ...; those our SIGTERM stops come later)."""
    read = [s for s in samples if s.study is not None]
    if not read:  # the study file was never readable: nothing to count
        return 0, 0, 1e-9, 0
    a = min(read, key=lambda s: abs(s.t - opened))
    # The last reading before the close: those after it may already see the processes being stopped.
    b = max((s for s in read if s.t <= closed), key=lambda s: s.t, default=read[-1])
    return b.study[0] - a.study[0], b.study[1] - a.study[1], max(b.t - a.t, 1e-9), b.study[3]


def per_trial_speed(db: Path) -> tuple[float, int, float, list[str]]:
    """(mean train img/s per finished trial, train images, mean params, fail reasons) from the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    meta = study.user_attrs.get("agesearch", {})
    n_train = (meta.get("split_sizes") or [0])[0]
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("seconds") and t.user_attrs.get("epochs_run")]
    speeds = [n_train * t.user_attrs["epochs_run"] / t.user_attrs["seconds"] for t in done]
    params = [t.user_attrs["params"] for t in done if "params" in t.user_attrs]
    reasons = sorted({str(t.user_attrs["fail_reason"])[:200] for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL" and "fail_reason" in t.user_attrs})
    return (statistics.mean(speeds) if speeds else math.nan), n_train, (statistics.mean(params) if params else math.nan), reasons


def summarise(args, n: int, db: Path, samples: list[Sample], opened: float, closed: float, base, died: int) -> dict:
    epochs, finished, secs, fails = window_delta(samples, opened, closed)
    img_trial, n_train, params, reasons = per_trial_speed(db)
    gpu = [s.gpu for s in samples if s.gpu is not None and opened <= s.t <= closed]
    mem = [s.gpu[1] for s in samples if s.gpu is not None]
    return {
        "n": n, "window": secs, "finished": finished, "epochs": epochs,
        "per_hour": 3600 * finished / secs, "per_hour_eq": 3600 * epochs / args.epochs / secs,
        "img_trial": img_trial, "img_all": n_train * epochs / secs, "params": params,
        "busy": statistics.mean(g[0] for g in gpu) if gpu else None,
        "busy_share": 100 * sum(g[0] > 0 for g in gpu) / len(gpu) if gpu else None,
        "peak_mem": (max(mem) - (base[1] if base else 0)) if mem else None,
        "fails": fails + died, "reasons": reasons,
    }


def fmt(x, spec: str = ".0f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows: list[dict]) -> list[str]:
    out = [
        "| px | N | window s | finished | trials/h (finished) | trials/h (epoch-eq.) | speed-up | img/s per trial | img/s all | GPU busy % | samples > 0 % | peak mem MiB | mean params | failed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['px']} | {r['n']} | {r['window']:.0f} | {r['finished']} | {fmt(r['per_hour'])} | {fmt(r['per_hour_eq'])} | "
            f"{fmt(r.get('speedup'), '.2f')}{'x' if r.get('speedup') else ''} | {fmt(r['img_trial'])} | {fmt(r['img_all'])} | {fmt(r['busy'])} | {fmt(r['busy_share'])} | "
            f"{fmt(r['peak_mem'])} | {fmt(r['params'], ',.0f')} | {r['fails']} |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packing", type=int, nargs="+", default=[1, 2, 4, 8], help="processes on the one GPU")
    p.add_argument("--image-size", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seconds", type=float, default=45, help="measuring window per N, once all N run")
    p.add_argument("--n-trials", type=int, default=None, help="passed to each `agesearch run` (default: unbounded; the window ends it)")
    p.add_argument("--epochs", type=int, default=5)
    add_data_argument(p)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--synthetic-count", type=int, default=1200)
    p.add_argument("--space", default="arch")
    p.add_argument("--sampler", default="random", help="random keeps the configs the same from N to N (same seed)")
    p.add_argument("--pruner", default="none")
    p.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"), help="KERAS_BACKEND of the processes")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    p.add_argument("--startup-timeout", type=float, default=120, help="most seconds to wait for a process's first trial")
    p.add_argument("--out", default=None, help="markdown file to append to instead of benchmarks/RESULTS.md")
    args = p.parse_args()
    if args.data != "synthetic":  # the `agesearch run` processes start in temporary folders
        args.data = str(Path(args.data).expanduser().resolve())

    signal.signal(signal.SIGTERM, on_sigterm)
    help_text = subprocess.run(CLI + ["run", "--help"], capture_output=True, text=True).stdout
    probe = GpuProbe()
    cache = Path(os.environ.get("AGESEARCH_CACHE_DIR") or tempfile.mkdtemp(prefix="bench-gpu-cache-"))
    rows: list[dict] = []
    notes: list[str] = []
    try:
        for size in args.image_size:
            for n in args.packing:
                t = time.perf_counter()
                try:
                    r = run_packed(args, size, n, help_text, probe, cache) | {"px": size}
                except RuntimeError as e:  # one N failing must not lose the others
                    notes.append(f"{size} px N={n} not measured: {str(e).splitlines()[0]}")
                    print(e, file=sys.stderr, flush=True)
                    continue
                one = next((x for x in rows if x["px"] == size and x["n"] == 1), None)
                r["speedup"] = r["per_hour_eq"] / one["per_hour_eq"] if one and one["per_hour_eq"] else None
                rows.append(r)
                print(f"{size} px N={n}: {r['finished']} finished, {r['epochs']} epochs in {r['window']:.0f} s, GPU busy {fmt(r['busy'])} %, took {time.perf_counter() - t:.0f} s", flush=True)
                print(table([r])[-1], flush=True)
                if r["fails"]:
                    notes.append(f"{size} px N={n}: {r['fails']} failed; reasons: {'; '.join(r['reasons'][:3]) or 'none recorded'}")
                    print(notes[-1], flush=True)
    except Stopped:
        notes.append("stopped by SIGTERM (time limit) before every size and N was measured")
    lines = [
        f"data: {args.data}, limit {args.limit}; `agesearch run --space {args.space} --sampler {args.sampler} --pruner {args.pruner} --epochs {args.epochs}`"
        f"{' --no-baselines' if '--no-baselines' in help_text else ' (no --no-baselines flag yet)'}, {args.seconds:.0f} s window per N, KERAS_BACKEND={args.backend}, XLA_PYTHON_CLIENT_PREALLOCATE=false",
        f"GPU sampled with {probe.kind} every {args.interval} s" + ("" if probe.kind != "none" else ": no GPU, GPU columns n/a"),
        "targets (GPU issue): GPU >= 85 % busy packed; packing >= 3x the trials/h of N = 1",
        *notes,
    ]
    record(f"Packing N trials on one GPU ({', '.join(f'{s} px' for s in args.image_size)})", lines, out=args.out, table=table(rows))


if __name__ == "__main__":
    main()
