"""The default pruner against seed noise: curves recorded by benchmarks/pruner_noise.py (32 px, the 5k)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from agesearch.search.loop.options import PRUNERS
from agesearch.search.loop.pruning import MarginMedianPruner

# Per-epoch val objectives of write-up D (double-conv-stem) run with six seeds (RESULTS.md,
# "Pruner on seed noise"): the same config, so no pruner should stop any of them.
D_RUNS = [
    [1.275, 1.092, 1.047, 0.863, 0.983, 0.811, 0.877, 1.042, 0.812],
    [1.405, 1.191, 1.153, 1.001, 0.972, 0.973, 1.027, 0.893, 0.924],
    [1.507, 1.128, 1.037, 1.031, 0.941, 0.871, 0.897, 0.852, 0.848],
    [1.657, 1.495, 1.281, 0.996, 0.896, 0.976, 0.889, 0.875, 0.901],
    [1.316, 1.058, 0.955, 0.871, 0.826, 0.893, 0.815, 0.830, 0.869],
    [1.510, 1.304, 1.044, 1.007, 1.099, 0.939, 1.001, 0.848, 0.880],
]
STUCK = [2.066, 2.059, 2.056, 2.055, 2.042, 2.036, 2.021, 2.008, 2.002]  # learning rate 1e-6: learns nothing


def pruned_at(pruner: optuna.pruners.BasePruner, finished: list[list[float]], curve: list[float]) -> int | None:
    """The epoch at which `pruner` stops `curve` after the `finished` trials, or None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=pruner)
    for c in finished:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=min(c), intermediate_values=dict(enumerate(c))))
    trial = study.ask()
    for epoch, value in enumerate(curve):
        trial.report(value, epoch)
        if trial.should_prune():
            return epoch
    return None


def test_default_pruner_prunes_no_seed_of_the_same_config_among_its_peers():
    """Each run against the five others (a search whose finished trials are all as good): the
    strict median prunes most of them, the default none."""
    default = [pruned_at(PRUNERS["median"].make(9, 3), D_RUNS[:i] + D_RUNS[i + 1:], run) for i, run in enumerate(D_RUNS)]
    strict = [pruned_at(PRUNERS["median-strict"].make(9, 3), D_RUNS[:i] + D_RUNS[i + 1:], run) for i, run in enumerate(D_RUNS)]
    assert default == [None] * 6
    assert sum(e is not None for e in strict) >= 4


@pytest.mark.parametrize("curve", [STUCK, [111632.3, 12593390.1, 715628492.3, 9.8e15], [2.0, float("nan"), float("nan")]])
def test_default_pruner_stops_a_clearly_bad_trial_at_its_first_rung(curve):
    """A trial that learns nothing or diverges stops at the second epoch, the first the pruner may prune at."""
    assert pruned_at(PRUNERS["median"].make(9, 3), D_RUNS, curve) == 1


def test_margin_zero_is_the_median_rule_and_a_maximised_study_is_mirrored():
    assert pruned_at(MarginMedianPruner(0.0, n_startup_trials=3), D_RUNS[1:], D_RUNS[3]) == pruned_at(
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1), D_RUNS[1:], D_RUNS[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=MarginMedianPruner(0.2, n_startup_trials=1))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, intermediate_values={0: 1.0, 1: 1.0}))
    low, near = study.ask(), study.ask()
    for t, v in ((low, 0.7), (near, 0.85)):
        t.report(v, 0)
        t.report(v, 1)
    assert low.should_prune() and not near.should_prune()


def test_margin_must_not_be_negative():
    with pytest.raises(ValueError, match=r"Invalid value for `margin`: must be >= 0. Received: margin=-0.1"):
        MarginMedianPruner(-0.1)
