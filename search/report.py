"""The study report: one self-contained HTML file, a CSV of all trials, and terminal tables.

Everything is read back from the study (Optuna's storage, read-only) and from the best trial's
model under `studies/<study>/best.keras`. The plots are Optuna's own (`optuna.visualization`),
the tables are pandas; only what no library offers is drawn here by hand (the best trial's
train-vs-val curves, the face grid, predicted-vs-true age and the error per age decade), and
each such place says so.

Every section has a stable element id (`SECTION_IDS`) so that tests, links and scripts can find
it. A section that does not apply (a Pareto front of a single-objective study, importances with
one finished trial) is still there, with one sentence saying why it is empty.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.study import META_KEY

SECTION_IDS = (
    "summary",
    "history",
    "importances",
    "parallel",
    "slice",
    "contour",
    "learning-curves",
    "best-trial",
    "ablations",
    "pareto",
    "predictions",
    "trials",
)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Scalar user attrs worth a column in the CSV and the trials table (history and configs are not
# scalars; the configs get their own flattened columns).
METRIC_ATTRS = (
    "objective",
    "val_age_mae",
    "val_gender_accuracy",
    "best_epoch",
    "epochs_run",
    "seconds",
    "params",
    "pruned_at_epoch",
    "fail_reason",
)
# Config fields that are knobs in some space but not always a parameter of their own: `arch`
# samples a base and an order, and the write-ups' question is the resulting filter list.
DERIVED_KNOBS = {"filters": "filters (from config)", "shared_blocks": "split point (shared blocks)"}
MAX_ABLATION_ROWS = 15
ABLATION_HEADERS = {"complete": "done", "age_mae": "age MAE", "gender_acc": "gender acc"}
N_FACES = 20
MAX_PARALLEL = 8
SLICE_ROW = 4
STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#d62728", "FAIL": "#7f7f7f", "RUNNING": "#ff7f0e"}


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def objective_of(study: optuna.Study) -> tuple[Callable[[FrozenTrial], float] | None, str]:
    """The scalar that plots and tables rank trials by, and its name.

    Single-objective studies use the trial's value (Optuna's default, target=None). A
    multi-objective study ranks by the combined objective every trial records as a user attr,
    so that Optuna's single-target plots still apply to it.
    """
    if not is_multi(study):
        return None, "objective"
    return (lambda t: float(t.user_attrs.get("objective", math.nan))), "combined objective"


def _scalar(trial: FrozenTrial, study: optuna.Study) -> float:
    if trial.state != TrialState.COMPLETE:
        return math.nan
    if is_multi(study):
        return float(trial.user_attrs.get("objective", math.nan))
    return float(trial.value)


def _knob_text(v) -> object:
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return v


def all_trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial, one row each: number, state, value(s), times, params, metrics, configs.

    Column names follow Optuna's `trials_dataframe` (`params_<name>`, `user_attrs_<name>`),
    because a parameter and a user attr can share a name (`params` is also the parameter
    count); the model and train configs are flattened into `model_<field>` / `train_<field>`.
    """
    trials = study.get_trials(deepcopy=False)
    df = study.trials_dataframe(attrs=("number", "state", "value", "values", "datetime_start", "datetime_complete", "duration", "params"), multi_index=False)
    if df.empty:
        return df
    # trials_dataframe gives both `value` and `values_0` for one objective; keep the one that fits.
    df = df.drop(columns=[c for c in df.columns if (c.startswith("values_") if not is_multi(study) else c == "value")])
    if "duration" in df.columns:
        df["duration_s"] = df.pop("duration").dt.total_seconds()
    by_number = {t.number: t for t in trials}
    for attr in METRIC_ATTRS:
        col = [by_number[n].user_attrs.get(attr) for n in df["number"]]
        if any(v is not None for v in col):
            df[f"user_attrs_{attr}"] = col
    for prefix, key in (("model", "model_config"), ("train", "train_config")):
        rows = [by_number[n].user_attrs.get(key) or {} for n in df["number"]]
        fields = sorted({k for r in rows for k in r})
        for f in fields:
            df[f"{prefix}_{f}"] = [_knob_text(r.get(f)) for r in rows]
    return df


def _knob_series(study: optuna.Study, trials: list[FrozenTrial]) -> dict[str, tuple[pd.Series, str]]:
    """Each knob's value per trial, and its kind: "categorical", "discrete" or "continuous"."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for t in trials:
        dists.update(t.distributions)
    knobs: dict[str, tuple[pd.Series, str]] = {}
    for name, dist in dists.items():
        values = pd.Series([t.params.get(name) for t in trials], dtype=object)
        if isinstance(dist, CategoricalDistribution):
            kind = "categorical"
        elif getattr(dist, "log", False) or (isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is None):
            kind = "continuous"
        else:
            kind = "discrete"
        knobs[name] = (values, kind)
    for key, label in DERIVED_KNOBS.items():
        if key in dists:
            continue
        values = pd.Series([_knob_text((t.user_attrs.get("model_config") or {}).get(key)) for t in trials], dtype=object)
        knobs[label] = (values, "categorical")
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


def ablation_tables(study: optuna.Study) -> dict[str, pd.DataFrame]:
    """Per knob that took at least two values: one row per value with trials and medians.

    The seed write-ups' one-change-at-a-time tables ("BN then ReLU: 0.30; ReLU then BN: 0.53"),
    read from the real trials: for each value, how many finished trials used it (`trials`,
    `complete`, `pruned`, `failed`), the `best` and `median` objective of the complete ones
    (the combined objective in a multi-objective study), and their median val age MAE in years
    (`age_mae`) and median val gender accuracy (`gender_acc`). Rows are ordered by value for numeric knobs and by median
    objective for categorical ones; at most MAX_ABLATION_ROWS rows per knob.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    if not trials:
        return {}
    minimize = is_multi(study) or study.direction == optuna.study.StudyDirection.MINIMIZE
    base = pd.DataFrame(
        {
            "state": [t.state.name for t in trials],
            "objective": [_scalar(t, study) for t in trials],
            "mae": [t.user_attrs.get("val_age_mae", math.nan) if t.state == TrialState.COMPLETE else math.nan for t in trials],
            "acc": [t.user_attrs.get("val_gender_accuracy", math.nan) if t.state == TrialState.COMPLETE else math.nan for t in trials],
        }
    )
    tables: dict[str, pd.DataFrame] = {}
    for knob, (values, kind) in _knob_series(study, trials).items():
        df = base.assign(value=_bucket(values, kind).values)
        df = df[df["value"].notna()]
        if df["value"].nunique() < 2:
            continue  # a fixed knob answers no question
        bucketed = kind == "continuous" and values.dropna().nunique() > 4
        if not bucketed:
            # group on text so that 512 and "512", True and "True" cannot split a row
            df = df.assign(key=df["value"].map(lambda v: str(_knob_text(v))))
            order = sorted(df["value"].unique(), key=lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(_knob_text(v))))
            numeric = all(_is_number(v) for v in order)
            order = [str(_knob_text(v)) for v in order]
        else:
            df = df.assign(key=df["value"])
            order = sorted(df["key"].unique(), key=lambda s: float(s.split(" ")[0]))
            numeric = True
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
        table.index.name = knob
        tables[knob] = table.head(MAX_ABLATION_ROWS)
    return tables


def summary_facts(study: optuna.Study) -> dict:
    """The numbers of the summary section, as plain data (also used by the terminal lines)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    finished = [t for t in trials if t.state in FINISHED and t.duration is not None]
    durations = [t.duration.total_seconds() for t in finished]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    from agesearch.search.summary import best_trials

    best = best_trials(study)
    return {
        "meta": study.user_attrs.get(META_KEY, {}),
        "n_trials": len(trials),
        "counts": {k: v for k, v in counts.items() if v},
        "best": best,
        "total_seconds": float(sum(durations)),
        "median_seconds": float(np.median(durations)) if durations else math.nan,
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan,
    }


def terminal_tables(study: optuna.Study, tables: dict[str, pd.DataFrame]) -> str:
    """The ablation tables as text, for the terminal (after `summarize`)."""
    if not tables:
        return "ablations: no knob took two values in finished trials yet"
    name = objective_of(study)[1]
    parts = [f"ablations: per value of each knob, finished trials; best and median {name}, median val age MAE (years) and gender accuracy of the complete ones"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        for table in tables.values():
            parts.append(table.to_string())
            parts.append("")
    return "\n".join(parts).rstrip()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    body: list[str] = field(default_factory=list)  # HTML fragments

    def note(self, text: str) -> None:
        self.body.append(f'<p class="note">{html.escape(text)}</p>')


def _fig_html(fig, div_id: str, height: int | None = None) -> str:
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=30, t=50, b=50))
    if height:
        fig.update_layout(height=height)
    # plotly.js is embedded once in <head>; each figure is just its div and a Plotly.newPlot call.
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True})


def _try_plot(section: Section, make: Callable[[], object], div_id: str, height: int | None = None, why: str = "") -> bool:
    """Add Optuna's figure to a section; if Optuna cannot draw it yet, say why in one line."""
    try:
        fig = make()
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        section.note(f"{why or 'not available'} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return False
    if not fig.data:
        section.note(why or "not enough finished trials to draw this plot yet")
        return False
    section.body.append(_fig_html(fig, div_id, height))
    return True


def _learning_curves(study: optuna.Study, section: Section, best_number: int | None) -> None:
    import plotly.graph_objects as go

    if not is_multi(study):
        try:
            fig = optuna.visualization.plot_intermediate_values(study)
        except ValueError as e:
            section.note(str(e))
            return
        # Optuna draws every trial alike; colour by state so pruned trials stand out as cut short.
        states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        for tr in fig.data:
            number = int(str(tr.name).removeprefix("Trial")) if str(tr.name).startswith("Trial") else None
            state = states.get(number, "COMPLETE")
            tr.update(
                marker=dict(color=STATE_COLORS.get(state, "#1f77b4"), size=5),
                line=dict(color=STATE_COLORS.get(state, "#1f77b4"), dash="dot" if state == "PRUNED" else "solid", width=3 if number == best_number else 1.2),
                opacity=1.0 if number == best_number or state == "PRUNED" else 0.55,
                mode="lines+markers",
                name=f"#{number} {state.lower()}" + (" (best)" if number == best_number else ""),
            )
        fig.update_layout(title="Validation objective per epoch (intermediate values); dotted red: pruned", xaxis_title="epoch", yaxis_title="val objective")
    else:
        # Multi-objective studies cannot report intermediate values (Optuna forbids trial.report
        # there), so the curves come from the per-epoch history each trial records.
        fig = go.Figure()
        for t in study.get_trials(deepcopy=False):
            h = (t.user_attrs.get("history") or {}).get("val_objective") or []
            if not h:
                continue
            state = t.state.name
            fig.add_trace(go.Scatter(x=list(range(len(h))), y=h, mode="lines+markers", name=f"#{t.number} {state.lower()}", line=dict(color=STATE_COLORS.get(state), width=3 if t.number == best_number else 1.2)))
        fig.update_layout(title="Validation combined objective per epoch (from each trial's history)", xaxis_title="epoch", yaxis_title="val combined objective")
    if not fig.data:
        section.note("no trial has finished an epoch yet")
        return
    section.body.append(_fig_html(fig, "plot-learning-curves", 480))


def _best_trial_curves(trial: FrozenTrial, section: Section) -> None:
    # By hand: Optuna plots one value per step; this is the trial's own Keras history,
    # train against val for each of the three metrics.
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    h = trial.user_attrs.get("history") or {}
    panels = [("loss", "loss", "val_loss"), ("age MAE (years)", "age_mae", "val_age_mae"), ("gender accuracy", "gender_accuracy", "val_gender_accuracy")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.07)
    for col, (_, train_key, val_key) in enumerate(panels, start=1):
        for key, label, color in ((train_key, "train", "#1f77b4"), (val_key, "val", "#ff7f0e")):
            ys = h.get(key) or []
            fig.add_trace(go.Scatter(x=list(range(len(ys))), y=ys, mode="lines+markers", name=label, line=dict(color=color), legendgroup=label, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    best_epoch = trial.user_attrs.get("best_epoch")
    if best_epoch is not None:
        for col in (1, 2, 3):
            fig.add_vline(x=best_epoch, line_dash="dash", line_color="#2ca02c", row=1, col=col)
    fig.update_layout(title=f"Trial #{trial.number}: train vs val per epoch (green dashes: best epoch, whose weights were kept)")
    section.body.append(_fig_html(fig, "plot-best-trial", 420))


def _pareto(study: optuna.Study, section: Section) -> None:
    if not is_multi(study):
        section.note("single-objective study: no Pareto front (run with --objective multi for age MAE vs gender accuracy).")
        return
    names = ["val age MAE (years)", "val gender accuracy"][: len(study.directions)]
    _try_plot(section, lambda: optuna.visualization.plot_pareto_front(study, target_names=names), "plot-pareto", 480, "no complete trial yet")
    best = study.best_trials
    if best:
        rows = [{"trial": t.number, names[0]: t.values[0], names[-1]: t.values[-1], "combined objective": t.user_attrs.get("objective"), **{k: _knob_text(v) for k, v in t.params.items()}} for t in sorted(best, key=lambda t: t.values[0])]
        section.body.append("<h3>Trade-off trials (the Pareto front, by age MAE)</h3>")
        section.body.append(_table_html(pd.DataFrame(rows), index=False))


# ----------------------------------------------------------------------------------------------
# Predictions of the best model
# ----------------------------------------------------------------------------------------------


def _png_base64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def predictions_section(study: optuna.Study, section: Section, models_dir: Path | None, *, cache_dir: Path | None = None) -> dict | None:
    """20 val faces with predicted and true age and gender, predicted vs true, MAE per decade.

    Uses the model the search kept (`best.keras`, the best trial so far) on the study's own
    val split, reloaded from the study's metadata. Returns the numbers shown, or None (with a
    note in the section) when there is no model or the data cannot be found again.
    """
    from agesearch.search.artifacts import BEST_INFO, BEST_MODEL

    if models_dir is None or not (models_dir / BEST_MODEL).is_file():
        section.note(f"no saved model: the search keeps the best trial's model as {models_dir / BEST_MODEL if models_dir else 'studies/<study>/best.keras'} once a trial completes.")
        return None
    meta = study.user_attrs.get(META_KEY)
    if not meta:
        section.note("the study has no agesearch metadata, so its images cannot be found again.")
        return None
    try:
        from agesearch.search.study_data import study_dataset

        ds, split = study_dataset(meta, cache_dir=cache_dir)
    except Exception as e:  # the data moved or changed since the search: the rest of the report stands
        section.note(f"cannot reload the study's images: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    info_path = models_dir / BEST_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}

    val = split.val
    images = ds.images[val]
    try:
        from agesearch.models.inference import load_model

        model = load_model(models_dir / BEST_MODEL)
        out = model.predict(images, batch_size=128, verbose=0)
    except Exception as e:  # a file from another Keras version or a half-copied one: the rest of the report stands
        section.note(f"cannot use {models_dir / BEST_MODEL}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    # The saved model answers in years (agesearch.models.inference), whatever its age head.
    pred_age = np.asarray(out["age"], dtype=float).reshape(-1)
    p_female = np.asarray(out["gender"], dtype=float).reshape(-1)
    true_age = ds.ages[val].astype(float)
    true_gender = ds.genders[val].astype(int)
    pred_gender = (p_female >= 0.5).astype(int)
    err = np.abs(pred_age - true_age)
    mae = float(err.mean()) if len(err) else math.nan
    acc = float((pred_gender == true_gender).mean()) if len(err) else math.nan

    section.body.append(
        f'<p>Model of trial #{html.escape(str(info.get("trial", "?")))} (<code>{html.escape(str(models_dir / BEST_MODEL))}</code>) on the '
        f"{len(val)} validation images: age MAE <b>{mae:.2f}</b> years, gender accuracy <b>{acc:.3f}</b>.</p>"
    )
    # By hand: a grid of faces with captions is plain HTML; the images are inline PNGs so the
    # file stays self-contained.
    sex = {0: "M", 1: "F"}
    cells = []
    for i in range(min(N_FACES, len(val))):
        ok = pred_gender[i] == true_gender[i]
        cells.append(
            '<figure class="face">'
            f'<img alt="validation face {i}" src="data:image/png;base64,{_png_base64(images[i])}">'
            f'<figcaption><span class="pred">pred {pred_age[i]:.0f} y, <span class="{"ok" if ok else "bad"}">{sex[int(pred_gender[i])]}</span> '
            f"({p_female[i]:.2f})</span><br><span class=\"true\">true {true_age[i]:.0f} y, {sex[int(true_gender[i])]}</span></figcaption></figure>"
        )
    section.body.append('<div class="faces" id="faces">' + "".join(cells) + "</div>")

    # By hand: predicted-vs-true scatter and the per-decade error are our own arrays, not a study.
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    decade = (true_age // 10 * 10).astype(int)
    per = pd.DataFrame({"decade": decade, "err": err}).groupby("decade")["err"].agg(["mean", "size"]).reset_index()
    labels = [f"{d}-{d + 9}" for d in per["decade"]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["predicted vs true age (validation)", "age MAE per decade (n above the bars)"], horizontal_spacing=0.1)
    colors = np.where(pred_gender == true_gender, "#1f77b4", "#d62728")
    fig.add_trace(go.Scatter(x=true_age, y=pred_age, mode="markers", marker=dict(color=colors, size=6, opacity=0.7), name="val images", hovertemplate="true %{x:.0f} y<br>pred %{y:.1f} y<extra></extra>"), row=1, col=1)
    hi = float(max(true_age.max(initial=1), pred_age.max(initial=1)))
    fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line=dict(dash="dash", color="#888"), name="perfect"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=per["mean"], text=[f"n={n}" for n in per["size"]], textposition="outside", marker_color="#2ca02c", name="MAE per decade"), row=1, col=2)
    fig.update_xaxes(title_text="true age (years)", row=1, col=1)
    fig.update_yaxes(title_text="predicted age (years)", row=1, col=1)
    fig.update_xaxes(title_text="true age decade", row=1, col=2)
    fig.update_yaxes(title_text="MAE (years)", row=1, col=2)
    fig.update_layout(showlegend=False, title="Age errors of the best model (red dots: gender wrong)")
    section.body.append(_fig_html(fig, "plot-predictions", 440))
    return {"trial": info.get("trial"), "val_age_mae": mae, "val_gender_accuracy": acc, "faces": min(N_FACES, len(val))}


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(_knob_text(v))


def _table_html(df: pd.DataFrame, *, index: bool = True, highlight: int | None = None) -> str:
    text = df.to_html(index=index, na_rep="–", float_format=lambda v: f"{v:.4g}", classes="tbl", border=0, escape=True)
    if highlight is not None:
        # pandas' Styler needs jinja2, which is not a dependency: mark the row with a class.
        head, _, body = text.partition("<tbody>")
        rows = body.split("<tr>")
        if 0 <= highlight < len(rows) - 1:
            rows[highlight + 1] = "<tr class=\"best\">" + rows[highlight + 1]
            body = "".join(r if i == 0 or r.startswith("<tr class") else "<tr>" + r for i, r in enumerate(rows))
        text = head + "<tbody>" + body
    return f'<div class="tblwrap">{text}</div>'


def _summary(study: optuna.Study, section: Section, facts: dict) -> None:
    meta = facts["meta"]
    best = facts["best"]
    counts = facts["counts"]
    multi = is_multi(study)
    cards = [("trials", str(facts["n_trials"]), ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) or "none")]
    if best and not multi:
        b = best[0]
        cards += [
            ("best objective", f"{b.value:.4f}", f"trial #{b.number}"),
            ("val age MAE", f"{b.user_attrs.get('val_age_mae', math.nan):.2f} y", f"trivial {meta.get('baselines', {}).get('mae_trivial', math.nan):.2f} y"),
            ("val gender accuracy", f"{b.user_attrs.get('val_gender_accuracy', math.nan):.3f}", f"trivial {1 - meta.get('baselines', {}).get('error_trivial', math.nan):.3f}"),
        ]
    elif best:
        cards.append(("Pareto front", f"{len(best)} trials", "age MAE vs gender accuracy"))
    cards.append(("time", _duration(facts["total_seconds"]), f"median {facts['median_seconds']:.1f} s per trial, wall {_duration(facts['wall_seconds'])}"))
    section.body.append('<div class="cards">' + "".join(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div><div class="s">{html.escape(s)}</div></div>' for k, v, s in cards) + "</div>")
    rows = [
        ("data", f"{meta.get('data', '?')} ({meta.get('images', '?')} images, {meta.get('image_size', '?')} px)"),
        ("split", f"{meta.get('split')} -> {meta.get('split_sizes')} train/val/test, seed {meta.get('seed')}"),
        ("space / objective", f"{meta.get('space', '?')} / {meta.get('objective', '?')} ({', '.join(d.name.lower() for d in study.directions)})"),
        ("trials by state", ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) or "none"),
    ]
    if best:
        b = best[0] if not multi else min(best, key=lambda t: t.user_attrs.get("objective", math.inf))
        label = "best trial" if not multi else "best combined on the front"
        rows.append((label, f"#{b.number}: value {', '.join(f'{v:.4f}' for v in b.values)}; val age MAE {b.user_attrs.get('val_age_mae', math.nan):.2f} y, val gender accuracy {b.user_attrs.get('val_gender_accuracy', math.nan):.3f}, {b.user_attrs.get('epochs_run')} epochs, {b.user_attrs.get('params')} weights"))
        rows.append(("best parameters", ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items())))
    else:
        rows.append(("best trial", "no completed trial yet"))
    rows.append(("time", f"{_duration(facts['total_seconds'])} of trials in total, median {facts['median_seconds']:.1f} s per trial; {_duration(facts['wall_seconds'])} from first start to last finish"))
    section.body.append('<table class="kv">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>")


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid #e5e7eb;padding:8px 32px;font-size:13px}
nav a{margin-right:14px;color:#2563eb;text-decoration:none} nav a:hover{text-decoration:underline}
main{max-width:1280px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:18px 0;padding:14px 20px}
section h2{font-size:18px;margin:4px 0 6px} section h3{font-size:15px;margin:16px 0 6px}
p.intro{color:#555;font-size:13px;margin:0 0 8px} p.note{color:#92400e;background:#fffbeb;border-left:3px solid #f59e0b;padding:6px 10px;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 14px}
.card{flex:1 1 180px;background:#f8fafc;border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.04em} .card .v{font-size:22px;font-weight:600;margin:2px 0}
.card .s{font-size:12px;color:#64748b}
table.kv{border-collapse:collapse;font-size:13px} table.kv th{text-align:left;color:#475569;padding:3px 14px 3px 0;vertical-align:top;white-space:nowrap}
table.kv td{padding:3px 0}
.tblwrap{overflow-x:auto;margin:4px 0 10px} table.tbl{border-collapse:collapse;font-size:12.5px}
table.tbl th,table.tbl td{padding:4px 10px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}
table.tbl th{background:#f1f5f9;color:#334155} table.tbl tbody th{text-align:left;background:#fafbfc}
table.tbl td:first-child,table.tbl th:first-child{text-align:left}
table.tbl tr.best td,table.tbl tr.best th{background:#ecfdf5;font-weight:600}
.ablations{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:6px 24px}
.faces{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:10px;margin:10px 0}
.face{margin:0;text-align:center;font-size:12px} .face img{width:96px;height:96px;image-rendering:pixelated;border-radius:4px;border:1px solid #ddd}
.face .ok{color:#15803d;font-weight:600} .face .bad{color:#b91c1c;font-weight:600} .face .true{color:#555}
code{background:#f1f5f9;padding:1px 4px;border-radius:3px;font-size:12px}
"""


@dataclass
class ReportResult:
    """What `build_report` made: the page, the tables behind it and the terminal text."""

    html: str
    tables: dict[str, pd.DataFrame]
    trials: pd.DataFrame
    text: str
    predictions: dict | None
    seconds: float


def build_report(study: optuna.Study, *, models_dir: Path | None = None, predictions: bool = True, cache_dir: Path | None = None) -> ReportResult:
    """Read a study (possibly still running) and make the HTML page and its tables.

    Only reads: the storage is never written, so a search that is running goes on unharmed.

    Args:
        study: the loaded study.
        models_dir: `studies/<study>/`, where the search keeps `best.keras`.
        predictions: draw the predictions section (loads Keras and the study's images).
        cache_dir: decoded-image cache for reloading the images.
    """
    start = time.perf_counter()
    from agesearch.search.summary import summarize

    facts = summary_facts(study)
    target, target_name = objective_of(study)
    multi = is_multi(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = facts["best"]
    best_trial = None
    if best:
        best_trial = best[0] if not multi else min(best, key=lambda t: t.user_attrs.get("objective", math.inf))

    sections = {sid: Section(sid, title) for sid, title in (
        ("summary", "Summary"),
        ("history", "Optimisation history"),
        ("importances", "Parameter importances"),
        ("parallel", "Parallel coordinates"),
        ("slice", "Slice plots"),
        ("contour", "Contour of the two most important parameters"),
        ("learning-curves", "Learning curves of every trial"),
        ("best-trial", "The best trial in detail"),
        ("ablations", "Ablation tables"),
        ("pareto", "Pareto front"),
        ("predictions", "Predictions of the best model"),
        ("trials", "All trials"),
    )}
    _summary(study, sections["summary"], facts)
    viz = optuna.visualization
    kw = {} if target is None else {"target": target, "target_name": target_name}
    sections["history"].intro = f"{target_name.capitalize()} of each complete trial and the best so far."
    _try_plot(sections["history"], lambda: viz.plot_optimization_history(study, **kw), "plot-history", 440, "no complete trial yet")

    importances: dict[str, float] = {}
    sections["importances"].intro = f"How much each parameter explains the {target_name}: Optuna's default importance evaluator over the complete trials."
    if len(complete) >= 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                importances = optuna.importance.get_param_importances(study, target=target)
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                sections["importances"].note(f"importances not available yet: {e}")
            if importances:
                _try_plot(sections["importances"], lambda: viz.plot_param_importances(study, **kw), "plot-importances", 120 + 24 * len(importances))
        if any(issubclass(w.category, UserWarning) for w in caught):
            sections["importances"].note(f"with {len(complete)} complete trials Optuna warns that the importances may be inaccurate; read them as a first hint.")
    else:
        sections["importances"].note("importances need at least two complete trials.")
    # Most important first: the parallel coordinates stay readable with the top few axes only.
    params = sorted({k for t in complete for k in t.params}, key=lambda k: (-importances.get(k, -1.0), k))

    sections["parallel"].intro = "Each line is a complete trial; drag on an axis to filter." + (f" The {MAX_PARALLEL} most important parameters." if len(params) > MAX_PARALLEL else "")
    _try_plot(sections["parallel"], lambda: viz.plot_parallel_coordinate(study, params=params[:MAX_PARALLEL] or None, **kw), "plot-parallel", 460, "no complete trial yet")
    sections["slice"].intro = f"{target_name.capitalize()} against each parameter, most important first; colour is the trial number."
    if not params:
        sections["slice"].note("no complete trial yet")
    # Optuna lays every slice out in one row of fixed width; in rows of SLICE_ROW they fit the page.
    for i in range(0, len(params), SLICE_ROW):
        chunk = params[i : i + SLICE_ROW]
        made = _try_plot(
            sections["slice"],
            lambda chunk=chunk, first=i == 0: viz.plot_slice(study, params=chunk, **kw).update_layout(width=None, autosize=True, title_text="Slice Plot" if first else ""),
            f"plot-slice-{i // SLICE_ROW}",
            340,
        )
        if not made:
            break
    top2 = [k for k, _ in sorted(importances.items(), key=lambda kv: -kv[1])][:2]
    if len(top2) == 2:
        sections["contour"].intro = f"{top2[0]} × {top2[1]} (the two most important parameters)."
        _try_plot(sections["contour"], lambda: viz.plot_contour(study, params=top2, **kw), "plot-contour", 520, "not enough complete trials for a contour")
    else:
        sections["contour"].note("needs parameter importances with at least two parameters.")

    sections["learning-curves"].intro = "Validation objective reported after each epoch; pruned trials stop early (dotted red), the best trial is the thick line."
    _learning_curves(study, sections["learning-curves"], best_trial.number if best_trial else None)
    if best_trial is not None:
        _best_trial_curves(best_trial, sections["best-trial"])
    else:
        sections["best-trial"].note("no completed trial yet.")

    tables = ablation_tables(study)
    sec = sections["ablations"]
    sec.intro = (
        f"For each knob that took two or more values: finished trials per value (done = complete), the best and median "
        f"{target_name} of the complete ones, and their median val age MAE (years) and gender accuracy. Highlighted: the best median."
    )
    if tables:
        blocks = []
        for knob, table in tables.items():
            med = table["median"].to_numpy(dtype=float)
            hl = None
            if np.isfinite(med).any():
                hl = int(np.nanargmin(med) if multi or study.direction == optuna.study.StudyDirection.MINIMIZE else np.nanargmax(med))
            shown = table.rename(columns=ABLATION_HEADERS).reset_index()
            blocks.append(f'<div><h3>{html.escape(knob)}</h3>{_table_html(shown, index=False, highlight=hl)}</div>')
        sec.body.append('<div class="ablations">' + "".join(blocks) + "</div>")
    else:
        sec.note("no knob has taken two values in finished trials yet.")

    sections["pareto"].intro = "Age MAE (down) against gender accuracy (up): trials no other trial beats on both."
    _pareto(study, sections["pareto"])

    pred = None
    sections["predictions"].intro = f"{N_FACES} validation faces: predicted age, gender (P(female) in brackets; green right, red wrong) and the truth."
    if predictions:
        pred = predictions_section(study, sections["predictions"], models_dir, cache_dir=cache_dir)
    else:
        sections["predictions"].note("skipped (--no-predictions).")

    trials_df = all_trials_table(study)
    if trials_df.empty:
        sections["trials"].note("no trials yet.")
    else:
        shown = trials_df.drop(columns=[c for c in trials_df.columns if c.startswith(("model_", "train_", "datetime_"))])
        shown = shown.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
        sections["trials"].intro = "Every trial with its parameters and metrics (the same table as --csv, without the config columns)."
        sections["trials"].body.append(_table_html(shown, index=False))

    text = summarize(study) + "\n" + terminal_tables(study, tables)
    page = _page(study, list(sections.values()), facts)
    return ReportResult(page, tables, trials_df, text, pred, time.perf_counter() - start)


def _page(study: optuna.Study, sections: list[Section], facts: dict) -> str:
    from plotly.offline import get_plotlyjs

    meta = facts["meta"]
    title = f"agesearch report: {study.study_name}"
    sub = f"{facts['n_trials']} trials · space {meta.get('space', '?')} · {meta.get('images', '?')} images at {meta.get('image_size', '?')} px · generated {time.strftime('%Y-%m-%d %H:%M')}"
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title.split(" of ")[0])}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>' + (f'<p class="intro">{html.escape(s.intro)}</p>' if s.intro else "") + "".join(s.body) + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<style>{CSS}</style>"
        # plotly.js once, inline, so the file opens offline.
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        f"</head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(sub)}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def write_report(result: ReportResult, out: Path) -> Path:
    """Write the page atomically, so a browser reloading it never sees half a file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(result.html, encoding="utf-8")
    tmp.replace(out)
    return out
