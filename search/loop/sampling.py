"""The sampler of a search: Optuna's samplers, seeded per trial, starting from the presets.

- `PerTrialSeedSampler`: trial N draws with `trial_seed(sampler_seed, N)` (see run.py's docstring).
- The default `tpe` is Optuna's multivariate TPE with `group=True` (the `arch` and `cnn` spaces are
  conditional: which parameters exist depends on depth and split) whose random start-up is the
  baseline presets themselves (`n_startup_trials` = their number), and `IncumbentPerturbation`
  around it: a share of the trials copies the best trial so far and moves one to three of its
  parameters a little. No Optuna sampler samples around an incumbent (PriorBand and the
  evolutionary samplers do), so this wrapper is written here; everything else is Optuna's.
- `decision(number)` says how a trial's parameters were chosen; the loop records it as the user
  attr `sampled_by` ("enqueued", "random start-up", "tpe", "perturbed #N: a, b", ...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, TrialState

from agesearch.search.store.study import best_trial

PERTURB_SHARE = 0.7  # of the trials after the start-up: issue 17's A/B (benchmarks/RESULTS.md)
PERTURB_SCALE = 0.15  # a numeric move: this fraction of the parameter's (log) range, Gaussian
# How often a perturbation picks each parameter, relative to an architecture parameter (1). The
# presets' architectures come from write-ups that tuned them; their training recipes were tuned
# for other epochs and image sizes, so they carry over least and are moved most: the recipe
# (learning rate, schedule, batch size, optimizer) 4x, the other training knobs 2x. Measured
# on write-up D at 32 px, 9 epochs: a cosine schedule and twice the learning rate took its val
# objective from 0.872 to 0.753 (benchmarks/RESULTS.md, "training knobs on a preset").
RECIPE_WEIGHT, TRAINING_WEIGHT = 4.0, 2.0


def trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler seed of trial `number`: the first 4 bytes of sha256("SEED:NUMBER")."""
    return int.from_bytes(hashlib.sha256(f"{sampler_seed}:{number}".encode()).digest()[:4], "little")


class PerTrialSeedSampler(BaseSampler):
    """Delegates to a sampler made for each trial with `trial_seed(seed, trial.number)`.

    Optuna's samplers keep nothing but their random state between trials (TPE, CMA-ES,
    NSGA-II and the grid read the study's trials each time), so a fresh one per trial loses
    nothing and makes the draws depend on the trial number, not on how many processes run.
    It also notes whether the inner sampler's relative (model-based) step gave values: the
    sampler's own word that it used the history rather than its random start-up.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self.factory = factory
        self.seed = seed
        self._current: tuple[int, BaseSampler] = (-1, factory(seed))
        self.modelled: dict[int, int] = {}  # trial number -> parameters the relative step drew
        self.grid_size = 0  # points of the grid, for a grid sampler

    def for_trial(self, number: int) -> BaseSampler:
        if self._current[0] != number:
            self._current = (number, self.factory(trial_seed(self.seed, number)))
        return self._current[1]

    def is_exhausted(self, study: optuna.Study) -> bool:
        """A grid whose every point is taken (running or finished): nothing new to run.

        Optuna's own `GridSampler.is_exhausted` counts a running point as still to do, and its
        next trial runs such a point again: with several trials at once, a duplicate.
        """
        if not isinstance(self._current[1], GridSampler):
            return False
        taken = {t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False) if "grid_id" in t.system_attrs
                 and (t.state.is_finished() or t.state == TrialState.RUNNING)}
        return len(taken) >= self.grid_size

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial: FrozenTrial):
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial: FrozenTrial, search_space):
        values = self.for_trial(trial.number).sample_relative(study, trial, search_space)
        self.modelled[trial.number] = self.modelled.get(trial.number, 0) + len(values)
        return values

    def sample_independent(self, study, trial: FrozenTrial, param_name, param_distribution):
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        inner = self.for_trial(trial.number)
        if isinstance(inner, GridSampler):
            return  # its after_trial only calls study.stop(), which ask/tell has no loop for
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current[1].reseed_rng()

    def decision(self, number: int, fixed: bool) -> str:
        if fixed:
            return "enqueued"
        if isinstance(self._current[1], optuna.samplers.TPESampler):
            return "tpe" if self.modelled.get(number) else "random start-up"
        return type(self._current[1]).__name__.removesuffix("Sampler").lower()


class IncumbentPerturbation(BaseSampler):
    """A share of the trials start from the best trial so far and move 1-3 of its parameters.

    Which parameters move is drawn with `weights` (see RECIPE_WEIGHT): the training recipe
    more often than the architecture.
    The other trials, and every parameter the incumbent does not have (a deeper block after
    depth moved), go to `inner`. Moves: a categorical parameter takes another of its choices;
    a number moves by a Gaussian step of PERTURB_SCALE of its range (log range for log
    parameters), clipped and put on its step. Which trials perturb and what moves is drawn
    from the trial's own seed, so it is as reproducible as the rest.
    """

    def __init__(self, inner: PerTrialSeedSampler, *, share: float = PERTURB_SHARE, after: int = 0,
                 weights: dict[str, float] | None = None):
        self.inner = inner
        self.share = share
        self.after = after  # perturb only once this many trials finished (the start-up)
        self.weights = perturb_weights() if weights is None else weights  # parameter -> how often it moves (default 1)
        self.plans: dict[int, tuple[FrozenTrial, set[str], np.random.Generator]] = {}

    def _plan(self, study: optuna.Study, trial: FrozenTrial):
        if trial.number in self.plans:
            return self.plans[trial.number]
        plan = None
        rng = np.random.default_rng(trial_seed(self.inner.seed + 7919, trial.number))
        fixed = "fixed_params" in trial.system_attrs
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if not fixed and len(done) >= self.after and rng.random() < self.share:
            best = best_trial(study)
            if best is not None and best.params:
                names = sorted(best.params)
                k = min(len(names), int(rng.integers(1, 4)))
                w = np.array([self.weights.get(n, 1.0) for n in names])
                plan = (best, set(rng.choice(names, size=k, replace=False, p=w / w.sum()).tolist()), rng)
        self.plans[trial.number] = plan
        return plan

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)
        self._plan(study, trial)

    def infer_relative_search_space(self, study, trial: FrozenTrial):
        if self._plan(study, trial) is not None:
            return {}  # every parameter goes through sample_independent below
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial: FrozenTrial, search_space):
        if not search_space:
            return {}
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution):
        plan = self._plan(study, trial)
        if plan is not None:
            best, moving, rng = plan
            if param_name in best.params and _inside(best.params[param_name], param_distribution):
                value = best.params[param_name]
                return _move(value, param_distribution, rng) if param_name in moving else value
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        self.plans.pop(trial.number, None)
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    def is_exhausted(self, study: optuna.Study) -> bool:
        return self.inner.is_exhausted(study)

    def decision(self, number: int, fixed: bool) -> str:
        plan = self.plans.get(number)
        if plan is not None and not fixed:
            return f"perturbed #{plan[0].number}: {', '.join(sorted(plan[1]))}"
        return self.inner.decision(number, fixed)


def perturb_weights() -> dict[str, float]:
    """RECIPE_WEIGHT for the recipe's parameters, TRAINING_WEIGHT for the other training knobs."""
    from agesearch.spaces.train import RECIPE_PARAMS, TRAINING_PARAMS

    return {name: RECIPE_WEIGHT if name in RECIPE_PARAMS else TRAINING_WEIGHT for name in TRAINING_PARAMS}


def _inside(value, dist: BaseDistribution) -> bool:
    """Whether the incumbent's value is a value of this trial's distribution (spaces can vary it)."""
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and float(dist.low) <= float(value) <= float(dist.high)


def _move(value, dist: BaseDistribution, rng: np.random.Generator):
    """A nearby other value of `dist`."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[int(rng.integers(len(others)))] if others else value
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    lo, hi = float(dist.low), float(dist.high)
    if hi <= lo:
        return value
    to = (math.log, math.exp) if dist.log else (float, float)
    span = to[0](hi) - to[0](lo)
    x = to[1](min(to[0](hi), max(to[0](lo), to[0](float(value)) + rng.normal(0.0, PERTURB_SCALE * span))))
    if isinstance(dist, IntDistribution):
        step = dist.step
        x = int(round((x - dist.low) / step) * step + dist.low)
        if x == value:  # an int move of less than a step: one step up (down at the top)
            x = value + step if value + step <= dist.high else value - step
        return int(min(dist.high, max(dist.low, x)))
    if dist.step is not None:
        x = round((x - lo) / dist.step) * dist.step + lo
        if math.isclose(x, value):  # less than a step: one step up (down at the top), as for ints
            x = value + dist.step if value + dist.step <= hi + 1e-12 else value - dist.step
    return float(min(hi, max(lo, x)))


def make_sampler(name: str, sampler_seed: int, *, grid: dict | None = None, n_baselines: int = 0) -> BaseSampler:
    """The sampler `name` of loop/options.py's SAMPLERS (a grid space walks its `grid`), seeded per trial."""
    samplers = optuna.samplers

    def factory(seed: int) -> BaseSampler:
        if grid is not None:
            # One order for every trial: a grid id means the same point only under one seed.
            return samplers.GridSampler(grid, seed=sampler_seed)
        if name == "tpe":
            # The presets are the start-up: TPE models from the first trial after them.
            return samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                        n_startup_trials=max(n_baselines, 1) if n_baselines else 10)
        if name == "tpe-plain":
            return samplers.TPESampler(seed=seed)
        if name == "random":
            return samplers.RandomSampler(seed=seed)
        if name == "cmaes":  # float and int parameters; categorical ones fall back to random
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        return samplers.NSGAIISampler(seed=seed)

    sampler = PerTrialSeedSampler(factory, sampler_seed)
    if grid is not None:
        sampler.grid_size = math.prod(len(v) for v in grid.values())
    if name == "tpe" and grid is None and n_baselines:
        return IncumbentPerturbation(sampler, after=n_baselines)
    return sampler
