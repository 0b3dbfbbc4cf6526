"""`agesearch report`: the HTML sections, the CSV, the terminal tables, ablation tables, edge cases."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import math
import re
import time
from html.parser import HTMLParser

import optuna
import pytest
from optuna.trial import TrialState
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from report_study import hand_made_study, median

from agesearch.search.cli import main
from agesearch.search.report import SECTION_IDS, ablation_tables
from agesearch.search.report.predictions import spread_faces
from agesearch.search.report.tables import DERIVED_KNOBS, terminal_tables
from agesearch.search.report.summary import summarize


class Page(HTMLParser):
    """Element ids, image sources and script tags of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.script_srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script" and a.get("src"):
            self.script_srcs.append(a["src"])


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report(finished):
    files = finished
    csv_path = files.root / "trials.csv"
    rc, out, err = run_cli("report", "--study", files.name, "--storage", files.url, "--csv", str(csv_path))
    assert rc == 0, err
    html_path = files.root / "studies" / f"{files.name}-report.html"  # the default: next to the study file
    study = optuna.load_study(study_name=files.name, storage=files.url)
    return {"files": files, "out": out, "html": html_path.read_text(), "csv": csv_path, "study": study, "html_path": html_path}


def test_report_html_has_every_section(report):
    page = Page()
    page.feed(report["html"])
    assert set(SECTION_IDS) <= page.ids
    for plot in ("plot-history", "plot-importances", "plot-parallel", "plot-slice-0", "plot-contour", "plot-learning-curves", "plot-best-trial", "plot-predictions"):
        assert plot in page.ids, plot


def test_report_html_is_self_contained(report):
    page = Page()
    page.feed(report["html"])
    assert page.script_srcs == []  # nothing to fetch: opens offline
    assert report["html"].count("* plotly.js v") == 1  # plotly.js embedded exactly once


def test_report_predictions_show_twenty_faces_that_match_the_best_trial(report, cache_dir):
    from PIL import Image

    page = Page()
    page.feed(report["html"])
    faces = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(faces) == 20
    img = Image.open(io.BytesIO(base64.b64decode(faces[0].split(",", 1)[1])))
    assert img.size == (32, 32)
    section = report["html"].split('id="predictions"', 1)[1]
    assert len(re.findall(r"pred \d+ y", section)) == 20 and len(re.findall(r"true \d+ y", section)) == 20
    # The model is the best trial's artifact, named by its trial (never "#?"), and it is that
    # trial's best epoch: its val MAE, recomputed from the saved weights in years, is the one
    # the search recorded.
    best = report["study"].best_trial
    assert f"Model of trial #{best.number} (<code>artifact " in section and "#?" not in section
    shown = float(re.search(r"age MAE <b>([\d.]+)</b> years", section).group(1))
    assert shown == pytest.approx(best.user_attrs["val_age_mae"], rel=0.02, abs=0.05)
    # The faces cover every age decade of the val split and both genders, not the first 20.
    from agesearch.search.data.study_data import study_dataset

    ds, split = study_dataset(report["study"].user_attrs["agesearch"], cache_dir=cache_dir)
    captions = re.findall(r'true (\d+) y, ([MF])</span>', section)
    assert {int(a) // 10 for a, _ in captions} == {int(a) // 10 for a in ds.ages[split.val]}
    assert {g for _, g in captions} == {"M", "F"}


def test_report_predictions_have_a_table_per_decade_gender_and_race_on_val(report, cache_dir):
    from agesearch.search.data.images import RACES
    from agesearch.search.data.study_data import study_dataset

    section = report["html"].split('id="predictions"', 1)[1].split("</section>", 1)[0]
    table = section.split('id="groups"', 1)[1]
    ds, split = study_dataset(report["study"].user_attrs["agesearch"], cache_dir=cache_dir)
    assert f"By group, on the {len(split.val)} validation images (the report shows the validation split only" in table
    cell = lambda *texts: r"\s*".join(f"<td>{re.escape(str(t))}</td>" for t in texts)  # noqa: E731
    # Counts from the file names (AGE_GENDER_RACE_STAMP): every race, both genders, each decade of the val split.
    labels = [n.split("_") for n in (ds.names[i] for i in split.val)]
    for code, name in enumerate(RACES):
        assert re.search(cell("race", name, sum(int(l[2]) == code for l in labels)), table), name
    for code, name in enumerate(("male", "female")):
        assert re.search(cell("gender", name, sum(int(l[1]) == code for l in labels)), table), name
    for decade in sorted({int(l[0]) // 10 for l in labels}):
        assert re.search(cell("decade", f"{10 * decade}-{10 * decade + 9}", sum(int(l[0]) // 10 == decade for l in labels)), table)
    assert "few faces (&lt; 30)" in table and '<p class="note">Few faces (fewer than 30) in ' in table


def _state_counts(study) -> str:
    """"complete C, pruned P, fail F" of the study. The shared study's search may have its cost cap
    refuse a draw (PRUNED, never trained) besides the pruned and the failed trial report_study adds."""
    n = {s: sum(t.state == s for t in study.trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    assert n[TrialState.COMPLETE] >= 3 and n[TrialState.PRUNED] >= 1 and n[TrialState.FAIL] >= 1
    return f"complete {n[TrialState.COMPLETE]}, pruned {n[TrialState.PRUNED]}, fail {n[TrialState.FAIL]}"


def test_report_learning_curves_mark_the_pruned_trial(report):
    # the one pruned after an epoch of training (a draw refused by the cost cap has no curve)
    pruned = [t for t in report["study"].trials if t.state == TrialState.PRUNED and "pruned_at_epoch" in t.user_attrs]
    assert pruned
    curves = report["html"].split('id="plot-learning-curves"', 1)[1].split("</script>", 1)[0]
    assert f"#{pruned[0].number} pruned" in curves
    assert '"dash":"dot"' in curves


def test_report_csv_has_one_row_per_trial(report):
    with report["csv"].open() as f:
        rows = list(csv.DictReader(f))
    trials = report["study"].trials
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    assert [r["state"] for r in rows] == [t.state.name for t in trials]
    for r, t in zip(rows, trials, strict=True):
        if t.state == TrialState.COMPLETE:
            assert float(r["value"]) == pytest.approx(t.value)
            assert float(r["user_attrs_val_age_mae"]) == pytest.approx(t.user_attrs["val_age_mae"])
        for k, v in t.params.items():
            assert r[f"params_{k}"] == str(v)
    assert any(r["user_attrs_fail_reason"] == "ValueError: loss is NaN" for r in rows)


def test_report_terminal_tables_match_the_study(report):
    study, out = report["study"], report["out"]
    trials = study.trials
    assert f"study {study.study_name}: {len(trials)} trials ({_state_counts(study)})" in out
    assert f"#{study.best_trial.number} value {study.best_value:.4f}" in out
    # every ablation row printed is the study's own count of finished trials with that value
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    checked = 0
    for knob in ("pooling", "head", "block_order", "kernel_size"):
        values = {t.params[knob] for t in finished}
        if len(values) < 2:
            continue
        checked += 1
        block = out.split("\n" + knob + " ", 1)[1].split("\n\n", 1)[0]
        for value in values:
            with_value = [t for t in finished if t.params[knob] == value]
            row = re.search(rf"^{re.escape(str(value))}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", block, re.M)
            assert row, (knob, value, block)
            assert [int(x) for x in row.groups()] == [
                len(with_value),
                sum(t.state == TrialState.COMPLETE for t in with_value),
                sum(t.state == TrialState.PRUNED for t in with_value),
                sum(t.state == TrialState.FAIL for t in with_value),
            ]
    assert checked, "the finished study varies none of the knobs: the ablation rows went unchecked"
    assert "report: " in out and "csv: 6 trials" in out


def test_report_summary_names_data_split_and_best(report):
    summary = report["html"].split('id="summary"', 1)[1].split("</section>", 1)[0]
    best = report["study"].best_trial
    assert "synthetic (200 images, 32 px)" in summary
    assert "[0.7, 0.15, 0.15]" in summary
    assert f"#{best.number}: value {best.value:.4f}" in summary
    assert f"{best.user_attrs['val_gender_accuracy']:.3f}" in summary
    assert _state_counts(report["study"]) in summary


# --------------------------------------------------------------------------- ablation tables


@pytest.fixture
def hand(tmp_path):
    url = f"sqlite:///{tmp_path / 'hand.db'}"
    return url, hand_made_study(url, "hand")


def test_ablation_tables_answer_each_knob(hand):
    url, study = hand
    tables = ablation_tables(study)
    assert set(tables) == {"dropout", "optimizer", "lr"}
    # discrete knob: one row per value, in numeric order, with the study's own medians
    dropout = tables["dropout"]
    assert list(dropout.index) == ["0.4", "0.5", "0.6", "0.7"]
    for value in (0.4, 0.5, 0.6, 0.7):
        ts = [t for t in study.trials if t.params["dropout"] == value]
        row = dropout.loc[str(value)]
        assert row["trials"] == len(ts)
        assert row["best"] == pytest.approx(min(t.value for t in ts))
        assert row["median"] == pytest.approx(median([t.value for t in ts]))
        assert row["age_mae"] == pytest.approx(median([t.user_attrs["val_age_mae"] for t in ts]))
    # categorical: ordered by median, best first
    opt = tables["optimizer"]
    assert list(opt["median"]) == sorted(opt["median"])
    # log-scaled continuous knob: four ranges of the values really sampled, low to high
    lr = tables["lr"]
    assert len(lr) == 4 and lr["trials"].sum() == len(study.trials)
    assert lr.index[0].startswith("0.0001 –")


@pytest.mark.parametrize(
    "knob, value, row",
    [
        # trials, complete, pruned, failed, best, median objective, median age MAE, median accuracy:
        # worked out by hand from hand_made_study's formula (trial i: dropout i % 4, optimizer i % 2,
        # MAE 10 + i, objective MAE / 15 + (1 - accuracy) / 0.5)
        ("dropout", "0.4", (2, 2, 0, 0, 0.7667, 1.1300, 12.0, 0.835)),  # trials 0 and 4
        ("dropout", "0.5", (2, 2, 0, 0, 1.4733, 1.4867, 13.0, 0.690)),  # 1 and 5
        ("dropout", "0.6", (2, 2, 0, 0, 1.2867, 1.3833, 14.0, 0.775)),  # 2 and 6
        ("dropout", "0.7", (2, 2, 0, 0, 1.0267, 1.2700, 15.0, 0.865)),  # 3 and 7
        ("optimizer", "adam", (4, 4, 0, 0, 0.7667, 1.3833, 13.0, 0.805)),  # the even trials
        ("optimizer", "rmsprop", (4, 4, 0, 0, 1.0267, 1.4867, 14.0, 0.780)),  # the odd ones
    ],
)
def test_terminal_tables_of_the_hand_made_study_give_the_rows_worked_out_by_hand(hand, knob, value, row):
    _, study = hand
    text = terminal_tables(study, ablation_tables(study))
    block = text.split("\n" + knob + " ", 1)[1].split("\n\n", 1)[0]
    found = re.search(rf"^{re.escape(value)}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", block, re.M)
    assert found, block
    assert [int(x) for x in found.groups()[:4]] == list(row[:4])
    assert [float(x) for x in found.groups()[4:]] == pytest.approx(row[4:], abs=6e-4)


def test_terminal_tables_put_the_better_median_first_for_a_categorical_knob(hand):
    text = terminal_tables(hand[1], ablation_tables(hand[1]))
    block = text.split("\noptimizer ", 1)[1].split("\n\n", 1)[0]
    assert block.index("\nadam ") < block.index("\nrmsprop ")


def test_ablation_tables_answer_derived_knobs_only_when_they_changed(tmp_path):
    # The hand-made study keeps one filter list: no table for it.
    label = DERIVED_KNOBS["filters"]
    study = hand_made_study(f"sqlite:///{tmp_path / 'fixed.db'}", "fixed")
    assert label not in ablation_tables(study)
    # The same study with two filter lists: a table with one row per list and its counts.
    varied = hand_made_study(f"sqlite:///{tmp_path / 'varied.db'}", "varied")
    for i, filters in enumerate([[16, 32], [16, 32], [32, 64]]):
        varied.add_trial(create_trial(value=1.0 + i, params={"dropout": 0.5}, distributions={"dropout": FloatDistribution(0.4, 0.7, step=0.1)},
                                      user_attrs={"model_config": {"filters": filters}, "objective": 1.0 + i}))
    table = ablation_tables(varied)[label]
    # the hand-made study's 8 trials used 32-64 too
    assert (table.loc["16-32", "trials"], table.loc["32-64", "trials"], table.loc["16-32", "best"]) == (2, 9, 1.0)


def test_ablation_tables_show_stepped_floats_on_their_step(tmp_path):
    study = optuna.create_study(study_name="step", storage=f"sqlite:///{tmp_path / 'step.db'}")
    dist = FloatDistribution(0.05, 0.3, step=0.05)
    values = [0.05 + 0.05 * k for k in range(6)]  # as Optuna makes them: 0.15000000000000002, ...
    assert any(len(repr(v)) > 6 for v in values)
    for i, v in enumerate(values):
        study.add_trial(create_trial(value=float(i), params={"dropout": v}, distributions={"dropout": dist}))
    table = ablation_tables(study)["dropout"]
    assert list(table.index) == ["0.05", "0.1", "0.15", "0.2", "0.25", "0.3"]
    text = terminal_tables(study, {"dropout": table})
    assert "0.15 " in text and "0000000" not in text


# --------------------------------------------------------------------------- other studies


def test_report_multi_objective_draws_the_pareto_front(tmp_path):
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = hand_made_study(url, "multi", multi=True)
    rc, out, err = run_cli("report", "--study", "multi", "--storage", url, "--out", str(tmp_path / "m.html"), "--no-predictions")
    assert rc == 0, err
    html_text = (tmp_path / "m.html").read_text()
    page = Page()
    page.feed(html_text)
    assert set(SECTION_IDS) <= page.ids and "plot-pareto" in page.ids
    pareto = html_text.split('id="pareto"', 1)[1].split("</section>", 1)[0]
    front = {t.number for t in study.best_trials}
    listed = {int(n) for n in re.findall(r"<tr>\s*<td>(\d+)</td>", pareto)}
    assert listed == front
    assert "plot-learning-curves" in page.ids  # from each trial's history: no intermediate values here


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_report_on_running_study_leaves_trials_running(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    hand_made_study(url, "live", n=4)
    # A trial whose worker holds a heartbeat storage; after the grace period it is stale, and
    # a reader that failed stale trials would turn it FAIL.
    writer = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    running = optuna.load_study(study_name="live", storage=writer).ask()
    running.report(1.0, step=0)
    time.sleep(2.2)
    rc, out, err = run_cli("report", "--study", "live", "--storage", url, "--out", str(tmp_path / "live.html"), "--no-predictions")
    assert rc == 0, err
    assert "running 1" in out
    assert optuna.load_study(study_name="live", storage=url).trials[-1].state == TrialState.RUNNING


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-file", r"^agesearch: error: no study database at .*nope\.db; run `agesearch run --study nope \.\.\.` first\n$"),
        ("missing-study", r"^agesearch: error: no study named 'nope' in sqlite:///.*other\.db \(studies there: other\)\n$"),
        ("empty-study", r"^agesearch: error: study 'nope' in sqlite:///.*nope\.db has no trials yet; nothing to report\n$"),
    ],
)
def test_report_without_trials_says_so_in_one_line(tmp_path, setup, message):
    db = tmp_path / ("other.db" if setup == "missing-study" else "nope.db")
    if setup == "missing-study":
        optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    if setup == "empty-study":
        optuna.create_study(study_name="nope", storage=f"sqlite:///{db}")
    rc, out, err = run_cli("report", "--study", "nope", "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "r.html"))
    assert rc == 2
    assert re.match(message, err), err
    assert not (tmp_path / "r.html").exists()


def test_report_without_saved_model_still_writes_the_page(tmp_path):
    url = f"sqlite:///{tmp_path / 'hand.db'}"
    hand_made_study(url, "hand")
    rc, out, err = run_cli("report", "--study", "hand", "--storage", url, "--out", str(tmp_path / "h.html"))
    assert rc == 0, err
    predictions = (tmp_path / "h.html").read_text().split('id="predictions"', 1)[1].split("</section>", 1)[0]
    assert "no saved model" in predictions


# --------------------------------------------------------------------------- the ablate space


def test_ablate_grid_covers_every_combination_once():
    from agesearch.spaces import get_space, space_grid

    space = get_space("ablate")
    grid = space_grid("ablate")(32)
    assert math.prod(len(v) for v in grid.values()) == 320
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = set()

    def objective(trial):
        model, train = space(trial, 32)
        seen.add((model.filters, model.block_order, model.age_dense, model.dense_dropout, train.optimizer, model.age_activation))
        return 0.0

    study.optimize(objective)  # GridSampler stops the study when the grid is done
    assert len(study.trials) == len(seen) == 320


@pytest.mark.parametrize(("image_size", "lists"), [(16, 4), (32, 5), (128, 5)])
def test_ablate_grid_leaves_out_filter_lists_too_deep_for_the_image(image_size, lists):
    from agesearch.spaces import space_grid

    assert len(space_grid("ablate")(image_size)["filters"]) == lists


# The write-ups' questions at 16 px, written out (not read from spaces/ablate.py): four poolings at
# most, so the five-block list is left out; 4 * 2 * 2 * 4 * 2 * 2 = 256 points.
ABLATE_GRID_16 = {
    "filters": ["128-64-32", "128-64-32-16", "128-64-32-32", "128-64-64-32"],
    "block_order": ["conv_bn_relu", "conv_relu_bn"],
    "dense": [512, 1024],
    "dropout": [0.4, 0.5, 0.6, 0.7],
    "optimizer": ["rmsprop", "adam"],
    "age/activation": ["linear", "relu"],
}


def test_run_ablate_uses_the_grid_sampler(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path / 'abl.db'}"
    rc, out, err = run_cli("run", "--space", "ablate", "--storage", url, "--n-trials", "2", "--epochs", "1", "--image-size", "16", "--limit", "60")
    assert rc == 0, err
    assert "sampler grid" in out
    trials = optuna.load_study(study_name="ablate", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    # Optuna's GridSampler drew them (it records its grid and the point's id in each trial), over
    # exactly this grid, two different points.
    for t in trials:
        assert t.system_attrs["search_space"] == ABLATE_GRID_16
        assert 0 <= t.system_attrs["grid_id"] < 256
        assert set(t.params) == set(ABLATE_GRID_16) and all(t.params[k] in ABLATE_GRID_16[k] for k in ABLATE_GRID_16)
    assert trials[0].system_attrs["grid_id"] != trials[1].system_attrs["grid_id"] and trials[0].params != trials[1].params
    # and each point is the model that trained: the configs recorded with the trial
    for t in trials:
        model, train = t.user_attrs["model_config"], t.user_attrs["train_config"]
        assert model["filters"] == [int(f) for f in t.params["filters"].split("-")] and model["shared_blocks"] == len(model["filters"])
        assert (model["block_order"], model["age_dense"], model["gender_dense"]) == (t.params["block_order"], t.params["dense"], t.params["dense"])
        assert (model["dense_dropout"], model["age_activation"], train["optimizer"]) == (t.params["dropout"], t.params["age/activation"], t.params["optimizer"])


# --------------------------------------------------------------------------- presets vs the search


def _trial(value: float, mae: float, acc: float, **attrs):
    return create_trial(
        value=value,
        params={"dropout": 0.5},
        distributions={"dropout": FloatDistribution(0.4, 0.7, step=0.1)},
        user_attrs={"objective": value, "val_age_mae": mae, "val_gender_accuracy": acc, **attrs},
    )


@pytest.fixture
def with_presets():
    study = optuna.create_study(study_name="presets")
    by_decade = {"10-19": 5.2, "0-9": 4.1, "100-109": 30.0, "20-29": 6.25}
    for t in (
        _trial(0.80, 8.0, 0.85, preset="write_up_b"),
        _trial(0.90, 9.0, 0.84, preset="write_up_a"),
        _trial(0.70, 7.5, 0.87, val_age_mae_by_decade=by_decade),
        _trial(0.95, 9.5, 0.80),
    ):
        study.add_trial(t)
    return study


def test_summary_puts_the_best_preset_next_to_the_best_searched_trial(with_presets):
    text = summarize(with_presets)
    assert "best preset:   #0 (write_up_b): objective 0.8000, val age MAE 8.00 y, val gender acc 0.850" in text
    assert "best searched: #2: objective 0.7000, val age MAE 7.50 y, val gender acc 0.870" in text
    assert "searched - preset: objective -0.1000, val age MAE -0.50 y, val gender acc +0.020 (the search beats the best preset)" in text


def test_summary_prints_the_best_models_mae_per_decade_in_decade_order(with_presets):
    text = summarize(with_presets)
    assert "val age MAE by decade (#2, years): 0-9 4.1, 10-19 5.2, 20-29 6.2, 100-109 30.0" in text


def test_summary_without_presets_or_decades_prints_neither(hand):
    text = summarize(hand[1])
    assert "best trial:" in text and "preset" not in text and "by decade" not in text


def test_summary_with_only_presets_says_no_searched_trial_yet():
    study = optuna.create_study()
    study.add_trial(_trial(0.8, 8.0, 0.85, preset="write_up_b"))
    assert "best searched: no searched trial has completed yet" in summarize(study)


def test_report_summary_section_shows_the_comparison_and_decades(with_presets, tmp_path):
    from agesearch.search.report import build_report

    page = build_report(with_presets, predictions=False).html
    summary = page.split('id="summary"', 1)[1].split("</section>", 1)[0]
    assert "<th>best preset</th><td>#0 (write_up_b): objective 0.8000" in summary
    assert "<th>searched - preset</th><td>objective -0.1000, val age MAE -0.50 y" in summary
    assert "<th>val age MAE by decade</th><td>0-9 4.1, 10-19 5.2" in summary


def test_spread_faces_covers_every_decade_and_both_genders():
    import numpy as np

    ages = np.array([10, 11, 12, 13] * 10 + [25, 35, 45, 55, 65, 75, 85])  # 40 children first
    genders = np.array([0, 1] * 20 + [0, 1, 0, 1, 0, 1, 0])
    picked = spread_faces(ages, genders, 20)
    assert len(picked) == len(set(picked)) == 20
    assert {int(ages[i]) // 10 for i in picked} == set(range(1, 9))
    assert {int(genders[i]) for i in picked if ages[i] < 20} == {0, 1}
