"""`agesearch report`: the HTML sections, the CSV, the terminal tables, ablation tables, edge cases."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import re
import time
from html.parser import HTMLParser

import optuna
import pytest
from optuna.trial import TrialState
from report_study import finished_study, hand_made_study, median

from agesearch.search.cli import main
from agesearch.search.report import SECTION_IDS, ablation_tables


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
def report(tmp_path_factory, cache_dir):
    files = finished_study(tmp_path_factory.getbasetemp())
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


def test_report_predictions_show_twenty_faces_that_match_the_best_trial(report):
    from PIL import Image

    page = Page()
    page.feed(report["html"])
    faces = [s for s in page.images if s.startswith("data:image/png;base64,")]
    assert len(faces) == 20
    img = Image.open(io.BytesIO(base64.b64decode(faces[0].split(",", 1)[1])))
    assert img.size == (32, 32)
    section = report["html"].split('id="predictions"', 1)[1]
    assert len(re.findall(r"pred \d+ y", section)) == 20 and len(re.findall(r"true \d+ y", section)) == 20
    # The kept model is the best trial's best epoch: its val MAE, recomputed from the saved
    # weights in years, is the one the search recorded.
    best_number = json.loads((report["files"].root / "studies" / report["files"].name / "best.json").read_text())["trial"]
    recorded = report["study"].trials[best_number].user_attrs["val_age_mae"]
    shown = float(re.search(r"age MAE <b>([\d.]+)</b> years", section).group(1))
    assert shown == pytest.approx(recorded, rel=0.02, abs=0.05)


def test_report_learning_curves_mark_the_pruned_trial(report):
    pruned = [t for t in report["study"].trials if t.state == TrialState.PRUNED]
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
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    assert f"study {study.study_name}: {len(trials)} trials (complete {counts[TrialState.COMPLETE]}, pruned 1, fail 1)" in out
    assert f"#{study.best_trial.number} value {study.best_value:.4f}" in out
    # every ablation row printed is the study's own count of finished trials with that value
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    for knob in ("pooling", "head", "block_order", "kernel_size"):
        values = {t.params[knob] for t in finished}
        if len(values) < 2:
            continue
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
    assert "report: " in out and "csv: 6 trials" in out


def test_report_summary_names_data_split_and_best(report):
    summary = report["html"].split('id="summary"', 1)[1].split("</section>", 1)[0]
    best = report["study"].best_trial
    assert "synthetic (200 images, 32 px)" in summary
    assert "[0.7, 0.15, 0.15]" in summary
    assert f"#{best.number}: value {best.value:.4f}" in summary
    assert f"{best.user_attrs['val_gender_accuracy']:.3f}" in summary
    assert "complete 4, pruned 1, fail 1" in summary


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


@pytest.mark.parametrize("fixed_knob", ["filters (from config)"])
def test_ablation_tables_skip_knobs_that_never_changed(hand, fixed_knob):
    assert fixed_knob not in ablation_tables(hand[1])


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
    from agesearch.spaces import get_space

    space = get_space("ablate")
    grid = space.grid(32)
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
    from agesearch.spaces import get_space

    assert len(get_space("ablate").grid(image_size)["filters"]) == lists


def test_run_ablate_uses_the_grid_sampler(tmp_path, cache_dir):
    url = f"sqlite:///{tmp_path / 'abl.db'}"
    rc, out, err = run_cli("run", "--space", "ablate", "--storage", url, "--n-trials", "2", "--epochs", "1", "--image-size", "16", "--limit", "60")
    assert rc == 0, err
    assert "sampler grid" in out
    from agesearch.spaces.ablate import ablate_grid

    grid = ablate_grid(16)
    for t in optuna.load_study(study_name="ablate", storage=url).trials:
        assert all(t.params[k] in grid[k] for k in grid)
