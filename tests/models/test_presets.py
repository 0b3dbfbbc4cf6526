from __future__ import annotations

import re
import warnings

import optuna
import pytest

from agesearch.models import build_model
from agesearch.models.presets import PRESETS, get_preset, preset_names
from agesearch.spaces import baseline_trials, get_space

NAMES = preset_names()
ALL_PRESETS = ["three-conv-mse", "deep-age-branch", "independent-branches", "double-conv-stem", "shared-trunk-128-64-32"]
# The presets that are points of each space at 64 px, written out (not read from baseline_trials).
PRESETS_IN_SPACE = {
    "arch": ["deep-age-branch"],
    "train": ["shared-trunk-128-64-32"],
    "cnn": ALL_PRESETS,
    "full": ALL_PRESETS,
    "ablate": [],
}
PRESET_POINTS = [(space, name) for space, names in PRESETS_IN_SPACE.items() for name in names]


def test_presets_are_the_five_writeups():
    assert NAMES == ALL_PRESETS


def test_get_preset_unknown_lists_known():
    with pytest.raises(KeyError, match=r"unknown preset 'nope'; known presets: .*deep-age-branch"):
        get_preset("nope")


# Counted by building each preset (Keras' count_params) when the table was written; a change to a
# preset or to the builder that changes the network shows here. The 64 px column is also in each
# preset's docstring and in `agesearch presets --image-size 64`.
PARAMETER_COUNTS = [
    ("three-conv-mse", 64, 2_264_770),
    ("three-conv-mse", 128, 8_556_226),
    ("deep-age-branch", 64, 2_644_994),
    ("deep-age-branch", 128, 4_414_466),
    ("independent-branches", 64, 721_602),
    ("independent-branches", 128, 2_294_466),
    ("double-conv-stem", 64, 1_111_554),
    ("double-conv-stem", 128, 1_897_986),
    ("shared-trunk-128-64-32", 64, 632_194),
    ("shared-trunk-128-64-32", 128, 2_205_058),
]


def test_parameter_count_table_covers_every_preset():
    assert {name for name, _, _ in PARAMETER_COUNTS} == set(NAMES)


@pytest.mark.parametrize("name, image_size, params", PARAMETER_COUNTS)
def test_preset_builds_with_its_parameter_count(name, image_size, params):
    model = build_model(PRESETS[name].configs(image_size)[0])
    assert model.count_params() == params
    assert model.output_shape == [(None, 1), (None, 1)]


@pytest.mark.parametrize("name", NAMES)
def test_preset_docstring_states_its_parameter_count_at_64_px(name):
    documented = int(re.search(r"Parameters at 64 px: ([\d,]+)", PRESETS[name].configs.__doc__).group(1).replace(",", ""))
    assert documented == {n: p for n, size, p in PARAMETER_COUNTS if size == 64}[name]


def test_deep_age_branch_is_writeup_b():
    model, train = get_preset("deep-age-branch").configs(64)
    assert model.branch_filters("age") == (64, 64, 128, 256, 512) and model.branch_filters("gender") == (64, 128, 256)
    assert model.shared_convs == 2 and model.filters[0] == 64  # Conv 32 -> Conv 64 stem
    assert (model.l2, model.gender_l2) == (0.0, 1e-3)
    assert model.age_output == "years" and model.age_activation == "relu"
    names = [layer.name for layer in build_model(model).layers]
    assert names.index("shared_block1_conv0") < names.index("shared_block1_conv") and "age_block5_pool" in names
    assert (train.optimizer, train.learning_rate, train.age_loss, train.patience) == ("adam", 1e-3, "mae", 20)


@pytest.mark.parametrize("space, expected", PRESETS_IN_SPACE.items())
def test_baseline_trials_are_the_presets_the_space_contains(space, expected):
    assert [name for name, _ in baseline_trials(space, 64)] == expected


def test_baseline_trials_leave_out_presets_too_deep_for_the_image():
    assert "deep-age-branch" not in {name for name, _ in baseline_trials("cnn", 32)}


def test_baseline_trials_by_name():
    assert [n for n, _ in baseline_trials("full", 64, ["deep-age-branch"])] == ["deep-age-branch"]
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        baseline_trials("full", 64, ["nope"])
    with pytest.raises(ValueError, match="preset 'three-conv-mse' is not a point of space 'arch' at 64 px"):
        baseline_trials("arch", 64, ["three-conv-mse"])


@pytest.mark.parametrize("space, name", PRESET_POINTS)
def test_enqueued_preset_gives_back_its_configs_without_fallback(space, name):
    """The preset enqueued in a real study of the space samples back to the very same configs."""
    found = baseline_trials(space, 64, [name])  # raises ValueError if it is not a point of the space
    assert [n for n, _ in found] == [name]
    params = found[0][1]
    assert params  # something to enqueue: an empty dict would leave every value to the sampler
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
    assert trial.params == params  # every enqueued value was sampled as given, none left out


def test_presets_command_lists_parameter_counts_results_and_spaces(capsys):
    from conftest import run_cli

    code, out, err = run_cli(["presets", "--image-size", "64"], capsys)
    assert code == 0 and err == ""
    assert "deep-age-branch          2,644,994 params" in out
    assert "reported: val 6.95 y / 88 %; in spaces: arch, cnn, full" in out
    assert "recipe: 30 epochs, early stopping patience 20; as a baseline trial the run sets both" in out  # B's own patience
    code, out, _ = run_cli(["presets", "--image-size", "16"], capsys)
    assert code == 0 and "deep-age-branch          does not fit" in out


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
    from agesearch.search.store.study import BASELINES_KEY

    assert optuna.load_study(study_name="train", storage=storage).user_attrs[BASELINES_KEY] == ["shared-trunk-128-64-32"]


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
