"""`build_report`: the study read back as a list of sections, the page, the CSV table and the text.

Only reads: the storage is never written, so a search that is running goes on unharmed.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from agesearch.search.report import figures
from agesearch.search.report.page import Section, cards_html, duration, fmt, kv_html, render_page, subtitle, table_html, write_page
from agesearch.search.report.predictions import N_FACES, predictions_section
from agesearch.search.report.tables import (
    ABLATION_HEADERS,
    ablation_tables,
    comparison_lines,
    decade_line,
    is_multi,
    minimizes,
    objective_of,
    shown_trials,
    summary_facts,
    terminal_tables,
    trials_table,
)

SECTION_IDS = ("summary", "history", "importances", "parallel", "slice", "contour", "learning-curves", "best-trial", "ablations", "pareto", "cost", "predictions", "trials")


@dataclass
class ReportResult:
    """What `build_report` made: the page, the tables behind it and the terminal text."""

    html: str  # the self-contained page
    tables: dict[str, pd.DataFrame]  # the ablation tables, by knob
    trials: pd.DataFrame  # every trial (the CSV)
    text: str  # the terminal summary and ablation tables
    predictions: dict | None  # the best model's numbers on val, when drawn
    seconds: float  # time taken


def _cards(study: optuna.Study, facts: dict) -> list[tuple[str, str, str]]:
    best, counts, baselines = facts["best"], facts["counts"], facts["meta"].get("baselines", {})
    cards = [("trials", str(facts["n_trials"]), ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) or "none")]
    if best and not is_multi(study):
        b = best[0]
        cards += [
            ("best objective", f"{b.value:.4f}", f"trial #{b.number}"),
            ("val age MAE", f"{b.user_attrs.get('val_age_mae', math.nan):.2f} y", f"trivial {baselines.get('mae_trivial', math.nan):.2f} y"),
            ("val gender accuracy", f"{b.user_attrs.get('val_gender_accuracy', math.nan):.3f}", f"trivial {1 - baselines.get('error_trivial', math.nan):.3f}"),
        ]
    elif best:
        cards.append(("Pareto front", f"{len(best)} trials", "age MAE vs gender accuracy"))
    cards.append(("time", duration(facts["total_seconds"]), f"median {facts['median_seconds']:.1f} s per trial, wall {duration(facts['wall_seconds'])}"))
    return cards


def summary_section(study: optuna.Study, facts: dict) -> Section:
    """Cards, the study's data and split, the best trial, the best preset next to the search."""
    meta, counts, b = facts["meta"], facts["counts"], facts["best_trial"]
    rows = [
        ("data", f"{meta.get('data', '?')} ({meta.get('images', '?')} images, {meta.get('image_size', '?')} px)"),
        ("split", f"{meta.get('split')} -> {meta.get('split_sizes')} train/val/test, seed {meta.get('seed')}"),
        ("space / objective", f"{meta.get('space', '?')} / {meta.get('objective', '?')} ({', '.join(d.name.lower() for d in study.directions)})"),
        ("trials by state", ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) or "none"),
    ]
    if b is not None:
        ua = b.user_attrs
        rows.append(("best trial" if not is_multi(study) else "best combined on the front", f"#{b.number}: value {', '.join(f'{v:.4f}' for v in b.values)}; val age MAE {ua.get('val_age_mae', math.nan):.2f} y, val gender accuracy {ua.get('val_gender_accuracy', math.nan):.3f}, {ua.get('epochs_run')} epochs, {ua.get('params')} weights"))
        rows.append(("best parameters", ", ".join(f"{k}={fmt(v)}" for k, v in b.params.items())))
        decades = decade_line(b)
        if decades:
            rows.append(("val age MAE by decade", decades.split(": ", 1)[1]))
    else:
        rows.append(("best trial", "no completed trial yet"))
    for line in comparison_lines(study, facts["presets"]):
        label, _, text = line.partition(":")
        rows.append((label.strip(), text.strip()))
    rows.append(("time", f"{duration(facts['total_seconds'])} of trials in total, median {facts['median_seconds']:.1f} s per trial; {duration(facts['wall_seconds'])} from first start to last finish"))
    sec = Section("summary", "Summary")
    sec.body += [cards_html(_cards(study, facts)), kv_html(rows)]
    return sec


def ablations_section(study: optuna.Study, tables: dict[str, pd.DataFrame], target_name: str) -> Section:
    sec = Section(
        "ablations",
        "Ablation tables",
        f"For each knob that took two or more values: finished trials per value (done = complete), the best and median "
        f"{target_name} of the complete ones, and their median val age MAE (years) and gender accuracy. Highlighted: the best median.",
    )
    if not tables:
        sec.note("no knob has taken two values in finished trials yet.")
        return sec
    blocks = []
    for knob, table in tables.items():
        med = table["median"].to_numpy(dtype=float)
        hl = int(np.nanargmin(med) if minimizes(study) else np.nanargmax(med)) if np.isfinite(med).any() else None
        shown = table.rename(columns=ABLATION_HEADERS).reset_index()
        blocks.append(f"<div><h3>{html.escape(knob)}</h3>{table_html(shown, index=False, highlight=hl)}</div>")
    sec.body.append('<div class="ablations">' + "".join(blocks) + "</div>")
    return sec


def trials_section(df: pd.DataFrame) -> Section:
    sec = Section("trials", "All trials")
    if df.empty:
        sec.note("no trials yet.")
        return sec
    sec.intro = "Every trial with its parameters and metrics (the same table as --csv, without the config columns)."
    sec.body.append(table_html(shown_trials(df), index=False))
    return sec


def build_report(
    study: optuna.Study,
    *,
    storage_url: str | None = None,
    artifacts: str | None = None,
    predictions: bool = True,
    cache_dir: Path | None = None,
) -> ReportResult:
    """Read a study (possibly still running) and make the HTML page, its tables and the text.

    Args:
        study: the loaded study.
        storage_url: its storage URL (finds the artifact store, or an old `best.keras`).
        artifacts: an artifact store other than the one the study recorded (`--artifacts`).
        predictions: draw the predictions section (loads Keras and the study's images).
        cache_dir: decoded-image cache for reloading the images.
    """
    from agesearch.search.report.summary import summarize

    start = time.perf_counter()
    facts = summary_facts(study)
    target, name = objective_of(study)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    best = facts["best_trial"]
    importances_sec, importances = figures.importances_section(study, target, name, n_complete)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({k for t in complete for k in t.params}, key=lambda k: (-importances.get(k, -1.0), k))
    tables = ablation_tables(study)
    if predictions:
        pred_sec, pred = predictions_section(study, storage_url, artifacts=artifacts, cache_dir=cache_dir)
    else:
        pred_sec, pred = Section("predictions", "Predictions of the best model", f"{N_FACES} validation faces."), None
        pred_sec.note("skipped (--no-predictions).")
    df = trials_table(study)
    sections = [
        summary_section(study, facts),
        figures.history_section(study, target, name),
        importances_sec,
        figures.parallel_section(study, target, name, params),
        figures.slice_section(study, target, name, params),
        figures.contour_section(study, target, name, importances),
        figures.learning_curves_section(study, best.number if best else None),
        figures.best_trial_section(best),
        ablations_section(study, tables, name),
        figures.pareto_section(study),
        figures.cost_section(study),
        pred_sec,
        trials_section(df),
    ]
    assert tuple(s.id for s in sections) == SECTION_IDS
    page = render_page(f"agesearch report: {study.study_name}", subtitle(facts["n_trials"], facts["meta"]), sections)
    text = summarize(study) + "\n" + terminal_tables(study, tables)
    return ReportResult(page, tables, df, text, pred, time.perf_counter() - start)


def write_report(result: ReportResult, out: Path) -> Path:
    """Write the page atomically, so a browser reloading it never sees half a file."""
    return write_page(result.html, Path(out))


def write_csv(result: ReportResult, out: Path) -> Path:
    """Every trial as CSV, written atomically."""
    from agesearch.search.files import write_text

    return write_text(out, result.trials.to_csv(index=False))
