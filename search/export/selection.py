"""Greedy ensemble selection on val (Caruana et al. 2004, "Ensemble selection from libraries of
models"; AutoGluon's weighted ensemble does the same).

Start from the candidate with the best val objective alone, then repeatedly add, with
replacement, the candidate whose addition gives the plain average of the chosen predictions the
lowest val objective, but only while that strictly improves it, and at most `k` picks in all. A
candidate that makes the average worse never gets in; one picked twice counts twice in the mean.
The final average is never worse on val than the best single candidate: the first pick is
that candidate and every later pick must improve on the average before it.

NumPy only: the caller predicts each candidate on val once and hands the arrays over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agesearch.search.training.metrics import Baselines, combined_objective


@dataclass(frozen=True)
class Step:
    """One pick of the greedy selection."""

    candidate: int  # index into the candidates' predictions
    before: float | None  # val objective of the average before this pick; None for the first
    after: float  # val objective of the average with it

    @property
    def why(self) -> str:
        if self.before is None:
            return f"first: best single candidate (val objective {self.after:.4f})"
        return f"val objective of the average {self.before:.4f} -> {self.after:.4f}"

    def to_dict(self) -> dict:
        return {"val_objective_before": self.before, "val_objective_after": self.after, "why": self.why}


def average_objective(age: np.ndarray, p_female: np.ndarray, age_true: np.ndarray, gender_true: np.ndarray, baselines: Baselines) -> float:
    """The combined val objective of predictions (age in years, P(female) >= 0.5 read as female)."""
    mae = float(np.mean(np.abs(np.asarray(age, dtype=float) - age_true)))
    accuracy = float(np.mean((np.asarray(p_female, dtype=float) >= 0.5).astype(int) == gender_true))
    return combined_objective(mae, accuracy, baselines)


def greedy_select(
    val_preds: Sequence[tuple[np.ndarray, np.ndarray]],
    age_true: np.ndarray,
    gender_true: np.ndarray,
    baselines: Baselines,
    k: int,
) -> list[Step]:
    """Greedy ensemble selection with replacement: the picks, in order.

    Args:
        val_preds: per candidate, its (age in years, P(female)) on the val images, (n,) each;
            candidates in order of preference (a tie goes to the earlier one).
        age_true: the val images' ages, (n,).
        gender_true: their genders (1 = female), (n,).
        baselines: the study's trivial predictors (the combined objective's scales).
        k: most picks (members counted with their repeats).

    Returns:
        The steps, first the best single candidate; a candidate's repeats weigh in the mean.

    Raises:
        ValueError: no candidates, or `k` < 1.
    """
    if not val_preds:
        raise ValueError("Invalid value for `val_preds`: must hold at least one candidate's predictions. Received: val_preds=[]")
    if k < 1:
        raise ValueError(f"Invalid value for `k`: must be at least 1. Received: k={k}")
    age_true = np.asarray(age_true, dtype=float).reshape(-1)
    gender_true = np.asarray(gender_true, dtype=int).reshape(-1)
    ages = np.stack([np.asarray(a, dtype=float).reshape(-1) for a, _ in val_preds])
    probs = np.stack([np.asarray(p, dtype=float).reshape(-1) for _, p in val_preds])

    def objective(age_sum: np.ndarray, p_sum: np.ndarray, n: int) -> float:
        return average_objective(age_sum / n, p_sum / n, age_true, gender_true, baselines)

    alone = [objective(ages[c], probs[c], 1) for c in range(len(ages))]
    first = int(np.argmin(alone))  # argmin keeps the first of equal values
    steps = [Step(first, None, alone[first])]
    age_sum, p_sum, current = ages[first].copy(), probs[first].copy(), alone[first]
    while len(steps) < k:
        n = len(steps) + 1
        tried = [objective(age_sum + ages[c], p_sum + probs[c], n) for c in range(len(ages))]
        best = int(np.argmin(tried))
        # Strictly better, beyond float noise: a tie (the same candidate again, say) adds nothing.
        if not tried[best] < current - 1e-12:
            break
        steps.append(Step(best, current, tried[best]))
        age_sum += ages[best]
        p_sum += probs[best]
        current = tried[best]
    return steps
