"""Greedy ensemble selection on val (search/export/selection.py), on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from agesearch.search.export.selection import Step, average_objective, greedy_select
from agesearch.search.training.metrics import Baselines

AGES = np.array([20.0, 30.0, 40.0, 50.0])
GENDERS = np.array([0, 1, 0, 1])
RIGHT = np.array([0.1, 0.9, 0.2, 0.8])  # P(female): every gender right
# objective = age MAE / 10 + gender error / 0.5
B = Baselines(median_age=35.0, majority_gender=0, mae_trivial=10.0, error_trivial=0.5, age_scale=35.0)


def _candidate(age_error: float, p_female: np.ndarray = RIGHT) -> tuple[np.ndarray, np.ndarray]:
    return AGES + age_error, p_female


def test_average_objective_is_the_combined_objective():
    # MAE 2 years, one gender of four wrong: 2 / 10 + 0.25 / 0.5
    assert average_objective(AGES + 2, np.array([0.1, 0.9, 0.6, 0.8]), AGES, GENDERS, B) == pytest.approx(0.7)


def test_greedy_select_leaves_out_a_candidate_that_makes_the_average_worse():
    # The bad candidate ranks second; +2 and -2 years average to perfect ages.
    preds = [_candidate(+2), _candidate(+20, 1 - RIGHT), _candidate(-2)]
    steps = greedy_select(preds, AGES, GENDERS, B, k=5)
    assert steps == [Step(0, None, pytest.approx(0.2)), Step(2, pytest.approx(0.2), pytest.approx(0.0))]
    assert 1 not in [s.candidate for s in steps]
    assert steps[0].why == "first: best single candidate (val objective 0.2000)"
    assert steps[1].why == "val objective of the average 0.2000 -> 0.0000"


def test_greedy_select_picks_a_candidate_twice_when_that_helps():
    # +3 and -6: the mean of (+3, -6) is -1.5, of (+3, +3, -6) exactly 0.
    preds = [_candidate(+3), _candidate(-6)]
    steps = greedy_select(preds, AGES, GENDERS, B, k=5)
    assert [s.candidate for s in steps] == [0, 1, 0]
    assert [s.after for s in steps] == pytest.approx([0.3, 0.15, 0.0])
    assert [s.before for s in steps[1:]] == pytest.approx([0.3, 0.15])


@pytest.mark.parametrize("k, picks", [(1, [0]), (2, [0, 1]), (3, [0, 1, 0]), (10, [0, 1, 0])])
def test_greedy_select_stops_at_k_picks(k, picks):
    steps = greedy_select([_candidate(+3), _candidate(-6)], AGES, GENDERS, B, k=k)
    assert [s.candidate for s in steps] == picks


def test_greedy_select_stops_when_nothing_improves_the_average():
    # The same answers twice: a tie is no improvement, so one pick of the first of them.
    steps = greedy_select([_candidate(+1), _candidate(+1), _candidate(+4)], AGES, GENDERS, B, k=4)
    assert steps == [Step(0, None, pytest.approx(0.1))]


def test_greedy_select_averages_p_female_for_the_gender_term():
    # Alone, each gets one gender wrong; their mean P(female) gets all four right.
    a = _candidate(0, np.array([0.1, 0.9, 0.6, 0.8]))
    b = _candidate(0, np.array([0.1, 0.9, 0.2, 0.4]))
    steps = greedy_select([a, b], AGES, GENDERS, B, k=3)
    assert [s.candidate for s in steps] == [0, 1] and [s.after for s in steps] == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize(
    "preds, k, message",
    [
        ([], 2, r"Invalid value for `val_preds`: must hold at least one candidate's predictions. Received: val_preds=\[\]"),
        ([(AGES, RIGHT)], 0, r"Invalid value for `k`: must be at least 1. Received: k=0"),
    ],
)
def test_greedy_select_rejects_no_candidates_and_k_below_one(preds, k, message):
    with pytest.raises(ValueError, match=message):
        greedy_select(preds, AGES, GENDERS, B, k=k)
