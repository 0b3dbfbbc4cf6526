"""Does the search beat its own starting points? The best preset against the search, in units of the preset's time.

One `agesearch run --space cnn` study (baselines on: every preset that is a point of the space at
this image size runs first, as trials carrying the user attr `preset`), driven through the CLI in
a fresh temporary folder (`--storage sqlite:///TMP/<study>.db`), `--backbone-weights none`:

  1. Phase 1 runs the presets alone: `--n-trials <number of presets>` (read from
     `agesearch presets --image-size PX`, or from `--baselines` among the passed-through flags;
     checked against the study afterwards and run again if a preset was left waiting).
  2. U = the wall time of the best preset's own trial (best: lowest val objective among the
     COMPLETE preset trials). U is the trial's wall time, datetime_start..datetime_complete in
     the study (sampling, training, model upload, tell); its `seconds` user attr (the fit alone)
     is recorded next to it.
  3. Phase 2 resumes the same study with the same command, `--n-trials 100000` and
     `--timeout` = BUDGET x U minus the time spent since the first trial started (BUDGET = 10 by
     default, baselines included).

The clock: t = 0 is the first trial's datetime_start, so the data load of phase 1 is outside the
budget, as it is outside `--timeout` (agesearch starts the timeout clock after loading the data).
How `--timeout` behaves (search/loop/run.py `_next_slot`): no trial STARTS after it, a running
trial finishes. So the last trial ends after the budget; and phase 2's own start (a new process:
imports, data reload from the cache) between the phases is counted inside the budget (against the
search; recorded as `gap`). What is counted: only trials that COMPLETED (or were pruned / failed)
at t <= BUDGET x U; trials finished later are listed in the timeline with `counted: false` and
counted in the record as "after the budget", and the actual total wall time is recorded too.

Recorded (printed and appended to benchmarks/RESULTS.md, under --label so A/B runs of different
defaults sit side by side):
  - U, the budget, the actual wall time, the gap between the phases;
  - the best preset and the best searched (non-preset) trial inside the budget: val objective,
    val age MAE, val gender accuracy, parameters;
  - when (seconds after t = 0 and in U) a searched trial first had a lower val objective than the
    best preset; how many searched trials completed / were pruned / failed inside the budget;
  - with export on (default): `agesearch export --trial N --refit-on-train-val` of the best preset
    and of the best searched trial; their test age MAE and gender accuracy (from the model cards);
  - the verdict for the target: the best searched trial is >= 5 % lower than the best preset on
    the val objective within BUDGET x U.
The per-trial timeline (number, preset or not, state, value, start and end seconds, counted,
params) and the best-so-far curve go to a JSON file (--timeline; default
benchmarks/timelines/search_vs_presets-<label>-<time>.json), which
`benchmarks/kerastuner_hyperband.py --compare` reads.

Flags after `--` go to both `agesearch run` phases unchanged (e.g. `-- --sampler random --pruner
hyperband`, `--limit 1000`, `--cache-dir DIR`, new flags the CLI gains). The flags this script
manages (--space, --data, --study, --storage, --n-trials, --timeout, --epochs, --image-size,
--backbone-weights) and --no-baselines are refused there.

Usage (the full-size run; takes about 10 U + the presets' exports):
  python benchmarks/search_vs_presets.py --label default
  python benchmarks/search_vs_presets.py --label random-sampler -- --sampler random
Smoke (seconds on a CPU): python benchmarks/search_vs_presets.py --data synthetic --epochs 2 \
  --budget-units 3 --label smoke --out /tmp/smoke.md -- --synthetic-count 300
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
from _record import RESULTS, add_data_argument, neutral_paths, record, split_run_flags  # noqa: E402

MANAGED = ("--space", "--data", "--study", "--storage", "--n-trials", "--timeout", "--epochs", "--image-size", "--backbone-weights", "--no-baselines")
TARGET = 0.05  # the best searched trial's val objective at least this fraction under the best preset's
TEST_TARGET_YEARS = 0.3  # issue 22: the searched config's refit beats the preset's by this much test age MAE (mean of the seeds)


def agesearch_exe() -> list[str]:
    """The venv's `agesearch` console script next to this Python, else `python -m` of the CLI module."""
    script = Path(sys.executable).with_name("agesearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agesearch.search.cli"]


def option_value(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a flag list (the last one wins, as in argparse)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def count_presets(exe: list[str], space: str, image_size: int, extra: list[str]) -> int:
    """How many presets the run enqueues: those of --baselines, else those `agesearch presets` puts in the space."""
    names = option_value(extra, "--baselines")
    if names:
        return len([n for n in names.split(",") if n.strip()])
    out = subprocess.run([*exe, "presets", "--image-size", str(image_size)], capture_output=True, text=True, check=True).stdout
    holders = re.findall(r"in spaces: (.*)", out)
    return sum(space in [s.strip() for s in line.split(",")] for line in holders)


def run_phase(cmd: list[str], work: Path, log_name: str) -> float:
    """Run one `agesearch run`, output to a log in the work folder; its wall seconds."""
    start = time.perf_counter()
    with open(work / log_name, "w") as log:
        code = subprocess.run(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        print((work / log_name).read_text()[-3000:])
        raise SystemExit(f"agesearch run exited with {code} ({log_name}); command: {shlex.join(cmd)}")
    return time.perf_counter() - start


def load_study(name: str, url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


def seconds_since(t0: datetime, t: datetime | None) -> float | None:
    return None if t is None else (t - t0).total_seconds()


def timeline(study, t0: datetime, budget_s: float) -> list[dict]:
    """One row per trial: what the JSON timeline holds, ordered by trial number."""
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number):
        u = t.user_attrs
        end = seconds_since(t0, t.datetime_complete)
        rows.append({
            "number": t.number,
            "preset": u.get("preset"),
            "state": t.state.name,
            "value": t.value if t.state.name == "COMPLETE" else None,
            "start_s": seconds_since(t0, t.datetime_start),
            "end_s": end,
            "wall_s": None if end is None or t.datetime_start is None else (t.datetime_complete - t.datetime_start).total_seconds(),
            "counted": end is not None and end <= budget_s,
            "params": u.get("params"),
            "val_age_mae": u.get("val_age_mae"),
            "val_gender_accuracy": u.get("val_gender_accuracy"),
            "epochs_run": u.get("epochs_run"),
            "best_epoch": u.get("best_epoch"),
            "pruned_at_epoch": u.get("pruned_at_epoch"),
            "best_reported": min(u["history"]["val_objective"]) if u.get("history", {}).get("val_objective") else None,
            "fit_seconds": u.get("seconds"),
            "fail_reason": u.get("fail_reason"),
        })
    return rows


def best_so_far(rows: list[dict]) -> list[dict]:
    """(time, value, trial) each time the lowest objective so far went down, by completion time."""
    curve, best = [], None
    for r in sorted((r for r in rows if r["value"] is not None and r["end_s"] is not None), key=lambda r: r["end_s"]):
        if best is None or r["value"] < best:
            best = r["value"]
            curve.append({"t_s": r["end_s"], "value": best, "trial": r["number"], "preset": r["preset"]})
    return curve


def export(exe: list[str], work: Path, study_name: str, url: str, number: int, extra: list[str], seed: int | None = None,
           flags: tuple[str, ...] = ()) -> dict:
    """`agesearch export --trial N --refit-on-train-val [--seed S] FLAGS`; the model card's test metrics and timing."""
    name = f"trial-{number}" + ("" if seed is None else f"-seed{seed}")
    out = work / "exports" / f"{name}.keras"
    out.parent.mkdir(exist_ok=True)
    cmd = [*exe, "export", "--study", study_name, "--storage", url, "--trial", str(number), "--refit-on-train-val", "--out", str(out), *flags]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    cache = option_value(extra, "--cache-dir")
    if cache:
        cmd += ["--cache-dir", cache]
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / f"export-{name}.log").write_text(p.stdout + p.stderr)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1], "seconds": seconds}
    card = json.loads(out.with_suffix(".json").read_text())
    return {"test": card["test_metrics"], "epochs": card["training"]["epochs_run"], "seconds": seconds, "seed": card["training"].get("seed")}


def over_seeds(runs: list[dict]) -> dict | None:
    """Mean and sd over the seeds of the test age MAE and gender accuracy (None when a run failed)."""
    import statistics

    if not runs or any("test" not in r for r in runs):
        return None
    mae = [r["test"]["age_mae"] for r in runs]
    acc = [r["test"]["gender_accuracy"] for r in runs]
    sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    return {"age_mae": mae, "gender_accuracy": acc, "age_mae_mean": statistics.mean(mae), "age_mae_sd": sd(mae),
            "gender_accuracy_mean": statistics.mean(acc), "gender_accuracy_sd": sd(acc)}


def describe(r: dict) -> str:
    params = f", {r['params']:,} params" if r.get("params") else ""
    return (f"#{r['number']}: objective {r['value']:.4f}, val age MAE {r['val_age_mae']:.2f} y, val gender accuracy "
            f"{r['val_gender_accuracy']:.3f}, {r['epochs_run']} epochs{params}, trial {r['wall_s']:.0f} s, done at {r['end_s']:.0f} s")


def main() -> None:
    from agesearch.search.store.study import best_trial  # the one rule for the best trial

    argv, extra = split_run_flags(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("--space", default="cnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--budget-units", type=float, default=10.0, help="the search's wall budget in U (the best preset's trial time), presets included")
    p.add_argument("--label", default="default", help="names this run in RESULTS.md and the timeline (A/B runs of different defaults)")
    p.add_argument("--no-export", action="store_true", help="skip the two refits on train+val and their test metrics")
    p.add_argument("--seeds", type=int, default=3, help="refit the best preset and the best searched trial with seeds 0..N-1, paired by seed (default 3)")
    p.add_argument("--workdir", help="keep the study, logs and exports here (default: a new temporary folder)")
    p.add_argument("--timeline", help="JSON timeline to write (default: benchmarks/timelines/search_vs_presets-<label>-<time>.json, next to the record)")
    p.add_argument("--out", help="markdown file to append to (default: benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    bad = [a for a in extra if a.split("=", 1)[0] in MANAGED]
    if bad:
        p.error(f"flags after -- may not set {', '.join(bad)}: this script manages them")
    if args.data != "synthetic":
        args.data = str(Path(args.data).resolve())  # the runs work in their own folder
        if not Path(args.data).is_dir():
            p.error(f"--data: no such folder {args.data}")

    exe = agesearch_exe()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agesearch-vs-presets-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    study_name = f"vs-presets-{args.space}-{args.image_size}px"
    url = f"sqlite:///{work / (study_name + '.db')}"
    if (work / (study_name + ".db")).exists():
        p.error(f"{work / (study_name + '.db')} exists: the run needs a fresh study (another --workdir)")
    base = [*exe, "run", "--space", args.space, "--data", args.data, "--study", study_name, "--storage", url,
            "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--backbone-weights", "none", *extra]
    print(f"work folder: {work}", flush=True)

    # Phase 1: the presets alone.
    n_presets = count_presets(exe, args.space, args.image_size, extra)
    if n_presets == 0:
        raise SystemExit(f"no preset is a point of space {args.space!r} at {args.image_size} px: no U to measure")
    phase1_cmd = [*base, "--n-trials", str(n_presets)]
    phase1_s = run_phase(phase1_cmd, work, "phase1.log")
    study = load_study(study_name, url)
    waiting = [t for t in study.trials if t.state.name == "WAITING" and "preset" in t.user_attrs]
    if waiting:  # the count from `agesearch presets` was short: run the rest of the presets
        phase1_cmd = [*base, "--n-trials", str(n_presets + len(waiting))]
        phase1_s += run_phase(phase1_cmd, work, "phase1b.log")
        study = load_study(study_name, url)
    presets = [t for t in study.trials if "preset" in t.user_attrs]
    done = [t for t in presets if t.state.name == "COMPLETE"]
    if not done:
        raise SystemExit(f"no preset trial completed ({[(t.number, t.state.name, t.user_attrs.get('fail_reason')) for t in presets]}); see {work / 'phase1.log'}")
    best_preset = best_trial(study, done)
    u_s = (best_preset.datetime_complete - best_preset.datetime_start).total_seconds()
    t0 = min(t.datetime_start for t in study.trials if t.datetime_start is not None)
    budget_s = args.budget_units * u_s
    presets_end_s = max(seconds_since(t0, t.datetime_complete) for t in presets if t.datetime_complete is not None)

    # Phase 2: the search, for what is left of the budget.
    launched_s = (datetime.now() - t0).total_seconds()
    left = budget_s - launched_s
    phase2_cmd, phase2_s = None, 0.0
    if left > 1:
        phase2_cmd = [*base, "--n-trials", "100000", "--timeout", f"{left:.1f}"]
        phase2_s = run_phase(phase2_cmd, work, "phase2.log")
    study = load_study(study_name, url)
    rows = timeline(study, t0, budget_s)
    later = [r for r in rows if r["number"] > max(t.number for t in presets) and r["start_s"] is not None]
    gap_s = (min(r["start_s"] for r in later) - presets_end_s) if later else None
    end_s = max((r["end_s"] for r in rows if r["end_s"] is not None), default=0.0)

    counted = [r for r in rows if r["counted"]]
    searched = [r for r in counted if r["preset"] is None]
    states = {s: sum(r["state"] == s for r in searched) for s in ("COMPLETE", "PRUNED", "FAIL")}
    bp = next(r for r in rows if r["number"] == best_preset.number)
    complete_searched = [r for r in searched if r["value"] is not None]
    bs = min(complete_searched, key=lambda r: r["value"]) if complete_searched else None
    beaten = [r["end_s"] for r in complete_searched if r["value"] < bp["value"]]
    first_beat_s = min(beaten) if beaten else None
    after = [r for r in rows if r["end_s"] is not None and not r["counted"]]
    met = bs is not None and bs["value"] <= (1 - TARGET) * bp["value"]
    gain = None if bs is None else (bp["value"] - bs["value"]) / bp["value"]

    exports: dict[str, list[dict]] = {}
    if not args.no_export:
        for role, r in (("best preset", bp), ("best searched", bs)):
            if r is not None:
                for seed in range(args.seeds):
                    print(f"export: {role} trial {r['number']} (refit on train+val, seed {seed}) ...", flush=True)
                    exports.setdefault(role, []).append(export(exe, work, study_name, url, r["number"], extra, seed=seed))
    summary = {role: over_seeds(runs) for role, runs in exports.items()}

    meta = study.user_attrs.get("agesearch", {})
    b = meta.get("baselines", {})
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.out).resolve().parent if args.out else RESULTS.parent
    path = Path(args.timeline) if args.timeline else results_dir / "timelines" / f"search_vs_presets-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.label)}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "agesearch-search-vs-presets/1",
        "label": args.label,
        "created": datetime.now().isoformat(timespec="seconds"),
        "space": args.space, "image_size": args.image_size, "epochs": args.epochs, "data": meta.get("data", args.data),
        "limit": meta.get("limit"), "split_sizes": meta.get("split_sizes"), "fingerprint": meta.get("fingerprint"),
        "trivial": {"mae_trivial": b.get("mae_trivial"), "error_trivial": b.get("error_trivial")},
        "extra_run_flags": extra, "phase1_command": shlex.join(phase1_cmd), "phase2_command": phase2_cmd and shlex.join(phase2_cmd),
        "clock": "t = 0 at the first trial's datetime_start; a trial counts when it finished at t <= budget_s",
        "u_s": u_s, "u_source": "best preset trial's datetime_complete - datetime_start", "u_fit_seconds": best_preset.user_attrs.get("seconds"),
        "budget_units": args.budget_units, "budget_s": budget_s, "presets_end_s": presets_end_s, "gap_s": gap_s, "end_s": end_s,
        "phase1_process_s": phase1_s, "phase2_process_s": phase2_s, "timeout_s": left if phase2_cmd else None,
        "best_preset": bp, "best_searched": bs, "first_beat_s": first_beat_s, "target_met": met, "exports": exports, "test_over_seeds": summary,
        "trials": rows, "best_so_far": best_so_far(counted),
    }
    path.write_text(neutral_paths(json.dumps(doc, indent=1, default=str)))  # no machine paths in a tracked file

    U = lambda s: f"{s:.0f} s = {s / u_s:.2f} U"  # noqa: E731
    lines = [
        f"label **{args.label}**; data {Path(str(doc['data'])).name} (limit {doc['limit']}), split {doc['split_sizes']}, trivial val age MAE {b.get('mae_trivial', float('nan')):.2f} y, gender error {b.get('error_trivial', float('nan')):.3f}",
        f"runs: `agesearch {shlex.join(phase1_cmd[len(exe):])}`, then the same with "
        + (f"`--n-trials 100000 --timeout {left:.0f}`" if phase2_cmd else f"the search not run: the presets used the whole budget ({left:.0f} s left)"),
        f"U = {u_s:.1f} s (wall time of the best preset's trial #{bp['number']}, {bp['preset']}; its fit alone {best_preset.user_attrs.get('seconds', float('nan')):.1f} s); budget {args.budget_units:g} U = {budget_s:.0f} s from the first trial's start",
        f"time: presets done at {U(presets_end_s)}; gap between the phases (process start, data reload) {'n/a' if gap_s is None else f'{gap_s:.0f} s'}; last trial ended at {U(end_s)}; {len(after)} trial(s) ended after the budget and are not counted; processes {phase1_s:.0f} + {phase2_s:.0f} s",
        *[f"preset {r['preset']}: " + (describe(r) if r["value"] is not None else f"#{r['number']} {r['state']} {r.get('fail_reason') or ''}") for r in rows if r["preset"]],
        f"searched trials inside the budget: {states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed",
        f"best preset {bp['preset']} " + describe(bp),
        f"best searched trial {describe(bs)}; params {study.trials[bs['number']].params}" if bs else "best searched trial: none completed inside the budget",
        "first searched trial under the best preset's objective: " + (f"at {U(first_beat_s)}" if first_beat_s is not None else "never inside the budget"),
    ]
    for role, runs in exports.items():
        for e in runs:
            if "test" in e:
                lines.append(f"export {role}, seed {e['seed']} (refit on train+val, {e['epochs']} epochs, {e['seconds']:.0f} s): test age MAE {e['test']['age_mae']:.2f} y, test gender accuracy {e['test']['gender_accuracy']:.3f} (n={e['test']['n']})")
            else:
                lines.append(f"export {role}: failed: {e['error']}")
        if summary.get(role):
            m = summary[role]
            lines.append(f"**{role}, test over {len(runs)} seeds: age MAE {m['age_mae_mean']:.2f} ± {m['age_mae_sd']:.2f} y, gender accuracy {m['gender_accuracy_mean']:.3f} ± {m['gender_accuracy_sd']:.3f}**")
    lines.append(f"timeline: {path}")
    verdict = (f"target (best searched trial >= {TARGET:.0%} lower than the best preset on the val objective within {args.budget_units:g} U): "
               f"{'**met**' if met else '**NOT met**'} ({'no searched trial' if gain is None else f'{gain:+.1%}'})")
    lines.append(verdict)
    sp, ss = summary.get("best preset"), summary.get("best searched")
    if sp and ss:
        diffs = [a - b for a, b in zip(sp["age_mae"], ss["age_mae"])]
        test_met = sp["age_mae_mean"] - ss["age_mae_mean"] >= TEST_TARGET_YEARS and ss["gender_accuracy_mean"] >= sp["gender_accuracy_mean"]
        test_verdict = (f"target on test (best searched refit beats the best preset refit by >= {TEST_TARGET_YEARS} y age MAE, mean of {len(diffs)} seeds, "
                        f"gender accuracy not worse): {'**met**' if test_met else '**NOT met**'} (paired by seed, preset minus searched: "
                        f"{', '.join(f'{d:+.2f}' for d in diffs)} y; mean {sp['age_mae_mean'] - ss['age_mae_mean']:+.2f} y; gender "
                        f"{ss['gender_accuracy_mean'] - sp['gender_accuracy_mean']:+.3f})")
        lines.append(test_verdict)
        verdict += "\n" + test_verdict
    record(f"Search vs its presets [{args.label}]: {args.space} at {args.image_size} px, {args.epochs} epochs, {args.budget_units:g} U", lines, out=args.out)
    print(verdict)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    main()
