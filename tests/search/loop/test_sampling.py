"""The incumbent perturbation's own decisions (search/loop/sampling.py) on real in-memory studies,
and the preset that reports but is never pruned (trial.report_epoch). No training."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from agesearch.models.config import ModelConfig, TrainConfig
from agesearch.search.loop.sampling import make_sampler
from agesearch.search.loop.trial import report_epoch

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(study, space, value, params=None, **attrs):
    """Ask (enqueue `params` first, with user attrs), sample `space`, tell `value`; the trial's number."""
    if params is not None:
        study.enqueue_trial(params, user_attrs=attrs)
    t = study.ask()
    space(t)
    study.tell(t, value)
    return t.number


def test_a_move_of_less_than_a_step_goes_up_and_down_alike():
    """A mid-range small int and a stepped float move up about as often as down (a Gaussian
    step that rounds back to the value used to go one step up, always)."""
    spaces = {
        "k": lambda t: t.suggest_int("k", 0, 4),  # Gaussian sd 0.6: most moves round back to 2
        "r": lambda t: t.suggest_float("r", 0.0, 0.3, step=0.05),  # sd 0.045, less than a step
    }
    for name, space in spaces.items():
        start = {"k": 2, "r": 0.15}[name]
        up = down = 0
        for seed in range(300):
            sampler = make_sampler("tpe", seed, n_baselines=1)
            study = optuna.create_study(sampler=sampler)
            _run(study, space, 0.1, {name: start})
            t = study.ask()
            space(t)
            if sampler.decision(t.number, fixed=False).startswith("perturbed #0"):
                assert t.params[name] != start
                up += t.params[name] > start
                down += t.params[name] < start
        assert up + down > 150, name
        assert 0.4 < up / (up + down) < 0.6, (name, up, down)


def _head_space(t):
    t.suggest_categorical("age/head", ["regression", "coral", "dldl"])
    t.suggest_categorical("age_loss", ["mse", "mae", "huber"])
    t.suggest_categorical("age_weighting", ["none", "sqrt_inverse", "inverse"])
    t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)


def test_a_perturbation_never_moves_what_the_age_head_ignores():
    """Under a CORAL or DLDL head `age_loss` and `age_weighting` do nothing: an incumbent with
    such a head never has them moved, nor does one whose head moves to such a head."""
    incumbents = {"coral": 0, "regression": 0}  # perturbed trials seen per incumbent head
    for head in incumbents:
        best = {"age/head": head, "age_loss": "mae", "age_weighting": "none", "learning_rate": 1e-3}
        for seed in range(60):
            sampler = make_sampler("tpe", seed, n_baselines=1)
            study = optuna.create_study(sampler=sampler)
            _run(study, _head_space, 0.1, best)
            t = study.ask()
            _head_space(t)
            decision = sampler.decision(t.number, fixed=False)
            if not decision.startswith("perturbed #0"):
                continue
            incumbents[head] += 1
            if t.params["age/head"] != "regression":
                assert "age_loss" not in decision and "age_weighting" not in decision, decision
                assert (t.params["age_loss"], t.params["age_weighting"]) == ("mae", "none"), (decision, t.params)
    assert min(incumbents.values()) > 25, incumbents


def _grid_space(t):
    t.suggest_categorical("x", ["a", "b"])
    t.suggest_int("k", 0, 2)


def test_a_perturbation_never_repeats_a_configuration_tried_or_running():
    """Every neighbour of the incumbent one move away was tried (one is still running): the
    perturbations draw again until they move two parameters, and never repeat one."""
    perturbed = 0
    for seed in range(30):
        sampler = make_sampler("tpe", seed, n_baselines=3)
        study = optuna.create_study(sampler=sampler)
        for params, value in (({"x": "a", "k": 1}, 0.1), ({"x": "b", "k": 1}, 0.5), ({"x": "a", "k": 0}, 0.5)):
            _run(study, _grid_space, value, params)
        study.enqueue_trial({"x": "a", "k": 2})
        running = study.ask()  # left RUNNING
        _grid_space(running)
        tried = {tuple(sorted(t.params.items())) for t in study.trials}
        t = study.ask()
        _grid_space(t)
        if sampler.decision(t.number, fixed=False).startswith("perturbed #0"):
            perturbed += 1
            assert tuple(sorted(t.params.items())) not in tried
            assert t.params["x"] == "b" and t.params["k"] in (0, 2)
    assert perturbed > 10
    # Nothing left that is new: each draw repeats, and the trial goes to the inner sampler.
    for seed in range(10):
        sampler = make_sampler("tpe", seed, n_baselines=2)
        study = optuna.create_study(sampler=sampler)
        space = lambda t: t.suggest_categorical("x", ["a", "b"])  # noqa: E731
        _run(study, space, 0.1, {"x": "a"})
        _run(study, space, 0.5, {"x": "b"})
        t = study.ask()
        space(t)
        assert sampler.decision(t.number, fixed=False) == "tpe"


def _model_space(trial, image_size):
    """A tiny two-branch CNN whose FLOPs grow with `age/dense`, and a learning rate."""
    dense = trial.suggest_categorical("age/dense", [16, 32, 64, 128])
    lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    model = ModelConfig(image_size=image_size, age_blocks=1, gender_blocks=1, filters=(8,), age_dense=dense, gender_dense=16)
    return model, TrainConfig(learning_rate=lr)


def test_a_perturbation_over_the_cost_cap_is_drawn_again():
    """With the space and a cap just above the incumbent's FLOPs, the perturbation is planned
    whole (the trial gets the planned parameters) and never over the cap: no trial refused."""
    from agesearch.search.training.cost import model_cost

    cap = model_cost(_model_space(optuna.trial.FixedTrial({"age/dense": 32, "learning_rate": 1e-3}), 16)[0])[1] + 1
    sampler = make_sampler("tpe", 0, n_baselines=2, space=_model_space, image_size=16, cost_cap=lambda study: cap)
    study = optuna.create_study(sampler=sampler)
    space = lambda t: _model_space(t, 16)  # noqa: E731
    _run(study, space, 0.1, {"age/dense": 32, "learning_rate": 1e-3})
    _run(study, space, 0.5, {"age/dense": 16, "learning_rate": 3e-3})
    moved_dense = 0
    for _ in range(15):
        t = study.ask()
        space(t)
        decision = sampler.decision(t.number, fixed=False)
        if decision.startswith("perturbed #0"):
            assert t.params == sampler.plans[t.number].params
            assert t.params["age/dense"] in (16, 32), decision
            moved_dense += "age/dense" in decision
        study.tell(t, 0.6)  # worse: the incumbent stays trial 0
    assert moved_dense >= 2
    assert len(sampler.flops) <= 4  # each configuration built once


def test_under_hyperband_the_incumbent_is_the_whole_study_best():
    """HyperbandPruner shows the sampler one bracket of the study: a trial in another bracket
    than the best one still perturbs the study-wide best (and counts the whole start-up)."""
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9)
    sampler = make_sampler("tpe", 0, n_baselines=2)
    study = optuna.create_study(study_name="hb", sampler=sampler, pruner=pruner)
    space = lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("k", 0, 10))  # noqa: E731

    def run(value, params=None):
        if params is not None:
            study.enqueue_trial(params)
        t = study.ask()
        space(t)
        decision = sampler.decision(t.number, fixed=params is not None)
        t.report(value, step=0)
        t.should_prune()  # lets Hyperband set up its brackets
        study.tell(t, value)
        return t.number, decision

    run(0.3, {"x": 0.3, "k": 5})
    best, _ = run(0.1, {"x": 0.1, "k": 5})
    bracket = lambda n: pruner._get_bracket_id(study, study.trials[n])  # noqa: E731
    elsewhere = []
    for _ in range(12):
        number, decision = run(0.5)
        if decision.startswith("perturbed"):
            assert decision.startswith(f"perturbed #{best}: "), decision
            elsewhere += [number] if bracket(number) != bracket(best) else []
    assert elsewhere, "no perturbed trial outside the best trial's bracket"


def test_a_preset_reports_its_epochs_but_is_never_pruned():
    """A preset that starts after other trials, with a curve the median pruner stops at once
    for any other trial, reports every epoch and is never told to stop."""
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for _ in range(2):
        t = study.ask()
        for epoch, value in enumerate([0.5, 0.4, 0.3]):
            t.report(value, step=epoch)
        study.tell(t, 0.3)
    bad = [0.9, 0.8, 0.7]
    other = study.ask()
    assert report_epoch(other, 0, bad[0]) is True  # any other trial is pruned at its first epoch
    study.tell(other, state=TrialState.PRUNED)
    study.enqueue_trial({}, user_attrs={"preset": "B"})
    preset = study.ask()
    assert [report_epoch(preset, epoch, value) for epoch, value in enumerate(bad)] == [False] * 3
    study.tell(preset, bad[-1])
    assert study.trials[-1].intermediate_values == dict(enumerate(bad))
