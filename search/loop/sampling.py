"""The sampler of a search: Optuna's samplers, seeded per trial, starting from the presets.

- `PerTrialSeedSampler`: trial N draws with `trial_seed(sampler_seed, N)` (see run.py's docstring).
- The default `tpe` is Optuna's multivariate TPE with `group=True` (the `arch` and `cnn` spaces are
  conditional: which parameters exist depends on depth and split) whose random start-up is the
  baseline presets themselves (`n_startup_trials` = their number), and `IncumbentPerturbation`
  around it: a share of the trials copies the best trial so far and moves one to three of its
  parameters a little, planned whole before the trial runs (no repeat, none over the cost cap).
  No Optuna sampler samples around an incumbent (PriorBand and the evolutionary samplers do),
  so this wrapper is written here; everything else is Optuna's.
- `decision(number)` says how a trial's parameters were chosen; the loop records it as the user
  attr `sampled_by` ("enqueued", "random start-up", "tpe", "perturbed #N: a, b", ...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, TrialState

from agesearch.models.config import ModelConfig
from agesearch.search.store.study import best_trial
from agesearch.spaces.arch import IGNORED_BY

PERTURB_SHARE = 0.7  # of the trials after the start-up: issue 17's A/B (benchmarks/RESULTS.md)
PERTURB_SCALE = 0.15  # a numeric move: this fraction of the parameter's (log) range, Gaussian
# How often a perturbation picks each parameter, relative to an architecture parameter (1). The
# presets' architectures come from write-ups that tuned them; their training recipes were tuned
# for other epochs and image sizes, so they carry over least and are moved most: the recipe
# (learning rate, schedule, batch size, optimizer) 4x, the other training knobs 2x. Measured
# on write-up D at 32 px, 9 epochs: a cosine schedule and twice the learning rate took its val
# objective from 0.872 to 0.753 (benchmarks/RESULTS.md, "training knobs on a preset").
RECIPE_WEIGHT, TRAINING_WEIGHT = 4.0, 2.0
PLAN_ATTEMPTS = 8  # draws of a perturbation (a repeat, or over the cost cap, is drawn again), then `inner`
TRIED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)  # a perturbation repeats none of these


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
    more often than the architecture; a parameter the incumbent's age head ignores
    (spaces.arch.IGNORED_BY) never moves. Moves: a categorical parameter takes another of its
    choices; a number moves by a Gaussian step of PERTURB_SCALE of its range (log range for log
    parameters), clipped and put on its step. Which trials perturb and what moves is drawn from
    the trial's own seed, so it is as reproducible as the rest. The other trials go to `inner`.

    The whole configuration is planned before the trial suggests anything, so that a plan that
    repeats a configuration already tried (complete, pruned, failed or running) or costs more
    than `cost_cap(study)` FLOPs per image is drawn again (PLAN_ATTEMPTS times, then the trial
    goes to `inner`): it would waste a trial, or be refused. With `space` (and `image_size`) the
    plan runs the space on a `_PlanTrial`, so it holds every parameter (one the incumbent lacks,
    a deeper block after depth moved, is drawn at random) and its ModelConfig gives the FLOPs.
    Without a space the plan is the incumbent's parameters, moved, and any other goes to `inner`.
    Written here because no Optuna sampler perturbs an incumbent (see the module docstring).
    """

    def __init__(self, inner: PerTrialSeedSampler, *, share: float = PERTURB_SHARE, after: int = 0,
                 weights: dict[str, float] | None = None, space: Callable | None = None, image_size: int | None = None,
                 cost_cap: Callable[[optuna.Study], float | None] | None = None):
        self.inner = inner
        self.share = share
        self.after = after  # perturb only once this many trials finished (the start-up)
        self.weights = perturb_weights() if weights is None else weights  # parameter -> how often it moves (default 1)
        self.space, self.image_size = space, image_size  # (trial, image_size) -> (ModelConfig, TrainConfig)
        self.cost_cap = cost_cap  # study -> the most FLOPs per image a trial may cost, or None
        self.plans: dict[int, Plan | None] = {}
        self.flops: dict[ModelConfig, int] = {}  # ModelConfig -> FLOPs per image: each is built once

    def _plan(self, study: optuna.Study, trial: FrozenTrial) -> Plan | None:
        if trial.number not in self.plans:
            self.plans[trial.number] = self._draw_plan(whole_study(study), trial)
        return self.plans[trial.number]

    def _draw_plan(self, study: optuna.Study, trial: FrozenTrial) -> Plan | None:
        rng = np.random.default_rng(trial_seed(self.inner.seed + 7919, trial.number))
        if "fixed_params" in trial.system_attrs:
            return None
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(done) < self.after or rng.random() >= self.share:
            return None
        best = best_trial(study)
        if best is None or not best.params:
            return None
        tried = {_key(t.params) for t in study.get_trials(deepcopy=False, states=TRIED) if t.number != trial.number}
        cap = None if self.cost_cap is None else self.cost_cap(study)
        for _ in range(PLAN_ATTEMPTS):
            try:
                plan = self._perturb(best, rng)
                if plan is not None and _key(plan.params) not in tried and (cap is None or plan.model is None or self._flops(plan.model) <= cap):
                    return plan
            except Exception:  # noqa: BLE001  a space or a build that refuses the plan: draw again
                continue  # (this runs inside study.ask(), where an error would end the whole search)
        return None

    def _perturb(self, best: FrozenTrial, rng: np.random.Generator) -> Plan | None:
        """One draw: which of the incumbent's parameters move, and the configuration that gives."""
        names = sorted(n for n in best.params if n not in _ignored(best.params))
        if not names:
            return None
        w = np.array([self.weights.get(n, 1.0) for n in names])
        moving = set(rng.choice(names, size=min(len(names), int(rng.integers(1, 4))), replace=False, p=w / w.sum()).tolist())
        model = None
        if self.space is None:
            params = {n: _move(v, best.distributions[n], rng) if n in moving else v for n, v in best.params.items()}
        else:
            planner = _PlanTrial(best.params, moving, rng)
            model = self.space(planner, self.image_size)[0]
            params = planner.params
        # The head may have moved to one that ignores another moved parameter: that one stays.
        ignored = _ignored(params)
        for name in moving & ignored & params.keys():
            params[name] = best.params[name]
        return Plan(best.number, sorted(n for n in moving if n in params and n not in ignored), params, model)

    def _flops(self, model: ModelConfig) -> int:
        if model not in self.flops:
            from agesearch.search.training.cost import model_cost  # imports Keras

            self.flops[model] = model_cost(model)[1]
        return self.flops[model]

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
        if plan is not None and param_name in plan.params and _inside(plan.params[param_name], param_distribution):
            return plan.params[param_name]
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
            return f"perturbed #{plan.incumbent}: {', '.join(plan.moved)}"
        return self.inner.decision(number, fixed)


@dataclass
class Plan:
    """A perturbation, planned before its trial suggests anything."""

    incumbent: int  # the number of the trial it starts from
    moved: list[str]  # the parameters it moves, sorted
    params: dict  # parameter -> value for the trial (every one the space asks, with a space)
    model: ModelConfig | None = None  # the ModelConfig these parameters give (with a space): its cost


class _PlanTrial:
    """Stands in for the trial while a space is run to plan a perturbation (nothing is stored).

    The incumbent's value of each parameter the space asks for, moved if it is in `moving`; a
    parameter the incumbent lacks (or whose value the distribution asked no longer holds) is
    drawn at random from that distribution. Optuna's FixedTrial cannot draw a missing one.
    """

    def __init__(self, incumbent: dict, moving: set[str], rng: np.random.Generator):
        self.incumbent, self.moving, self.rng = incumbent, moving, rng
        self.params: dict = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _suggest(self, name: str, dist: BaseDistribution):
        if name not in self.params:
            if name in self.incumbent and _inside(self.incumbent[name], dist):
                old = self.incumbent[name]
                self.params[name] = _move(old, dist, self.rng) if name in self.moving else old
            else:
                self.params[name] = _draw(dist, self.rng)
            self.distributions[name] = dist
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        return self._suggest(name, FloatDistribution(low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._suggest(name, IntDistribution(low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices):
        return self._suggest(name, CategoricalDistribution(choices))


def whole_study(study: optuna.Study) -> optuna.Study:
    """The study itself, also where Optuna hands a sampler HyperbandPruner's view of one bracket.

    Under HyperbandPruner a sampler is called with `_BracketStudy`, whose trials are one
    bracket's; the incumbent, the start-up count and the configurations tried are the whole
    study's. The view keeps the study it filters as `_study`, one of the few attributes it lets
    through (optuna/pruners/_hyperband.py); any other study has none.
    """
    return getattr(study, "_study", study)


def _ignored(params: dict) -> set[str]:
    """The parameters that these values leave unused (spaces.arch.IGNORED_BY)."""
    return {name for p, by_value in IGNORED_BY.items() if p in params for name in by_value.get(params[p], ())}


def _key(params: dict) -> tuple:
    """A configuration as a comparable key; floats to 10 significant digits, so that a planned
    0.15 and a stored 0.15000000000000002 are one configuration."""
    return tuple(sorted((n, float(f"{v:.10g}") if isinstance(v, float) else v) for n, v in params.items()))


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
    x = _on_grid(to[1](min(to[0](hi), max(to[0](lo), to[0](float(value)) + rng.normal(0.0, PERTURB_SCALE * span)))), dist)
    if dist.step is not None and math.isclose(x, value):
        # A move of less than a step: one step up or down, drawn (always up was a drift upwards,
        # most moves of a small int range being this one), the only way left at a bound.
        ways = [v for v in (value - dist.step, value + dist.step) if lo - 1e-12 <= v <= hi + 1e-12]
        x = _on_grid(ways[int(rng.integers(len(ways)))], dist)
    return x


def _on_grid(x: float, dist: FloatDistribution | IntDistribution):
    """`x` put on `dist`'s step and in its range, as an int for an int distribution."""
    if dist.step is not None:
        x = round((x - dist.low) / dist.step) * dist.step + dist.low
    x = min(dist.high, max(dist.low, x))
    return int(round(x)) if isinstance(dist, IntDistribution) else float(x)


def _draw(dist: BaseDistribution, rng: np.random.Generator):
    """A uniform draw from `dist` (over its log range for a log parameter), on its step."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if dist.log:
        return _on_grid(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))), dist)
    # Uniform over the grid points (a plain rounding would give each end half a share).
    if dist.step is not None:
        return _on_grid(dist.low + dist.step * int(rng.integers(round((dist.high - dist.low) / dist.step) + 1)), dist)
    return _on_grid(rng.uniform(dist.low, dist.high), dist)


def make_sampler(name: str, sampler_seed: int, *, grid: dict | None = None, n_baselines: int = 0, space: Callable | None = None,
                 image_size: int | None = None, cost_cap: Callable[[optuna.Study], float | None] | None = None) -> BaseSampler:
    """The sampler `name` of loop/options.py's SAMPLERS (a grid space walks its `grid`), seeded per trial.

    `space`, `image_size` and `cost_cap` let the incumbent perturbation (`tpe` with presets) plan
    whole configurations and draw again over the cap (see IncumbentPerturbation).
    """
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
        return IncumbentPerturbation(sampler, after=n_baselines, space=space, image_size=image_size, cost_cap=cost_cap)
    return sampler
