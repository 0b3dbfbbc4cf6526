"""The terminal summary of a study: trials by state, the best trial, the top-10 table."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from agesearch.search.study import META_KEY

METRIC_COLUMNS = ["val_age_mae", "val_gender_accuracy", "epochs_run", "seconds", "params"]


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value(s), params, and the scalar metrics."""
    value_attr = "value" if len(study.directions) == 1 else "values"
    df = study.trials_dataframe(attrs=("number", "state", value_attr, "params", "user_attrs", "duration"), multi_index=False)
    keep = ["number", "state"] + [c for c in df.columns if c == "value" or c.startswith("values_")]
    keep += [c for c in df.columns if c.startswith("params_")]
    keep += [f"user_attrs_{m}" for m in METRIC_COLUMNS if f"user_attrs_{m}" in df.columns]
    if "user_attrs_fail_reason" in df.columns:
        keep.append("user_attrs_fail_reason")
    df = df[keep].rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    return df


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    if len(study.directions) == 1:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [study.best_trial] if done else []
    return study.best_trials


def summarize(study: optuna.Study) -> str:
    """Plain text: counts by state, data, best trial(s), top 10."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    meta = study.user_attrs.get(META_KEY, {})
    lines = [f"study {study.study_name}: {len(trials)} trials (" + ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c) + ")"]
    if meta:
        lines.append(
            f"data: {meta.get('data')} ({meta.get('images')} images, {meta.get('image_size')} px, "
            f"split {meta.get('split')} seed {meta.get('seed')}), space {meta.get('space')}, objective {meta.get('objective')}"
        )
    best = best_trials(study)
    if not best:
        lines.append("no completed trial yet")
        return "\n".join(lines)
    multi = len(study.directions) > 1
    lines.append("Pareto front (val age MAE down, val gender accuracy up):" if multi else "best trial:")
    for t in best[:10]:
        value = ", ".join(f"{v:.4f}" for v in t.values)
        ua = t.user_attrs
        lines.append(
            f"  #{t.number} value {value}  val age MAE {ua.get('val_age_mae', float('nan')):.2f} y, "
            f"val gender acc {ua.get('val_gender_accuracy', float('nan')):.3f}, epochs {ua.get('epochs_run')}, "
            f"{ua.get('seconds', 0):.1f}s, {ua.get('params')} params"
        )
        lines.append("    params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()))
    df = trials_table(study)
    done = df[df["state"] == "COMPLETE"]
    sort_col = "value" if "value" in done.columns else "values_0"
    top = done.sort_values(sort_col, ascending=study.directions[0] == optuna.study.StudyDirection.MINIMIZE).head(10)
    cols = [c for c in ["number", sort_col, *METRIC_COLUMNS] if c in top.columns]
    lines.append("top 10:")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        lines.append(top[cols].to_string(index=False))
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
