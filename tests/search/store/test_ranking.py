"""The one rule for the best trial (`store.study.ranked`) and the "bests" that are its head:
`best_trial`, `best_trials`, export's `pick_trial` and the terminal's top-10 table."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from agesearch.search.errors import UsageError
from agesearch.search.export.trial import pick_trial
from agesearch.search.report.tables import top_table
from agesearch.search.store.study import best_trial, best_trials, ranked


def _trial(value=None, values=None, *, state=TrialState.COMPLETE, constraint=None, **attrs):
    system = {} if constraint is None else {"constraints": [constraint]}
    return create_trial(state=state, value=value, values=values, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={"model_config": {}} | attrs, system_attrs=system)


def _study(direction: str | list[str], trials: list) -> optuna.Study:
    study = optuna.create_study(directions=direction if isinstance(direction, list) else [direction])
    for t in trials:
        study.add_trial(t)
    return study


def _numbers(trials) -> list[int]:
    return [t.number for t in trials]


def test_ranked_single_objective_complete_trials_by_value_ties_by_number():
    study = _study("minimize", [_trial(2.0), _trial(1.0), _trial(state=TrialState.PRUNED), _trial(1.0), _trial(state=TrialState.FAIL)])
    assert _numbers(ranked(study)) == [1, 3, 0]
    assert best_trial(study).number == 1 and _numbers(best_trials(study)) == [1]
    up = _study("maximize", [_trial(2.0), _trial(1.0), _trial(3.0)])
    assert _numbers(ranked(up)) == [2, 0, 1] and best_trial(up).number == 2


def test_ranked_puts_feasible_trials_first():
    study = _study("minimize", [_trial(1.0, constraint=0.5), _trial(3.0, constraint=0.0), _trial(2.0), _trial(0.5, constraint=2.0)])
    assert _numbers(ranked(study)) == [2, 1, 3, 0]
    assert best_trial(study).number == 2


def test_ranked_of_some_trials_is_the_best_of_them_and_none_without_a_complete_one():
    study = _study("minimize", [_trial(1.0, preset="a"), _trial(0.5), _trial(2.0, preset="b"), _trial(state=TrialState.PRUNED, preset="c")])
    presets = [t for t in study.trials if "preset" in t.user_attrs]
    assert _numbers(ranked(study, presets)) == [0, 2] and best_trial(study, presets).number == 0
    assert best_trial(study, presets[-1:]) is None and best_trial(_study("minimize", [])) is None
    assert best_trials(_study("minimize", [])) == []


def test_ranked_multi_objective_by_combined_objective_its_best_on_the_pareto_front():
    # (age MAE down, gender accuracy up); trial 3 is dominated by 1, trial 4 has no combined objective.
    study = _study(["minimize", "maximize"], [
        _trial(values=[5.0, 0.9], objective=1.2),
        _trial(values=[4.0, 0.8], objective=1.1),
        _trial(values=[6.0, 0.95], objective=1.3),
        _trial(values=[4.5, 0.7], objective=1.4),
        _trial(values=[3.0, 0.6]),
    ])
    assert _numbers(ranked(study)) == [1, 0, 2, 3, 4]
    assert best_trial(study).number == 1
    # The Pareto front, Optuna's, in the order of the rule: the first is the best trial.
    assert _numbers(best_trials(study)) == [1, 0, 2, 4]


def test_pick_trial_exports_the_best_trial_or_the_one_asked_for():
    study = _study("minimize", [_trial(2.0), _trial(1.0), _trial(state=TrialState.PRUNED)])
    assert pick_trial(study, None).number == 1 == best_trial(study).number
    assert pick_trial(study, 0).number == 0
    with pytest.raises(UsageError, match="PRUNED, not COMPLETE"):
        pick_trial(study, 2)
    with pytest.raises(UsageError, match="no COMPLETE trial to export"):
        pick_trial(_study("minimize", [_trial(state=TrialState.FAIL)]), None)
    bare = _study("minimize", [create_trial(value=1.0)])
    with pytest.raises(UsageError, match="trial 0 .* has no model_config"):
        pick_trial(bare, None)


def test_top_table_lists_the_complete_trials_in_the_order_of_the_rule():
    up = _study("maximize", [_trial(2.0), _trial(1.0), _trial(3.0), _trial(state=TrialState.PRUNED)])
    assert top_table(up)["number"].tolist() == _numbers(ranked(up)) == [2, 0, 1]
    multi = _study(["minimize", "maximize"], [_trial(values=[5.0, 0.9], objective=1.2), _trial(values=[4.0, 0.8], objective=1.1)])
    assert top_table(multi, n=1)["number"].tolist() == [1]
