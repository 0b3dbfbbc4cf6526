from __future__ import annotations

import re
import warnings

import optuna
import pytest

from agesearch.models import build_model
from agesearch.models.presets import PRESETS, get_preset, preset_names
from agesearch.spaces import baseline_trials, get_space

NAMES = preset_names()


def test_presets_are_the_five_writeups():
    assert len(NAMES) == 5 and "deep-age-branch" in NAMES


def test_get_preset_unknown_lists_known():
    with pytest.raises(KeyError, match=r"unknown preset 'nope'; known presets: .*deep-age-branch"):
        get_preset("nope")


@pytest.mark.parametrize("name", NAMES)
def test_preset_builds_at_64_and_128_with_the_documented_parameter_count(name):
    preset = PRESETS[name]
    documented = int(re.search(r"Parameters at 64 px: ([\d,]+)", preset.configs.__doc__).group(1).replace(",", ""))
    assert build_model(preset.configs(64)[0]).count_params() == documented
    model = build_model(preset.configs(128)[0])
    assert model.output_shape == [(None, 1), (None, 1)]


def test_deep_age_branch_is_writeup_b():
    model, train = get_preset("deep-age-branch").configs(64)
    assert model.branch_filters("age") == (64, 64, 128, 256, 512) and model.branch_filters("gender") == (64, 128, 256)
    assert model.shared_convs == 2 and model.filters[0] == 64  # Conv 32 -> Conv 64 stem
    assert (model.l2, model.gender_l2) == (0.0, 1e-3)
    assert model.age_output == "years" and model.age_activation == "relu"
    names = [layer.name for layer in build_model(model).layers]
    assert names.index("shared_block1_conv0") < names.index("shared_block1_conv") and "age_block5_pool" in names
    assert (train.optimizer, train.learning_rate, train.age_loss, train.patience) == ("adam", 1e-3, "mae", 20)


@pytest.mark.parametrize(
    "space, expected",
    [
        ("arch", {"deep-age-branch"}),
        ("train", {"shared-trunk-128-64-32"}),
        ("cnn", set(NAMES)),
        ("full", set(NAMES)),
        ("ablate", set()),
    ],
)
def test_baseline_trials_are_the_presets_the_space_contains(space, expected):
    assert {name for name, _ in baseline_trials(space, 64)} == expected


def test_baseline_trials_leave_out_presets_too_deep_for_the_image():
    assert "deep-age-branch" not in {name for name, _ in baseline_trials("cnn", 32)}


def test_baseline_trials_by_name():
    assert [n for n, _ in baseline_trials("full", 64, ["deep-age-branch"])] == ["deep-age-branch"]
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        baseline_trials("full", 64, ["nope"])
    with pytest.raises(ValueError, match="preset 'three-conv-mse' is not a point of space 'arch' at 64 px"):
        baseline_trials("arch", 64, ["three-conv-mse"])


@pytest.mark.parametrize("space", ["arch", "train", "cnn", "full"])
def test_enqueued_preset_gives_back_its_configs_without_fallback(space):
    """The preset enqueued in a real study of the space samples back to the very same configs."""
    for name, params in baseline_trials(space, 64):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        study.enqueue_trial(params, user_attrs={"preset": name})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Optuna warns when a fixed value is outside a distribution
            trial = study.ask()
            model, train = get_space(space)(trial, 64)
        want_model, want_train = get_preset(name).configs(64)
        assert model == want_model
        assert train.to_dict() | {"epochs": 0, "patience": 0} == want_train.to_dict() | {"epochs": 0, "patience": 0}
        assert trial.user_attrs["preset"] == name


def test_presets_command_lists_parameter_counts_results_and_spaces(capsys):
    from conftest import run_cli

    code, out, err = run_cli(["presets", "--image-size", "64"], capsys)
    assert code == 0 and err == ""
    assert "deep-age-branch          2,644,994 params" in out
    assert "reported: val 6.95 y / 88 %; in spaces: arch, cnn, full" in out
    code, out, _ = run_cli(["presets", "--image-size", "16"], capsys)
    assert "deep-age-branch          does not fit" in out


def _preset_trials(storage: str, study: str) -> list[str]:
    return [t.user_attrs.get("preset") for t in optuna.load_study(study_name=study, storage=storage).trials]


def test_run_enqueues_the_presets_first_once_per_study(in_tmp, capsys):
    from conftest import run_cli

    common = ["run", "--space", "train", "--image-size", "16", "--epochs", "1", "--synthetic-count", "200", "--pruner", "none"]
    code, out, err = run_cli([*common, "--n-trials", "2"], capsys)
    assert code == 0, err
    assert "1 presets enqueued first" in out
    storage = "sqlite:///studies/train.db"
    assert _preset_trials(storage, "train") == ["shared-trunk-128-64-32", None]
    code, out, err = run_cli([*common, "--n-trials", "3"], capsys)  # a resume enqueues nothing again
    assert code == 0, err
    assert "presets enqueued" not in out
    assert _preset_trials(storage, "train") == ["shared-trunk-128-64-32", None, None]


def test_run_no_baselines_and_bad_baselines(in_tmp, capsys):
    from conftest import run_cli

    code, out, err = run_cli(["run", "--space", "train", "--image-size", "16", "--epochs", "1", "--synthetic-count", "200", "--n-trials", "1", "--no-baselines"], capsys)
    assert code == 0, err
    assert _preset_trials("sqlite:///studies/train.db", "train") == [None]
    code, out, err = run_cli(["run", "--space", "arch", "--image-size", "64", "--baselines", "three-conv-mse"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--baselines: preset 'three-conv-mse' is not a point of space 'arch' at 64 px" in err
    code, out, err = run_cli(["run", "--space", "arch", "--baselines", "nope"], capsys)
    assert code == 2 and "--baselines: unknown preset 'nope'; known presets:" in err
