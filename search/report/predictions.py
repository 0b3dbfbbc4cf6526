"""Predictions of the best model on the study's own validation images.

The model comes from the study's artifact store (the best trial that still has one) or, for a
study made before artifacts, from `studies/<study>/best.keras`; the images and split are
reloaded from the study's metadata. Metrics come from `search/training/metrics.py`, the same functions
evaluate and export use. Drawn by hand (no library offers them): the face grid, the
predicted-vs-true scatter and the MAE per age decade, and the table per age decade, gender and
race (`group_metrics`, as the export's model card has it on test).

Like the rest of the report, everything here is on the validation split: the test split waits
for `agesearch export`, whose model cards hold the same table on test.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import optuna

from agesearch.search.report.page import Section, fig_html
from agesearch.search.store.study import META_KEY

N_FACES = 20
SEX = {0: "M", 1: "F"}


def _png_base64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def spread_faces(ages: np.ndarray, genders: np.ndarray, n: int = N_FACES) -> list[int]:
    """`n` indices spread over age decades and both genders, youngest decade first.

    Round-robin over the (decade, gender) groups, taking each group's images in their order:
    the grid shows every decade and both genders that the split holds, not the first 20 faces
    (which in a sorted folder are 20 children of one age).
    """
    decades = (np.asarray(ages) // 10).astype(int)
    groups = [list(np.flatnonzero((decades == d) & (np.asarray(genders) == g))) for d in np.unique(decades) for g in (0, 1)]
    groups = [g for g in groups if g]
    picked: list[int] = []
    while len(picked) < min(n, len(ages)):
        for g in groups:
            if g and len(picked) < n:
                picked.append(int(g.pop(0)))
    return sorted(picked, key=lambda i: (decades[i], genders[i], i))


def _load(study: optuna.Study, storage_url: str | None, artifacts: str | None, cache_dir: Path | None, sec: Section):
    """(model ref, dataset, split) or None with a note saying what is missing."""
    from agesearch.search.store.artifacts import find_model

    ref = find_model(study, storage_url, spec=artifacts) if storage_url else None
    if ref is None:
        sec.note("no saved model: each complete trial's model is uploaded to the study's artifact store (default studies/<study>-artifacts/); none is there yet.")
        return None
    meta = study.user_attrs.get(META_KEY)
    if not meta:
        sec.note("the study has no agesearch metadata, so its images cannot be found again.")
        return None
    try:
        from agesearch.search.data.study_data import study_dataset

        ds, split = study_dataset(meta, cache_dir=cache_dir)
    except Exception as e:  # the data moved or changed since the search: the rest of the report stands
        sec.note(f"cannot reload the study's images: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    return ref, ds, split


def _faces_html(images, pred_age, p_female, true_age, true_gender, picked: list[int]) -> str:
    # By hand: a grid of faces with captions is plain HTML; the images are inline PNGs so the
    # file stays self-contained.
    cells = []
    for i in picked:
        pred_g = int(p_female[i] >= 0.5)
        ok = "ok" if pred_g == true_gender[i] else "bad"
        cells.append(
            '<figure class="face">'
            f'<img alt="validation face {i}" src="data:image/png;base64,{_png_base64(images[i])}">'
            f'<figcaption><span class="pred">pred {pred_age[i]:.0f} y, <span class="{ok}">{SEX[pred_g]}</span> '
            f'({p_female[i]:.2f})</span><br><span class="true">true {true_age[i]:.0f} y, {SEX[int(true_gender[i])]}</span></figcaption></figure>'
        )
    return '<div class="faces" id="faces">' + "".join(cells) + "</div>"


def _errors_figure(true_age, pred_age, right_gender, m: dict):
    # By hand: predicted-vs-true scatter and the per-decade error are our own arrays, not a study.
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = list(m["per_decade_mae"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=["predicted vs true age (validation)", "age MAE per decade (n above the bars)"], horizontal_spacing=0.1)
    colors = np.where(right_gender, "#1f77b4", "#d62728")
    fig.add_trace(go.Scatter(x=true_age, y=pred_age, mode="markers", marker=dict(color=colors, size=6, opacity=0.7), name="val images", hovertemplate="true %{x:.0f} y<br>pred %{y:.1f} y<extra></extra>"), row=1, col=1)
    hi = float(max(true_age.max(initial=1), pred_age.max(initial=1)))
    fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", line=dict(dash="dash", color="#888"), name="perfect"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=[m["per_decade_mae"][k] for k in labels], text=[f"n={m['per_decade_n'][k]}" for k in labels], textposition="outside", marker_color="#2ca02c", name="MAE per decade"), row=1, col=2)
    fig.update_xaxes(title_text="true age (years)", row=1, col=1)
    fig.update_yaxes(title_text="predicted age (years)", row=1, col=1)
    fig.update_xaxes(title_text="true age decade", row=1, col=2)
    fig.update_yaxes(title_text="MAE (years)", row=1, col=2)
    fig.update_layout(showlegend=False, title="Age errors of the best model (red dots: gender wrong)")
    return fig


def group_table_html(groups: dict, split: str) -> str:
    """The per-group table (decade, gender, race; each with its count), small groups marked."""
    import pandas as pd

    from agesearch.search.report.page import table_html
    from agesearch.search.training.metrics import group_rows

    few = groups["few_faces_below"]
    rows = [
        {"by": kind, "group": group, "faces": n, "age MAE (years)": mae, "gender accuracy": acc, "": ("no face" if n == 0 else f"few faces (< {few})") if small else ""}
        for kind, group, n, mae, acc, small in group_rows(groups)
    ]
    caption = (f"By group, on the {groups['n']} {split} images (the report shows the validation split only; the test split is for "
               f"`agesearch export`, whose model card has this table on test). Race and gender are UTKFace's labels.")
    warn = f'<p class="note">Few faces (fewer than {few}) in {html.escape(", ".join(groups["few"]))}: their numbers are rough.</p>' if groups["few"] else ""
    return f'<div id="groups"><h3>By age decade, gender and race</h3><p class="intro">{html.escape(caption)}</p>{table_html(pd.DataFrame(rows), index=False)}{warn}</div>'


def predictions_section(study: optuna.Study, storage_url: str | None, *, artifacts: str | None = None, cache_dir: Path | None = None) -> tuple[Section, dict | None]:
    """20 val faces across decades and genders, predicted vs true, MAE per decade.

    Returns the section and the numbers shown, or None (with a note in the section) when there
    is no model or the data cannot be found again.
    """
    from agesearch.search.training.metrics import age_gender_metrics, group_metrics, predict_age_gender

    sec = Section("predictions", "Predictions of the best model", f"{N_FACES} validation faces across age decades and both genders: predicted age, gender (P(female) in brackets; green right, red wrong) and the truth.")
    loaded = _load(study, storage_url, artifacts, cache_dir, sec)
    if loaded is None:
        return sec, None
    ref, ds, split = loaded
    images = ds.images[split.val]
    try:
        from agesearch.models.inference import load_model

        pred_age, p_female = predict_age_gender(load_model(ref.path), images)
    except Exception as e:  # a file from another Keras version or a half-copied one: the rest of the report stands
        sec.note(f"cannot use {ref.path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return sec, None
    true_age, true_gender = ds.ages[split.val].astype(float), ds.genders[split.val].astype(int)
    m = age_gender_metrics(true_age, true_gender, pred_age, p_female)
    source = f"artifact {ref.artifact_id} ({ref.filename})" if ref.artifact_id else str(ref.path)
    who = f"Model of trial #{ref.trial}" if ref.trial is not None else "The search's kept model (its trial is not recorded)"
    sec.body.append(
        f"<p>{html.escape(who)} (<code>{html.escape(source)}</code>) on the {len(true_age)} validation images: "
        f"age MAE <b>{m['age_mae']:.2f}</b> years, gender accuracy <b>{m['gender_accuracy']:.3f}</b>.</p>"
    )
    picked = spread_faces(true_age, true_gender)
    sec.body.append(_faces_html(images, pred_age, p_female, true_age, true_gender, picked))
    sec.body.append(fig_html(_errors_figure(true_age, pred_age, (p_female >= 0.5) == true_gender, m), "plot-predictions", 440))
    groups = group_metrics(true_age, true_gender, ds.races[split.val], pred_age, p_female)
    sec.body.append(group_table_html(groups, "validation"))
    return sec, {"trial": ref.trial, "val_age_mae": m["age_mae"], "val_gender_accuracy": m["gender_accuracy"], "faces": len(picked), "per_decade_mae": m["per_decade_mae"],
                 "by_group": groups}
