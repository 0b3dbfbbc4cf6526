"""The terminal summary of a study: trials by state, the best trial, presets vs the search,
the best model's val MAE per age decade, and the top-10 table (the report's one trial table)."""

from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.report.tables import comparison_lines, decade_line, preset_comparison, top_table
from agesearch.search.store.study import META_KEY, best_trial, best_trials

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def _head(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in COUNTED}
    lines = [f"study {study.study_name}: {len(trials)} trials (" + ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c) + ")"]
    meta = study.user_attrs.get(META_KEY, {})
    if meta:
        lines.append(
            f"data: {meta.get('data')} ({meta.get('images')} images, {meta.get('image_size')} px, "
            f"split {meta.get('split')} seed {meta.get('seed')}), space {meta.get('space')}, objective {meta.get('objective')}"
        )
    return lines


def _trial_lines(t: FrozenTrial) -> list[str]:
    ua = t.user_attrs
    value = ", ".join(f"{v:.4f}" for v in t.values)
    preset = f" (preset {ua['preset']})" if "preset" in ua else ""
    return [
        f"  #{t.number}{preset} value {value}  val age MAE {ua.get('val_age_mae', math.nan):.2f} y, "
        f"val gender acc {ua.get('val_gender_accuracy', math.nan):.3f}, epochs {ua.get('epochs_run')}, "
        f"{ua.get('seconds', 0):.1f}s, {ua.get('params')} params",
        "    params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
    ]


def summarize(study: optuna.Study) -> str:
    """Plain text: counts by state, data, best trial(s), presets vs search, per decade, top 10."""
    lines = _head(study)
    best = best_trials(study)
    if not best:
        lines.append("no completed trial yet")
        return "\n".join(lines)
    multi = len(study.directions) > 1
    lines.append("Pareto front (val age MAE down, val gender accuracy up):" if multi else "best trial:")
    for t in best[:10]:
        lines += _trial_lines(t)
    lines += comparison_lines(study, preset_comparison(study))
    top = best_trial(study)
    decades = decade_line(top) if top is not None else None
    if decades:
        lines.append(decades)
    lines.append("top 10:")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        lines.append(top_table(study).to_string(index=False))
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
