"""The model card for people: a Markdown file beside the JSON card of every export.

The JSON card (`model.json`) is for machines; this one (`model.md`) says in words what the model
is for and what not, the data's terms, how it scored on the test split per age decade, gender
and race (with counts, and a warning where a group has few faces), how it was trained (the
searched and the trained image size and epochs) and, for an ensemble, its members and why each
got in. It is made from the JSON card alone (`markdown_card(card)`), so the two never disagree
and an old card's Markdown can be made again.
"""

from __future__ import annotations

from pathlib import Path

from agesearch.search.files import write_text
from agesearch.search.training.metrics import FEW_FACES, group_rows

UTKFACE_TERMS = (
    "UTKFace is available for non-commercial research purposes only; the copyright of its images "
    "belongs to their original owners. A model trained on it inherits those terms: use it for "
    "non-commercial research only."
)
SYNTHETIC_TERMS = ("Synthetic faces drawn by agesearch (`--data synthetic`): the data carries no licence restriction. They are drawn "
                   "shapes, not photos: a model trained on them tests the machinery and says nothing of real faces.")
OTHER_TERMS = "If this folder is not UTKFace but a set named like it, that set's own licence applies instead."
KIND_TITLES = {"decade": "By decade of true age", "gender": "By gender (UTKFace's label)", "race": "By race (UTKFace's label, codes 0-4)"}


def is_synthetic(data: dict) -> bool:
    return data.get("data") == "synthetic"


def data_terms(data: dict) -> str:
    """The terms of the data a model was trained on, in one paragraph (the cards' `data.terms`)."""
    return SYNTHETIC_TERMS if is_synthetic(data) else f"{UTKFACE_TERMS} {OTHER_TERMS}"


def _num(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def group_table(groups: dict) -> list[str]:
    """Markdown lines: one table per kind of group (decade, gender, race), each row with its count,
    age MAE and gender accuracy, a group with few faces marked; then the warning line."""
    few = groups.get("few_faces_below", FEW_FACES)
    lines = []
    rows = group_rows(groups)
    for kind, title in KIND_TITLES.items():
        mine = [r for r in rows if r[0] == kind]
        if not mine:
            continue
        lines += ["", f"**{title}**", "", "| group | faces | age MAE (years) | gender accuracy | |", "|---|---:|---:|---:|---|"]
        for _, group, n, mae, acc, is_few in mine:
            note = "no face in this split" if n == 0 else (f"few faces (< {few})" if is_few else "")
            lines.append(f"| {group} | {n} | {_num(mae)} | {_num(acc, '.3f')} | {note} |")
    if groups.get("few"):
        lines += ["", f"> **Warning:** few faces (fewer than {few}) in {', '.join(groups['few'])}: their numbers move a lot from one sample "
                  "of faces to another, and a group rare in this split is likely rare in the training split too."]
    return lines


def _intended_use(card: dict) -> list[str]:
    size = card["input"]["image_size"]
    lines = [
        "## What it is for",
        "",
        f"It estimates a face's apparent **age in years** and its **gender as UTKFace labels it** from one **aligned, cropped face image** "
        f"like UTKFace's (the face upright, centred and filling the square), given as RGB {size} x {size} pixels in the 0-255 range "
        "(the model rescales them itself; other sizes are resized by `agesearch predict` and `evaluate`). Outputs: `age` (years) and "
        "`gender` = P(female).",
        "",
        "- **Not for identifying anyone**, and not for any decision about a person (access, hiring, credit, policing, age checks, ...): "
        "its answer for one face can be years off (the MAE below is an average), and more so for some groups.",
        "- **Gender is binary here, as UTKFace labels it** (male / female, a label given to the photo). A face's apparent gender is not a "
        "person's gender, and the model knows nothing of how anyone identifies.",
        "- **Race** in the tables below is UTKFace's label of the photo (White, Black, Asian, Indian, Others), used only to show where the "
        "model errs more; the model neither takes nor predicts it.",
        "- A whole photo, a face at an angle, a small face in a large frame or another camera's look is not what it was trained on: crop and "
        "align the face first, and expect larger errors on data unlike the training set.",
    ]
    return lines


def _data(card: dict) -> list[str]:
    d = card["data"]
    sizes = d.get("split_sizes") or {}
    where = "synthetic faces" + (f" ({d['synthetic_count']} drawn)" if d.get("synthetic_count") else "") if is_synthetic(d) else f"`{d.get('data')}`"
    return [
        "## Data and its terms",
        "",
        f"Trained and tested on {where}: {d.get('images')} images (fingerprint `{d.get('fingerprint')}`), split "
        f"{sizes.get('train')} train / {sizes.get('val')} val / {sizes.get('test')} test (seed {d.get('seed')}, {d.get('split_method', 'random')}).",
        "",
        f"**Terms:** {d.get('terms') or data_terms(d)}",
    ]


def _metrics(card: dict) -> list[str]:
    m = card["test_metrics"]
    lines = ["## How it scored (test split)", ""]
    if not m["n"]:
        return lines + ["The study has no test split (its fraction is 0): no test metrics."]
    lines.append(f"On the {m['n']} test faces, which neither the search nor the training saw: age MAE **{m['age_mae']:.2f} years**, gender accuracy "
                 f"**{m['gender_accuracy']:.3f}**.")
    groups = card.get("test_metrics_by_group")
    if groups:
        lines += ["", "Per group (age MAE in years; gender accuracy as a share of the group's faces):"] + group_table(groups)
    cmp = card.get("side_by_side")
    if cmp and cmp.get("n"):
        a, b = cmp["best_single"], cmp["ensemble"]
        lines += ["", f"Beside the best single model on the same faces: {a['label']}: age MAE {a['age_mae']:.2f}, gender accuracy {a['gender_accuracy']:.3f}; "
                      f"this model ({b['label']}): age MAE {b['age_mae']:.2f}, gender accuracy {b['gender_accuracy']:.3f}."]
    return lines


def _size_epochs(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"{entry.get('image_size')} px, {entry.get('epochs')} epochs"


def _training_single(card: dict) -> list[str]:
    t, study = card["training"], card["study"]
    preset = f" (preset {study['preset']})" if study.get("preset") else ""
    return [
        "## How it was made",
        "",
        f"Trial {study['trial']}{preset} of study `{study['name']}`, retrained on {t['trained_on']} with seed {t['seed']}"
        + (" and horizontal-flip test-time augmentation" if card.get("tta") == "flip" else "") + ".",
        "",
        "| | image size and epochs |",
        "|---|---|",
        f"| searched at | {_size_epochs(t.get('searched'))} |",
        f"| trained at | {_size_epochs(t.get('trained'))} (ran {t.get('epochs_run')}, weights of epoch {t.get('weights_from_epoch')}) |",
        "",
        f"{t.get('params')} weights; age head `{card['model_config'].get('age_head', 'regression')}`.",
    ]


def _training_ensemble(card: dict) -> list[str]:
    e, d = card["ensemble"], card["data"]
    sel = e.get("selection")
    lines = [
        "## How it was made",
        "",
        f"An ensemble of {e['size']} member(s) of study `{card['study']['name']}` ({e['members_from']}): {e['combine']}.",
    ]
    if sel:
        lines.append(f"Members chosen by {sel['method']}; val objective {sel['best_single_val_objective']:.4f} (best single) -> {sel['val_objective']:.4f}; "
                     f"stopped: {sel['stopped']}.")
    lines += ["", "| member | weight | searched at | trained at | why it is in | test age MAE | test gender accuracy |", "|---|---:|---|---|---|---:|---:|"]
    for r in card["members"]:
        searched_epochs = (r.get("train_config") or {}).get("epochs")
        searched = {"image_size": d.get("image_size"), "epochs": searched_epochs}
        trained = (r.get("training") or {}).get("trained") or searched  # a stored model is the search's own
        tm = r["test_metrics"]
        name = f"trial {r['trial']}" + (f" (preset {r['preset']})" if r.get("preset") else "") + (f", seed +{r['seed_offset']}" if r.get("seed_offset") else "")
        why = str(r.get("why", "–")).replace("|", "/")
        lines.append(f"| {name} | {r.get('weight', 1)} | {_size_epochs(searched)} | {_size_epochs(trained)} | {why} | "
                     f"{_num(tm.get('age_mae') if tm['n'] else None)} | {_num(tm.get('gender_accuracy') if tm['n'] else None, '.3f')} |")
    return lines


def _files(card: dict) -> list[str]:
    lines = ["## Files", "", f"- `{card['model_file']}`: the Keras 3 model (`agesearch evaluate`/`predict` load it; agesearch's layers must be importable).",
             f"- `{Path(card['model_file']).with_suffix('.json').name}`: the card for machines (every number here, and more)."]
    for x in card.get("exports") or []:
        ins = ", ".join(f"`{i['name']}` {i['shape']} {i['dtype']}" for i in x.get("inputs", []))
        outs = ", ".join(f"`{o['name']}` {o['shape']}" for o in x.get("outputs", []))
        check = (f"checked with {x['checked_with']} on {x['checked_on']} test images: largest difference from the Keras model {x['max_abs_diff']:.2g}"
                 if x.get("max_abs_diff") is not None else f"not checked ({x.get('not_checked', 'no runtime')})")
        lines.append(f"- `{x['file']}`: {x['format']}, runs without agesearch or Keras; input {ins or '?'}; outputs {outs or '?'}; {check}.")
    return lines


def markdown_card(card: dict) -> str:
    """The Markdown card of a JSON card (a single model's or an ensemble's)."""
    ensemble = "ensemble" in card
    what = f"ensemble of {card['ensemble']['size']}" if ensemble else f"trial {card['study']['trial']}"
    lines = [
        f"# Model card: age and gender from a face crop ({card['study']['name']}, {what})",
        "",
        f"Made by agesearch on {card.get('created', '?')}. Keras {card.get('versions', {}).get('keras', '?')} ({card.get('versions', {}).get('backend', '?')}).",
        "",
        *_intended_use(card),
        "",
        *_data(card),
        "",
        *_metrics(card),
        "",
        *(_training_ensemble(card) if ensemble else _training_single(card)),
        "",
        *_files(card),
    ]
    return "\n".join(lines) + "\n"


def write_markdown(card: dict, path: Path) -> Path:
    """Write `markdown_card(card)` to `path` atomically."""
    return write_text(path, markdown_card(card))
