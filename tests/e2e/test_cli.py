from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import optuna
import pytest
from optuna.trial import TrialState

from agesearch.search.cli import main
from agesearch.models.config import TrainConfig
from agesearch.spaces import SPACES, SpaceEntry
from agesearch.models import ModelConfig
from conftest import run_cli
import report_study
from report_study import copy_study

TINY_RUN = ["--epochs", "2", "--image-size", "32", "--limit", "300"]
SHARED_RUN = report_study.RUN  # the settings of the session's finished search
USER_ATTRS = {"model_config", "train_config", "objective", "val_age_mae", "val_gender_accuracy", "best_epoch", "epochs_run", "seconds", "params", "history"}


def load(study: str, root: Path) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root / 'studies' / (study + '.db')}")


@pytest.fixture(scope="module")
def finished_study(finished, tmp_path_factory) -> Path:
    """A private copy of the session's finished search (report_study: the arch space, 4 trials,
    2 epochs, 32 px, 200 synthetic images, one draw refused by its FLOPs cap, plus a pruned and a
    failed trial added by hand)."""
    return copy_study(finished, tmp_path_factory.mktemp("e2e")).root


def searched(study: optuna.Study) -> list:
    """The trials `agesearch run` made (report_study adds a pruned and a failed one by hand)."""
    return [t for t in study.trials if "sampled_by" in t.user_attrs]


def test_run_writes_trials_with_curves_and_attrs_to_sqlite(finished_study):
    db = finished_study / "studies" / "rep.db"
    assert db.is_file()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    study = load("rep", finished_study)
    assert len(searched(study)) == 4
    meta = study.user_attrs["agesearch"]
    assert meta["image_size"] == 32 and meta["images"] == 200 and meta["split"] == [0.7, 0.15, 0.15]
    assert meta["space"] == "arch" and len(meta["fingerprint"]) == 16
    refused = [t for t in searched(study) if "refused" in t.user_attrs]
    assert len(refused) == 1 and refused[0].state == TrialState.PRUNED and not refused[0].intermediate_values
    for t in searched(study):
        if t in refused:
            continue
        assert t.state == TrialState.COMPLETE
        assert len(t.intermediate_values) >= 1
        assert list(t.intermediate_values) == list(range(len(t.intermediate_values)))
        assert USER_ATTRS <= set(t.user_attrs) or t.state == TrialState.PRUNED
        assert len(t.user_attrs["history"]["val_age_mae"]) == len(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(min(t.intermediate_values.values()))


def test_run_uploads_each_complete_trials_model_to_the_artifact_store(finished_study):
    from agesearch.search.store.artifacts import find_model, model_artifacts

    study = load("rep", finished_study)
    assert sorted(p.name for p in (finished_study / "studies").iterdir() if p.is_dir()) == ["rep-artifacts"]  # no best.keras
    assert [len(model_artifacts(t)) for t in study.trials] == [int(t.state == TrialState.COMPLETE) for t in study.trials]
    ref = find_model(study, f"sqlite:///{finished_study / 'studies' / 'rep.db'}")
    assert ref.trial == study.best_trial.number
    model = keras.saving.load_model(ref.path)
    assert model.output_names == ["age", "gender"] and model.input_shape == (None, 32, 32, 3)


def test_run_resumes_to_the_total_keeping_finished_trials(finished_study, capsys, monkeypatch):
    monkeypatch.chdir(finished_study)
    before = {t.number: (t.params, t.value) for t in load("rep", finished_study).trials}
    n = len(before)
    code, out, _ = run_cli(["run", "--space", "arch", "--study", "rep", "--n-trials", str(n + 1), *SHARED_RUN], capsys)
    assert code == 0
    assert f"{n} finished, 1 to run" in out
    trials = load("rep", finished_study).trials
    assert len(trials) == n + 1
    assert {t.number: (t.params, t.value) for t in trials[:n]} == before
    # Already at the total: nothing more runs.
    code, out, _ = run_cli(["run", "--space", "arch", "--study", "rep", "--n-trials", str(n + 1), *SHARED_RUN], capsys)
    assert code == 0 and f"{n + 1} finished, 0 to run" in out and len(load("rep", finished_study).trials) == n + 1


def test_run_prints_one_progress_line_per_trial(tmp_path, capsys, monkeypatch, synthetic_dir):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["run", "--space", "train", "--n-trials", "2", "--epochs", "1", "--image-size", "32", "--limit", "150"], capsys)
    assert code == 0
    lines = [l for l in out.splitlines() if l.startswith("trial ")]
    assert len(lines) == 2
    assert lines[0].split()[:3] == ["trial", "0", "COMPLETE"] and "best" in lines[0]


def test_report_summarises_the_study(finished_study, capsys, monkeypatch):
    monkeypatch.chdir(finished_study)
    code, out, _ = run_cli(["report", "--study", "rep"], capsys)
    assert code == 0
    study = load("rep", finished_study)
    best = study.best_trial
    assert f"study rep: {len(study.trials)} trials" in out
    assert f"#{best.number} value {best.value:.4f}" in out
    assert "top 10:" in out and "val_age_mae" in out


def test_run_resume_with_other_image_size_fails_cleanly(finished_study, capsys, monkeypatch):
    monkeypatch.chdir(finished_study)
    n = len(load("rep", finished_study).trials)
    code, _, err = run_cli(["run", "--space", "arch", "--study", "rep", "--n-trials", "9", "--epochs", "2", "--image-size", "48", "--limit", "200"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "study 'rep' was made with other settings (image_size: study has 32, this run 48)" in err
    assert len(load("rep", finished_study).trials) == n


def test_run_multi_objective_makes_a_two_direction_study(tmp_path, capsys, monkeypatch, synthetic_dir):
    monkeypatch.chdir(tmp_path)
    # The train space's preset and one NSGA-II draw (arch's random draws cost 4-20 s each here).
    code, out, _ = run_cli(["run", "--space", "train", "--objective", "multi", "--n-trials", "2", "--epochs", "1", "--image-size", "16", "--limit", "150", "--study", "pareto"], capsys)
    assert code == 0
    study = load("pareto", tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert "Pareto front" in out


def test_run_failing_trials_are_marked_fail_and_the_study_goes_on(tmp_path, capsys, monkeypatch, synthetic_dir):
    def exploding(trial, image_size):
        trial.suggest_int("k", 0, 3)
        model = ModelConfig(image_size=image_size, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), block_order="conv_relu")
        return model, TrainConfig(optimizer="sgd", learning_rate=1e12, age_loss="mse")

    monkeypatch.setitem(SPACES, "exploding", SpaceEntry(exploding))
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["run", "--space", "exploding", "--n-trials", "2", "--epochs", "2", "--image-size", "32", "--limit", "150"], capsys)
    assert code == 0
    trials = load("exploding", tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("NaN or infinite" in t.user_attrs["fail_reason"] for t in trials)
    assert out.count(" FAIL ") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/nowhere"], r"data folder not found: .*nowhere"),
        (["--data", "{tmp}/empty"], r"no UTKFace images in .*empty: no files"),
        (["--data", "{tmp}/junk"], r"no UTKFace images in .*junk: 2 files, none named"),
        (["--data", "{tmp}/corrupt"], r"no readable image in .*corrupt: 1 files could not be decoded"),
        (["--space", "nope"], r"unknown space 'nope'; known spaces: .*arch"),
        (["--storage", "notadb://x/y"], r"bad storage URL 'notadb://x/y'"),
        (["--storage", "sqlite:///{tmp}"], r"bad storage URL .* is not a file"),
        (["--storage", "sqlite:///{tmp}/afile/x.db"], r"bad storage URL .*: .*afile is a file, not a folder"),
        (["--max-flops", "0"], r"argument --max-flops: must be a positive number, got '0'"),
        (["--n-trials", "0"], r"argument --n-trials: must be a positive integer, got '0'"),
        (["--epochs", "two"], r"argument --epochs: must be a positive integer, got 'two'"),
        (["--image-size", "8"], r"argument --image-size: must be at least 16 pixels, got '8'"),
        (["--split", "0.5,0.5,0.5"], r"argument --split: must be three fractions"),
        (["--sampler", "grid"], r"argument --sampler: invalid choice: 'grid'"),
        (["--objective", "multi", "--pruner", "median"], r"--pruner median cannot be used with --objective multi"),
        (["--objective", "multi", "--sampler", "cmaes"], r"--sampler cmaes is single-objective"),
    ],
)
@pytest.mark.parametrize("executor", [[], ["--workers", "2"]], ids=["in-process", "ray"])
def test_run_bad_input_exits_2_with_one_line_and_no_study(tmp_path, capsys, monkeypatch, args, message, executor):
    """The same one line through both executors: every input is checked before either starts."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"x")
    (tmp_path / "junk" / "notes.txt").write_text("x")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "20_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"broken")
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--space", "arch", "--n-trials", "1", "--epochs", "1", "--image-size", "32", "--limit", "100"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args] + executor
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agesearch")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").glob("*.db"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "ghost"], r"no study database at studies/ghost.db"),
        (["--storage", "bogus"], r"bad storage URL 'bogus'"),
    ],
)
def test_report_missing_study_exits_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report", *args], capsys)
    assert code == 2
    assert __import__("re").search(message, err.strip()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()


def test_report_without_study_reads_the_only_one_and_names_them_when_several(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    report_study.hand_made_study("sqlite:///studies/hand.db", "hand", n=4)
    code, out, err = run_cli(["report", "--no-predictions"], capsys)
    assert code == 0, err
    assert "study hand: 4 trials" in out and (tmp_path / "studies" / "hand-report.html").is_file()

    report_study.hand_made_study("sqlite:///studies/other.db", "other", n=4)  # two files: which one?
    code, out, err = run_cli(["report", "--no-predictions"], capsys)
    assert code == 2 and out == ""
    assert err == "agesearch: error: pass --study NAME or --storage URL (study files in studies/: hand, other)\n"

    report_study.hand_made_study("sqlite:///studies/hand.db", "second", n=4)  # two studies in one file
    code, out, err = run_cli(["report", "--no-predictions", "--storage", "sqlite:///studies/hand.db"], capsys)
    assert code == 2
    assert err == "agesearch: error: pass --study NAME (studies in sqlite:///studies/hand.db: hand, second)\n"
    code, out, _ = run_cli(["report", "--no-predictions", "--storage", "sqlite:///studies/other.db"], capsys)
    assert code == 0 and "study other: 4 trials" in out


def _subcommands(parser) -> dict:
    """{'run': its parser, ..., 'data check': ...}: every (sub)command's parser."""
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _subcommands(sub)
                found.update({f"{name} {k}": v for k, v in inner.items()} if inner else {name: sub})
    return found


def test_study_name_is_another_spelling_of_study_wherever_study_is():
    from agesearch.search.cli import build_parser

    commands = _subcommands(build_parser())
    with_study = {name: p for name, p in commands.items() if any("--study" in a.option_strings for a in p._actions)}
    assert {"run", "report", "dashboard", "export", "evaluate"} <= set(with_study)
    for name, p in with_study.items():
        (action,) = [a for a in p._actions if "--study" in a.option_strings]
        assert action.option_strings == ["--study", "--study-name"] and action.dest == "study", name


def test_study_name_reaches_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report", "--study-name", "ghost"], capsys)
    assert code == 2 and "no study database at studies/ghost.db" in err


def test_help_shows_real_defaults_only(capsys):
    from agesearch.search.cli import build_parser

    for name, p in _subcommands(build_parser()).items():
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
    run_help = " ".join(_subcommands(build_parser())["run"].format_help().split())
    assert "--epochs EPOCHS most epochs per trial" in run_help and "(default: 30)" in run_help
    assert "after a third" not in run_help.split("--epochs EPOCHS")[1].split("--image-size")[0]  # the old pruner's warm-up
    assert "split fractions (default: 0.7,0.15,0.15)" in run_help
    assert "--seed SEED data seed" in run_help and "(default: 0)" in run_help  # 0 is a default, not "none"
    dash_help = " ".join(_subcommands(build_parser())["dashboard"].format_help().split())
    assert "TCP port (default: 8080)" in dash_help


def test_version_prints_the_installed_version_without_loading_frameworks(tmp_path):
    from importlib.metadata import version

    probe = "import sys\nfrom agesearch.search.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n" \
            "    print('exit', e.code, [m for m in ('keras', 'tensorflow', 'jax', 'torch', 'ray') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout == f"agesearch {version('agesearch')}\nexit 0 []\n", done.stdout + done.stderr
    done, _ = _installed(["--version"], tmp_path)
    assert done.returncode == 0 and done.stdout == f"agesearch {version('agesearch')}\n" and done.stderr == ""


def test_spaces_lists_every_space_with_ranges(capsys):
    code, out, _ = run_cli(["spaces", "--image-size", "64"], capsys)
    assert code == 0
    for name in ("arch:", "train:", "full:"):
        assert name in out
    from agesearch.spaces import describe_space

    depth = describe_space("arch", 64)["depth"]
    assert f"depth              {depth.low}..{depth.high}" in out
    assert "block_order        one of conv_bn_relu, conv_relu_bn, conv_relu" in out
    assert "learning_rate      0.0001..0.01 (log)" in out


def test_console_script_help_and_bad_space():
    exe = Path(sys.executable).parent / "agesearch"
    done = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--n-trials" in done.stdout and "--space" in done.stdout
    done = subprocess.run([exe, "run", "--space", "nope", "--data", "/nonexistent"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("agesearch: error: unknown space 'nope'")


JAX_RUN = textwrap.dedent(
    """
    import sys

    class NoTensorFlow:  # behave as a machine without TensorFlow installed
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("TensorFlow is not installed here")

    sys.meta_path.insert(0, NoTensorFlow())
    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.search.cli import main
    from agesearch.spaces import register_space

    @register_space("tiny")  # a small two-branch CNN: XLA compiles a preset for a minute on 2 cores
    def tiny(trial, image_size):
        model = ModelConfig(image_size=image_size, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_dense=16, gender_dense=16)
        return model, TrainConfig(learning_rate=trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True))

    code = main(["run", "--space", "tiny", "--n-trials", "1", "--epochs", "1", "--image-size", "16", "--limit", "120"])
    import keras
    print("BACKEND", keras.backend.backend(), "TF", "tensorflow" in sys.modules)
    sys.exit(code)
    """
)


@pytest.mark.slow
def test_run_on_jax_backend_without_tensorflow(tmp_path, synthetic_dir):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_RUN], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BACKEND jax TF False" in done.stdout
    study = load("tiny", tmp_path)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and 0 in trial.intermediate_values


AGESEARCH = Path(sys.executable).parent / "agesearch"  # the installed console script
# TensorFlow's C++ start-up lines that must never reach the user.
CHATTER = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "This TensorFlow binary")


def _installed(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    start = time.perf_counter()
    done = subprocess.run([str(AGESEARCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return done, time.perf_counter() - start


@pytest.mark.parametrize(
    "args, message, fast",
    [
        (["run", "--space", "nope"], r"unknown space 'nope'; known spaces: ", True),
        (["run", "--space", "arch", "--data", "/nonexistent"], r"data folder not found: /nonexistent", True),
        (["run", "--space", "arch", "--data", "{tmp}/junk"], r"no UTKFace images in .*junk: 1 files, none named", False),
        (["run", "--space", "arch", "--storage", "notadb://x/y"], r"bad storage URL 'notadb://x/y'", False),
        (["run", "--space", "arch", "--image-size", "8"], r"argument --image-size: must be at least 16 pixels", False),
        (["run", "--space", "arch", "--objective", "multi", "--pruner", "median"], r"--pruner median cannot be used with --objective multi", False),
        (["run", "--space", "arch", "--backbone-weights", "{tmp}/no.h5"], r"--backbone-weights: no such weights file", False),
        (["report", "--study", "ghost"], r"no study database at studies/ghost\.db", False),
        (["export", "--study", "ghost"], r"no study database at studies/ghost\.db", False),
        (["dashboard", "--storage", "bogus"], r"bad storage URL 'bogus'", False),
        (["evaluate", "--model", "{tmp}/none.keras", "--data", "synthetic"], r"no model file at .*none\.keras", True),
        (["evaluate", "--model", "{tmp}/model.h5", "--data", "synthetic"], r"model\.h5 is not a \.keras file", False),
        (["predict", "--model", "{tmp}/none.keras", "a.jpg"], r"no model file at .*none\.keras", False),
        (["data", "check", "--data", "{tmp}/nowhere"], r"data folder not found: .*nowhere", False),
        (["spaces", "--image-size", "x"], r"argument --image-size: must be a positive integer, got 'x'", False),
    ],
)
def test_installed_command_bad_input_is_one_line_exit_2_before_frameworks(tmp_path, args, message, fast):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    (tmp_path / "model.h5").write_bytes(b"x")
    done, seconds = _installed([a.replace("{tmp}", str(tmp_path)) for a in args], tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("agesearch"), done.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert done.stdout == ""
    if fast:  # answered before any framework loads (Keras alone takes ~3.5 s here)
        assert seconds < 2.0, f"{seconds:.2f}s"


def test_installed_command_that_loads_keras_prints_no_tensorflow_chatter(tmp_path):
    # A model file that exists but is not a Keras archive: the command gets as far as loading
    # Keras (and TensorFlow) and fails there, so its stderr holds everything the import printed.
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    done, _ = _installed(["predict", "--model", str(tmp_path / "broken.keras"), "a.jpg"], tmp_path)
    assert done.returncode == 2
    assert "tensorflow" in done.stderr.lower() or "keras" in done.stderr.lower() or "cannot load" in done.stderr
    assert not any(c in done.stderr for c in CHATTER), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_import_keras_quietly_keeps_real_stderr_lines(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys
        sys.modules.pop("keras", None)
        import builtins
        real_import = builtins.__import__
        said = []
        def noisy(name, *a, **k):  # a real warning printed on fd 2 during the import must survive
            if name == "keras" and not said:
                said.append(1)
                os.write(2, b"real problem on stderr\\n")
            return real_import(name, *a, **k)
        builtins.__import__ = noisy
        from agesearch.search.frameworks import import_keras_quietly
        import_keras_quietly()
        builtins.__import__ = real_import
        print("after", file=sys.stderr)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["real problem on stderr", "after"], done.stderr
