"""The study as tables: every trial (CSV, HTML and the terminal's top 10), ablations, the summary.

Everything is read back from the study (Optuna's storage, read-only) with pandas. The one trial
table (`trials_table`) feeds the CSV, the report's "All trials" section and the terminal
summary's top 10, so that the three always agree.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.store.study import META_KEY, best_trial, best_trials, is_multi, minimizes, objective_of, ranked, scalar

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Scalar user attrs worth a column in the CSV and the trials table (history and configs are not
# scalars; the configs get their own flattened columns).
METRIC_ATTRS = (
    "preset",
    "objective",
    "val_age_mae",
    "val_gender_accuracy",
    "best_epoch",
    "epochs_run",
    "seconds",
    "seconds_per_epoch",
    "params",
    "flops",
    "sampled_by",
    "pruned_at_epoch",
    "refused",
    "fail_reason",
)
# Config fields that are knobs in some space but not always a parameter of their own: `arch`
# samples a base and an order, and the write-ups' question is the resulting filter list.
DERIVED_KNOBS = {"filters": "filters (from config)", "shared_blocks": "split point (shared blocks)"}
MAX_ABLATION_ROWS = 15
ABLATION_HEADERS = {"complete": "done", "age_mae": "age MAE", "gender_acc": "gender acc"}
# The terminal summary's top-10 columns, as they are named in `trials_table`.
TOP_COLUMNS = {
    "user_attrs_val_age_mae": "val_age_mae",
    "user_attrs_val_gender_accuracy": "val_gender_accuracy",
    "user_attrs_epochs_run": "epochs_run",
    "user_attrs_seconds": "seconds",
    "user_attrs_params": "params",
}












def knob_text(v) -> object:
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return v


# ------------------------------------------------------------------------------ every trial


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial, one row each: number, state, value(s), times, params, metrics, configs.

    Column names follow Optuna's `trials_dataframe` (`params_<name>`, `user_attrs_<name>`),
    because a parameter and a user attr can share a name (`params` is also the parameter
    count); the model and train configs are flattened into `model_<field>` / `train_<field>`.
    """
    trials = study.get_trials(deepcopy=False)
    # `value` for one objective, `values_<i>` for several (asking for both repeats columns).
    value = "values" if is_multi(study) else "value"
    df = study.trials_dataframe(attrs=("number", "state", value, "datetime_start", "datetime_complete", "duration", "params"), multi_index=False)
    if df.empty:
        return df
    if "duration" in df.columns:
        df["duration_s"] = df.pop("duration").dt.total_seconds()
    by_number = {t.number: t for t in trials}
    for col in [c for c in df.columns if c.startswith("params_")]:
        # A parameter only some trials sample (conditional) would turn pandas' int column into
        # floats (4 -> 4.0): keep each value as the trial has it.
        name = col.removeprefix("params_")
        df[col] = pd.Series([by_number[n].params.get(name) for n in df["number"]], dtype=object, index=df.index)
    for attr in METRIC_ATTRS:
        col = [by_number[n].user_attrs.get(attr) for n in df["number"]]
        if any(v is not None for v in col):
            df[f"user_attrs_{attr}"] = col
    for prefix, key in (("model", "model_config"), ("train", "train_config")):
        rows = [by_number[n].user_attrs.get(key) or {} for n in df["number"]]
        for f in sorted({k for r in rows for k in r}):
            df[f"{prefix}_{f}"] = [knob_text(r.get(f)) for r in rows]
    return df


def top_table(study: optuna.Study, n: int = 10) -> pd.DataFrame:
    """The `n` best complete trials, for the terminal: number, value and the metrics."""
    df = trials_table(study)
    if df.empty:
        return df
    # In the order of `ranked`, the one rule for the best trial.
    place = {t.number: i for i, t in enumerate(ranked(study))}
    done = df[df["state"] == "COMPLETE"]
    top = done.sort_values("number", key=lambda numbers: numbers.map(place), kind="stable").head(n)
    # Beside the number, the scalar it is ranked by: the value, or the combined objective (user attr).
    sort_col = "value" if "value" in done.columns else "user_attrs_objective" if "user_attrs_objective" in done.columns else "values_0"
    cols = ["number", sort_col, *[c for c in TOP_COLUMNS if c in top.columns]]
    return top[cols].rename(columns=TOP_COLUMNS)


def shown_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The trials table for the page: without configs and dates, with short column names."""
    shown = df.drop(columns=[c for c in df.columns if c.startswith(("model_", "train_", "datetime_"))])
    return shown.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))


# ------------------------------------------------------------------------------ ablations


def _kind(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "categorical"
    if getattr(dist, "log", False) or (isinstance(dist, FloatDistribution) and dist.step is None):
        return "continuous"
    return "discrete"


def on_step(value, dist: BaseDistribution):
    """A stepped float as its distribution writes it: 0.15, not 0.15000000000000002.

    Optuna stores `low + k * step`, which binary floats cannot always hit; rounding to the
    decimals of `low` and `step` gives back the value the space meant.
    """
    if not isinstance(dist, FloatDistribution) or dist.step is None or not _is_number(value):
        return value
    places = max(-Decimal(repr(x)).normalize().as_tuple().exponent for x in (dist.step, dist.low))
    return round(float(value), max(places, 0))


def _knob_series(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, tuple[pd.Series, str]]:
    """Each knob's value per trial, and its kind: "categorical", "discrete" or "continuous"."""
    dists: dict[str, BaseDistribution] = {}
    for t in trials:
        dists.update(t.distributions)
    knobs = {
        name: (pd.Series([on_step(t.params.get(name), dist) for t in trials], dtype=object), _kind(dist))
        for name, dist in dists.items()
    }
    for key, label in DERIVED_KNOBS.items():
        if key not in dists:
            values = [knob_text((t.user_attrs.get("model_config") or {}).get(key)) for t in trials]
            knobs[label] = (pd.Series(values, dtype=object), "categorical")
    return knobs


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _bucket(values: pd.Series, kind: str) -> pd.Series:
    """Values grouped for a table: as they are, or continuous ones in up to four quantile buckets.

    A log-scaled learning rate or l2 takes a new value every trial; its table is only readable
    as ranges. Discrete knobs (dropout in steps of 0.1, depth) keep their values.
    """
    present = values.dropna()
    if kind != "continuous" or present.nunique() <= 4:
        return values
    numeric = pd.to_numeric(values, errors="coerce")
    codes = pd.qcut(numeric, q=4, labels=False, duplicates="drop")
    # Label each bucket by the values really in it (qcut's own edges reach below the minimum).
    labels = {c: f"{numeric[codes == c].min():.3g} – {numeric[codes == c].max():.3g}" for c in codes.dropna().unique()}
    return codes.map(lambda c: labels.get(c)).astype(object)


def _keyed(df: pd.DataFrame, bucketed: bool) -> tuple[pd.DataFrame, list[str], bool]:
    """Rows keyed by the value's text, the keys in table order, and whether they are numbers."""
    if bucketed:
        order = sorted(df["value"].unique(), key=lambda s: float(s.split(" ")[0]))
        return df.assign(key=df["value"]), order, True
    # group on text so that 512 and "512", True and "True" cannot split a row
    values = sorted(df["value"].unique(), key=lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(knob_text(v))))
    keyed = df.assign(key=df["value"].map(lambda v: str(knob_text(v))))
    return keyed, [str(knob_text(v)) for v in values], all(_is_number(v) for v in values)


def _ablation_table(df: pd.DataFrame, order: list[str], numeric: bool, minimize: bool) -> pd.DataFrame:
    g = df.groupby("key", sort=False)
    table = pd.DataFrame(
        {
            "trials": g.size(),
            "complete": g["state"].apply(lambda s: int((s == "COMPLETE").sum())),
            "pruned": g["state"].apply(lambda s: int((s == "PRUNED").sum())),
            "failed": g["state"].apply(lambda s: int((s == "FAIL").sum())),
            "best": g["objective"].min() if minimize else g["objective"].max(),
            "median": g["objective"].median(),
            "age_mae": g["mae"].median(),
            "gender_acc": g["acc"].median(),
        }
    )
    # Numbers read best in their own order (dropout 0.4 / 0.5 / 0.6); names by how well they did.
    table = table.loc[order] if numeric else table.sort_values("median", ascending=minimize, na_position="last")
    table.index = table.index.map(str)
    return table.head(MAX_ABLATION_ROWS)


def ablation_tables(study: optuna.Study) -> dict[str, pd.DataFrame]:
    """Per knob that took at least two values: one row per value with trials and medians.

    The seed write-ups' one-change-at-a-time tables ("BN then ReLU: 0.30; ReLU then BN: 0.53"),
    read from the real trials: for each value, how many finished trials used it (`trials`,
    `complete`, `pruned`, `failed`), the `best` and `median` objective of the complete ones
    (the combined objective in a multi-objective study), and their median val age MAE in years
    (`age_mae`) and median val gender accuracy (`gender_acc`). Rows are ordered by value for
    numeric knobs and by median objective for categorical ones; at most MAX_ABLATION_ROWS rows
    per knob. Stepped floats are shown on their step (0.15, never 0.15000000000000002).
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    if not trials:
        return {}
    done = [t.state == TrialState.COMPLETE for t in trials]
    base = pd.DataFrame(
        {
            "state": [t.state.name for t in trials],
            "objective": [scalar(t, study) for t in trials],
            "mae": [t.user_attrs.get("val_age_mae", math.nan) if d else math.nan for t, d in zip(trials, done, strict=True)],
            "acc": [t.user_attrs.get("val_gender_accuracy", math.nan) if d else math.nan for t, d in zip(trials, done, strict=True)],
        }
    )
    tables: dict[str, pd.DataFrame] = {}
    for knob, (values, kind) in _knob_series(study, trials).items():
        df = base.assign(value=_bucket(values, kind).values)
        df = df[df["value"].notna()]
        if df["value"].nunique() < 2:
            continue  # a fixed knob answers no question
        bucketed = kind == "continuous" and values.dropna().nunique() > 4
        keyed, order, numeric = _keyed(df, bucketed)
        table = _ablation_table(keyed, order, numeric, minimizes(study))
        table.index.name = knob
        tables[knob] = table
    return tables


def terminal_tables(study: optuna.Study, tables: dict[str, pd.DataFrame]) -> str:
    """The ablation tables as text, for the terminal (after the summary)."""
    if not tables:
        return "ablations: no knob took two values in finished trials yet"
    name = objective_of(study)[1]
    parts = [f"ablations: per value of each knob, finished trials; best and median {name}, median val age MAE (years) and gender accuracy of the complete ones"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        for table in tables.values():
            parts.append(table.to_string())
            parts.append("")
    return "\n".join(parts).rstrip()


# ------------------------------------------------------------------------------ summary facts


def summary_facts(study: optuna.Study) -> dict:
    """The numbers of the summary section, as plain data (also used by the terminal lines)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    durations = [t.duration.total_seconds() for t in trials if t.state in FINISHED and t.duration is not None]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    return {
        "meta": study.user_attrs.get(META_KEY, {}),
        "n_trials": len(trials),
        "counts": {k: v for k, v in counts.items() if v},
        "best": best_trials(study),
        "best_trial": best_trial(study),
        "presets": preset_comparison(study),
        "total_seconds": float(sum(durations)),
        "median_seconds": float(np.median(durations)) if durations else math.nan,
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan,
    }




def preset_comparison(study: optuna.Study) -> dict | None:
    """The best preset (baseline) trial against the best searched trial, and their differences.

    Baseline trials carry user attr `preset` (the preset's name); every other trial was
    sampled. Each is the `best_trial` of its own trials (the one rule for the best trial).
    Differences are searched minus preset: negative objective and age MAE, positive accuracy
    mean the search did better. None unless one of each is complete.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    preset = best_trial(study, [t for t in complete if "preset" in t.user_attrs])
    searched = best_trial(study, [t for t in complete if "preset" not in t.user_attrs])
    if preset is None and searched is None:
        return None
    out = {"preset": preset, "searched": searched, "diff": None}
    if preset is not None and searched is not None:
        pa, sa = preset.user_attrs, searched.user_attrs
        out["diff"] = {
            "objective": scalar(searched, study) - scalar(preset, study),
            "val_age_mae": sa.get("val_age_mae", math.nan) - pa.get("val_age_mae", math.nan),
            "val_gender_accuracy": sa.get("val_gender_accuracy", math.nan) - pa.get("val_gender_accuracy", math.nan),
        }
    return out


def comparison_lines(study: optuna.Study, cmp: dict | None) -> list[str]:
    """The preset-vs-search comparison as text lines (terminal and report alike)."""
    if not cmp or cmp["preset"] is None:
        return []
    name = objective_of(study)[1]

    def line(label: str, t: FrozenTrial) -> str:
        ua = t.user_attrs
        who = f" ({ua['preset']})" if "preset" in ua else ""
        return (
            f"{label} #{t.number}{who}: {name} {scalar(t, study):.4f}, val age MAE {ua.get('val_age_mae', math.nan):.2f} y, "
            f"val gender acc {ua.get('val_gender_accuracy', math.nan):.3f}"
        )

    lines = [line("best preset:  ", cmp["preset"])]
    if cmp["searched"] is None:
        return lines + ["best searched: no searched trial has completed yet"]
    lines.append(line("best searched:", cmp["searched"]))
    d = cmp["diff"]
    better = d["objective"] < 0 if minimizes(study) else d["objective"] > 0
    lines.append(
        f"searched - preset: {name} {d['objective']:+.4f}, val age MAE {d['val_age_mae']:+.2f} y, "
        f"val gender acc {d['val_gender_accuracy']:+.3f} ({'the search beats the best preset' if better else 'the best preset is still ahead'})"
    )
    return lines


def decade_line(trial: FrozenTrial) -> str | None:
    """The trial's val age MAE per decade (user attr `val_age_mae_by_decade`), or None."""
    by_decade = trial.user_attrs.get("val_age_mae_by_decade")
    if not isinstance(by_decade, dict) or not by_decade:
        return None

    def start(label: str) -> float:
        head = str(label).split("-")[0].rstrip("+")
        try:
            return float(head)
        except ValueError:
            return math.inf

    parts = [f"{k} {float(v):.1f}" for k, v in sorted(by_decade.items(), key=lambda kv: (start(kv[0]), str(kv[0])))]
    return f"val age MAE by decade (#{trial.number}, years): " + ", ".join(parts)
