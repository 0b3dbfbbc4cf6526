"""The report's plots: Optuna's own (`optuna.visualization`) wherever one exists.

Only what no library offers is drawn here by hand with plotly, and each such place says so:
the best trial's train-vs-val curves and the multi-objective learning curves from each trial's
recorded history. Each function fills one `Section`; a plot Optuna cannot draw yet becomes a
one-line note.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.report.page import Section, fig_html, table_html
from agesearch.search.report.tables import knob_text
from agesearch.search.store.study import best_trials, is_multi

MAX_PARALLEL = 8
SLICE_ROW = 4
STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#d62728", "FAIL": "#7f7f7f", "RUNNING": "#ff7f0e"}
viz = optuna.visualization


def try_plot(section: Section, make: Callable[[], object], div_id: str, height: int | None = None, why: str = "") -> bool:
    """Add Optuna's figure to a section; if Optuna cannot draw it yet, say why in one line."""
    try:
        fig = make()
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        section.note(f"{why or 'not available'} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return False
    if not fig.data:
        section.note(why or "not enough finished trials to draw this plot yet")
        return False
    section.body.append(fig_html(fig, div_id, height))
    return True


def _target_kw(target, target_name: str) -> dict:
    return {} if target is None else {"target": target, "target_name": target_name}


def history_section(study: optuna.Study, target, target_name: str) -> Section:
    sec = Section("history", "Optimisation history", f"{target_name.capitalize()} of each complete trial and the best so far.")
    try_plot(sec, lambda: viz.plot_optimization_history(study, **_target_kw(target, target_name)), "plot-history", 440, "no complete trial yet")
    return sec


def importances_section(study: optuna.Study, target, target_name: str, n_complete: int) -> tuple[Section, dict[str, float]]:
    """Optuna's default importance evaluator over the complete trials, and the importances."""
    sec = Section("importances", "Parameter importances", f"How much each parameter explains the {target_name}: Optuna's default importance evaluator over the complete trials.")
    if n_complete < 2:
        sec.note("importances need at least two complete trials.")
        return sec, {}
    importances: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study, target=target)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            sec.note(f"importances not available yet: {e}")
        if importances:
            try_plot(sec, lambda: viz.plot_param_importances(study, **_target_kw(target, target_name)), "plot-importances", 120 + 24 * len(importances))
    if any(issubclass(w.category, UserWarning) for w in caught):
        sec.note(f"with {n_complete} complete trials Optuna warns that the importances may be inaccurate; read them as a first hint.")
    return sec, importances


def parallel_section(study: optuna.Study, target, target_name: str, params: list[str]) -> Section:
    more = f" The {MAX_PARALLEL} most important parameters." if len(params) > MAX_PARALLEL else ""
    sec = Section("parallel", "Parallel coordinates", "Each line is a complete trial; drag on an axis to filter." + more)
    # Most important first: the parallel coordinates stay readable with the top few axes only.
    try_plot(sec, lambda: viz.plot_parallel_coordinate(study, params=params[:MAX_PARALLEL] or None, **_target_kw(target, target_name)), "plot-parallel", 460, "no complete trial yet")
    return sec


def slice_section(study: optuna.Study, target, target_name: str, params: list[str]) -> Section:
    sec = Section("slice", "Slice plots", f"{target_name.capitalize()} against each parameter, most important first; colour is the trial number.")
    if not params:
        sec.note("no complete trial yet")
    kw = _target_kw(target, target_name)
    # Optuna lays every slice out in one row of fixed width; in rows of SLICE_ROW they fit the page.
    for i in range(0, len(params), SLICE_ROW):
        chunk = params[i : i + SLICE_ROW]
        title = "Slice Plot" if i == 0 else ""
        made = try_plot(sec, lambda chunk=chunk, title=title: viz.plot_slice(study, params=chunk, **kw).update_layout(width=None, autosize=True, title_text=title), f"plot-slice-{i // SLICE_ROW}", 340)
        if not made:
            break
    return sec


def contour_section(study: optuna.Study, target, target_name: str, importances: dict[str, float]) -> Section:
    sec = Section("contour", "Contour of the two most important parameters")
    top2 = [k for k, _ in sorted(importances.items(), key=lambda kv: -kv[1])][:2]
    if len(top2) < 2:
        sec.note("needs parameter importances with at least two parameters.")
        return sec
    sec.intro = f"{top2[0]} × {top2[1]} (the two most important parameters)."
    try_plot(sec, lambda: viz.plot_contour(study, params=top2, **_target_kw(target, target_name)), "plot-contour", 520, "not enough complete trials for a contour")
    return sec


def _style_by_state(fig, study: optuna.Study, best_number: int | None) -> None:
    # Optuna draws every trial alike; colour by state so pruned trials stand out as cut short.
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    for tr in fig.data:
        name = str(tr.name)
        number = int(name.removeprefix("Trial")) if name.startswith("Trial") else None
        state = states.get(number, "COMPLETE")
        color = STATE_COLORS.get(state, "#1f77b4")
        best = number == best_number
        tr.update(
            marker=dict(color=color, size=5),
            line=dict(color=color, dash="dot" if state == "PRUNED" else "solid", width=3 if best else 1.2),
            opacity=1.0 if best or state == "PRUNED" else 0.55,
            mode="lines+markers",
            name=f"#{number} {state.lower()}" + (" (best)" if best else ""),
        )


def _history_curves(study: optuna.Study, best_number: int | None):
    # By hand: multi-objective studies cannot report intermediate values (Optuna forbids
    # trial.report there), so the curves come from the per-epoch history each trial records.
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in study.get_trials(deepcopy=False):
        h = (t.user_attrs.get("history") or {}).get("val_objective") or []
        if h:
            width = 3 if t.number == best_number else 1.2
            fig.add_trace(go.Scatter(x=list(range(len(h))), y=h, mode="lines+markers", name=f"#{t.number} {t.state.name.lower()}", line=dict(color=STATE_COLORS.get(t.state.name), width=width)))
    fig.update_layout(title="Validation combined objective per epoch (from each trial's history)", xaxis_title="epoch", yaxis_title="val combined objective")
    return fig


def learning_curves_section(study: optuna.Study, best_number: int | None) -> Section:
    sec = Section("learning-curves", "Learning curves of every trial", "Validation objective reported after each epoch; pruned trials stop early (dotted red), the best trial is the thick line.")
    if is_multi(study):
        fig = _history_curves(study, best_number)
    else:
        try:
            fig = viz.plot_intermediate_values(study)
        except ValueError as e:
            sec.note(str(e))
            return sec
        _style_by_state(fig, study, best_number)
        fig.update_layout(title="Validation objective per epoch (intermediate values); dotted red: pruned", xaxis_title="epoch", yaxis_title="val objective")
    if not fig.data:
        sec.note("no trial has finished an epoch yet")
    else:
        sec.body.append(fig_html(fig, "plot-learning-curves", 480))
    return sec


def best_trial_section(trial: FrozenTrial | None) -> Section:
    """By hand: Optuna plots one value per step; this is the trial's own Keras history,
    train against val for each of the three metrics."""
    sec = Section("best-trial", "The best trial in detail")
    if trial is None:
        sec.note("no completed trial yet.")
        return sec
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
    sec.body.append(fig_html(fig, "plot-best-trial", 420))
    return sec


def pareto_section(study: optuna.Study) -> Section:
    sec = Section("pareto", "Pareto front", "Age MAE (down) against gender accuracy (up): trials no other trial beats on both.")
    if not is_multi(study):
        sec.note("single-objective study: no Pareto front (run with --objective multi for age MAE vs gender accuracy).")
        return sec
    names = ["val age MAE (years)", "val gender accuracy"][: len(study.directions)]
    try_plot(sec, lambda: viz.plot_pareto_front(study, target_names=names), "plot-pareto", 480, "no complete trial yet")
    front = best_trials(study)
    if front:
        rows = [
            {"trial": t.number, names[0]: t.values[0], names[-1]: t.values[-1], "combined objective": t.user_attrs.get("objective"), **{k: knob_text(v) for k, v in t.params.items()}}
            for t in sorted(front, key=lambda t: t.values[0])
        ]
        sec.body.append("<h3>Trade-off trials (the Pareto front, by age MAE)</h3>")
        sec.body.append(table_html(pd.DataFrame(rows), index=False))
    return sec


def cost_section(study: optuna.Study) -> Section:
    """By hand: Optuna plots parameters, not what a trial cost; this is the objective of each
    complete trial against its FLOPs per image (user attr `flops`), presets apart, with its
    seconds per epoch on hover, and the draws refused over the cost cap counted."""
    import plotly.graph_objects as go

    sec = Section("cost", "Objective vs cost", "Val objective of each complete trial against the FLOPs per image of its model; presets as diamonds. Lower left is better.")
    trials = study.get_trials(deepcopy=False)
    refused = [t for t in trials if "refused" in t.user_attrs]
    if refused:
        sec.note(f"{len(refused)} draw(s) refused before training, over the cost cap: {refused[0].user_attrs['refused']}")
    points = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("flops") and t.user_attrs.get("objective") is not None]
    if not points:
        sec.note("no complete trial with a recorded cost yet")
        return sec
    fig = go.Figure()
    for label, symbol, group in (("preset", "diamond", [t for t in points if "preset" in t.user_attrs]), ("searched", "circle", [t for t in points if "preset" not in t.user_attrs])):
        if group:
            fig.add_trace(go.Scatter(
                x=[t.user_attrs["flops"] / 1e6 for t in group], y=[t.user_attrs["objective"] for t in group], mode="markers", name=label,
                marker={"symbol": symbol, "size": 10},
                text=[f"#{t.number} {t.user_attrs.get('preset', '')} {t.user_attrs.get('seconds_per_epoch', float('nan')):.1f} s/epoch" for t in group],
                hovertemplate="%{text}<br>%{x:.1f} MFLOPs, objective %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="MFLOPs per image (log)", yaxis_title="val objective", xaxis_type="log")
    sec.body.append(fig_html(fig, "plot-cost", 440))
    return sec
