"""run_search and `agesearch run` as processes: seeds that never repeat, several processes on one
study, baseline trials, Ctrl-C, live progress. Synthetic data at 16-32 px, 1-3 epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import agesearch.spaces
from agesearch.search.store import study as st
from agesearch.search.loop.run import DataSpec, run_search
from agesearch.search.loop.sampling import make_sampler, trial_seed
from agesearch.search.loop.trial import exit_on_second_interrupt

AGESEARCH = [str(Path(sys.executable).parent / "agesearch")]
# The train space without its preset: one small fixed model (arch's random draws cost 4-20 s a trial).
TINY = ["--space", "train", "--no-baselines", "--epochs", "1", "--image-size", "16", "--limit", "120", "--synthetic-count", "200", "--sampler", "random"]


def _load(root: Path, name: str = "train") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.open_storage(f"sqlite:///{root / 'studies' / (name + '.db')}", heartbeat=False, create_dirs=False))


def _params(trials) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials if "preset" not in t.user_attrs and "retry_of" not in t.user_attrs]


def _env(cache_dir) -> dict:
    return dict(os.environ, AGESEARCH_CACHE_DIR=str(cache_dir))


def _space(trial):
    trial.suggest_float("x", 0, 1)
    trial.suggest_int("k", 0, 100)


@pytest.mark.parametrize("name", ["random", "tpe", "nsga2"])
def test_sampler_is_reproducible_per_trial_number_and_a_resume_draws_new_points(name):
    def draw(study, n):
        for _ in range(n):
            t = study.ask()
            _space(t)
            study.tell(t, t.params["x"])
        return [t.params for t in study.trials]

    first = draw(optuna.create_study(sampler=make_sampler(name, 0)), 4)
    again = draw(optuna.create_study(sampler=make_sampler(name, 0)), 4)
    assert first == again  # one uninterrupted run: reproducible
    study = optuna.create_study(sampler=make_sampler(name, 0))
    draw(study, 2)
    study.sampler = make_sampler(name, 0)  # a resume: a fresh process, the same seed
    resumed = draw(study, 2)
    assert len({tuple(p.items()) for p in resumed}) == 4
    assert trial_seed(0, 1) != trial_seed(0, 2) != trial_seed(1, 2)


def test_tpe_after_the_baselines_models_them_instead_of_drawing_at_random():
    """The presets are TPE's start-up: the first trial after them is drawn from the history,
    by TPE's own relative step (it returns values only once its start-up is over) or as a
    perturbation of the best preset; never by the random start-up."""
    decisions = []
    for seed in range(6):
        sampler = make_sampler("tpe", seed, n_baselines=3)
        study = optuna.create_study(sampler=sampler)
        for i in range(3):  # three baseline trials
            study.enqueue_trial({"x": 0.2 * i + 0.1, "k": 10 * i})
            t = study.ask()
            _space(t)
            study.tell(t, t.params["x"])
        t = study.ask()
        _space(t)
        decision = sampler.decision(t.number, fixed=False)
        decisions.append(decision)
        if decision == "tpe":
            assert sampler.inner.modelled[t.number] == 2  # both parameters came from TPE's model
        else:
            assert decision.startswith("perturbed #0: ")  # the best of the three, x=0.1
            moved = decision.removeprefix("perturbed #0: ").split(", ")
            assert all(t.params[n] == study.trials[0].params[n] for n in ("x", "k") if n not in moved)
    assert "random start-up" not in decisions and "tpe" in decisions and any(d.startswith("perturbed") for d in decisions)
    # Without baselines TPE starts at random, as Optuna's default does.
    plain = make_sampler("tpe", 0)
    study = optuna.create_study(sampler=plain)
    t = study.ask()
    _space(t)
    assert plain.decision(t.number, fixed=False) == "random start-up"


def test_perturbations_move_the_training_recipe_more_often_than_the_architecture():
    """The incumbent's learning rate and schedule move about 4x as often as one of its
    architecture parameters (sampling.RECIPE_WEIGHT), read from the sampler's own plans."""
    from collections import Counter

    def space(trial):
        trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("lr_schedule", ["constant", "cosine"])
        for i in range(8):
            trial.suggest_int(f"arch_{i}", 1, 8)

    moved: Counter = Counter()
    plans = 0
    for seed in range(40):
        sampler = make_sampler("tpe", seed, n_baselines=2)
        study = optuna.create_study(sampler=sampler)
        for value in (0.5, 0.4):
            study.enqueue_trial({"learning_rate": 1e-3, "lr_schedule": "constant", **{f"arch_{i}": 4 for i in range(8)}})
            t = study.ask()
            space(t)
            study.tell(t, value)
        for _ in range(5):
            t = study.ask()
            space(t)
            decision = sampler.decision(t.number, fixed=False)
            if decision.startswith("perturbed #1: "):
                plans += 1
                moved.update(decision.removeprefix("perturbed #1: ").split(", "))
                best = study.trials[1].params
                assert all(t.params[n] == best[n] for n in best if n not in decision)
            study.tell(t, 0.6)  # worse: the incumbent stays trial 1
    assert plans > 100  # 70 % of 200
    arch = sum(moved[f"arch_{i}"] for i in range(8)) / 8
    assert moved["learning_rate"] > 2.5 * arch and moved["lr_schedule"] > 2.5 * arch


def test_run_other_data_seed_is_refused_and_sampler_seed_is_not(in_tmp, synthetic_dir):
    spec = DataSpec(image_size=16, limit=120, synthetic_count=200)
    run_search("train", data=spec, n_trials=1, epochs=1, sampler="random", baselines=False, live=False)
    with pytest.raises(st.StudyMismatch, match=r"seed: study has 0, this run 2; --seed fixes the data split; --sampler-seed"):
        run_search("train", data=DataSpec(image_size=16, limit=120, synthetic_count=200, seed=2), n_trials=2, epochs=1, baselines=False, live=False)
    study = run_search("train", data=spec, n_trials=2, epochs=1, sampler="random", sampler_seed=2, baselines=False, live=False)
    assert len(study.trials) == 2 and len(set(_params(study.trials))) == 2


@pytest.mark.slow
def test_two_processes_on_one_study_share_the_total_and_repeat_nothing(tmp_path, cache_dir, synthetic_dir):
    cmd = [*AGESEARCH, "run", *TINY, "--n-trials", "4"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    trials = _load(tmp_path).trials
    assert 4 <= len(trials) <= 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(set(_params(trials))) == len(trials)
    # Both processes ran trials (each printed its own per-trial lines).
    assert all(any(line.startswith("trial ") for line in out.splitlines()) for out, _ in outs)


def _start_and_interrupt(cmd, cwd, env) -> subprocess.CompletedProcess:
    """Start `cmd`, send SIGINT once its first epoch is printed (mid-trial), wait for it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  #1 epoch 1/") or time.monotonic() > deadline:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines) + out, err)


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_resume_reruns_the_interrupted_trial(tmp_path, cache_dir, synthetic_dir):
    cmd = [*AGESEARCH, "run", *TINY, "--epochs", "2", "--n-trials", "3", "--pruner", "none"]
    first = _start_and_interrupt(cmd, tmp_path, _env(cache_dir))
    assert first.returncode == 130, first.stderr[-2000:]
    err = [line for line in first.stderr.splitlines() if line.strip()]
    assert err == ["agesearch: interrupted; running trial(s) #1 marked FAIL and enqueued again: they run first, and do not count toward --n-trials, when you run the same command to resume."]
    # Plain per-epoch lines when stdout is not a terminal.
    assert "  #0 epoch 1/2 val objective " in first.stdout and "  #0 epoch 2/2 val objective " in first.stdout
    study = _load(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert st.finished_count(study) == 1
    second = subprocess.run(cmd, cwd=tmp_path, env=_env(cache_dir), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 finished, 2 to run" in second.stdout
    study = _load(tmp_path)
    assert st.finished_count(study) == 3
    trials = study.trials
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params and trials[2].state == TrialState.COMPLETE
    assert len(set(_params(trials))) == len(_params(trials))  # the resume drew nothing twice


def test_epoch_progress_plain_lines_and_live_text(capsys):
    from agesearch.search.loop.progress import EpochProgress

    with EpochProgress(3, live=False) as progress:
        progress.start(4)
        progress.epoch(4, 0, 0.91234)
        progress.start(5)
        assert progress.__rich__().startswith("#4 epoch 1/3 val objective 0.9123 ") and "| #5 starting " in progress.__rich__()
        progress.done(4)
        assert "#4" not in progress.__rich__()
    assert capsys.readouterr().out.splitlines() == ["  #4 epoch 1/3 val objective 0.9123 0s"]


@pytest.mark.slow
def test_in_process_loop_fails_and_retries_a_dead_process_trial(tmp_path, synthetic_dir):
    """A trial whose process died (heartbeat stopped) is failed and run again with its params."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from agesearch.search.loop.loop import InProcessExecutor, TrialLoop
    from agesearch.search.loop.run import load_data
    from agesearch.search.loop.trial import TrainJob, sample_configs, train_job

    _, _, data = load_data(DataSpec(image_size=16, limit=120, synthetic_count=200))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1,
                                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = optuna.create_study(study_name="hb", storage=storage, sampler=make_sampler("random", 0))
    space = agesearch.spaces.get_space("arch")
    dead = study.ask()
    space(dead, 16)
    storage.record_heartbeat(dead._trial_id)  # its last sign of life; then the process "died"
    time.sleep(2.5)
    sample = lambda trial: TrainJob(*sample_configs(trial, space, 16, 1), multi=False)  # noqa: E731
    TrialLoop(study, InProcessExecutor(train_job, data), sample, n_trials=1).run()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trials[0].params and st.finished_count(study) == 1


def test_ctrl_c_handler_comes_back_after_the_cleanup():
    before = signal.getsignal(signal.SIGINT)
    with exit_on_second_interrupt():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_second_ctrl_c_exits_at_once():
    code = ("import os, signal, time\n"
            "from agesearch.search.loop.trial import exit_on_second_interrupt, exit_on_second_interrupt\n"
            "with exit_on_second_interrupt():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n"
            "    print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and done.stdout == ""
    assert done.stderr == "agesearch: interrupted again; stopped at once.\n"


def test_cost_cap_refuses_an_over_cap_draw_before_any_training(tmp_path, synthetic_dir, cache_dir):
    """Every draw of `arch` at 16 px needs far more than 1,000 FLOPs: PRUNED, said why, never trained."""
    study = run_search("arch", data=DataSpec(image_size=16, limit=120, synthetic_count=200, cache_dir=cache_dir), storage=f"sqlite:///{tmp_path / 'c.db'}",
                       n_trials=2, epochs=3, baselines=False, sampler="random", max_flops=1e3, artifacts=str(tmp_path / "models"))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert t.user_attrs["flops"] > 1e3 and t.user_attrs["params"] > 0
        assert "over the cap of 0.0 MFLOPs" in t.user_attrs["refused"]
        assert t.intermediate_values == {} and "history" not in t.user_attrs  # not one epoch ran
        assert t.constraints["flops"] > 0  # infeasible for the sampler (Optuna's constraints)


def test_default_pruner_stops_a_diverged_trial_at_its_second_epoch_and_never_a_preset():
    """The default pruner (median, presets as its start-up): a learning-rate-10 trial that sits at
    the trivial objective is stopped at its second epoch; B's slow-starting preset always finishes."""
    from agesearch.search.loop.options import PRUNERS

    b_curve = [1.30, 0.95, 0.80, 0.72, 0.68, 0.65]  # a preset that starts worse than the others
    good_curve = [0.90, 0.75, 0.70, 0.66, 0.64, 0.62]
    study = optuna.create_study(pruner=PRUNERS["median"].make(6, 3))

    def run(curve):
        t = study.ask()
        for epoch, value in enumerate(curve):
            t.report(value, step=epoch)
            if t.should_prune():
                study.tell(t, state=TrialState.PRUNED)
                return epoch
        study.tell(t, curve[-1])
        return None

    assert [run(good_curve), run(good_curve), run(b_curve)] == [None, None, None]  # the three presets finish
    assert run([2.0] * 6) == 1  # learning rate 10: no better than trivial, stopped after epoch 2
    assert run(good_curve) is None


@pytest.mark.parametrize("dist, value", [
    (optuna.distributions.FloatDistribution(0.0, 0.2, step=0.1), 0.0),
    (optuna.distributions.FloatDistribution(0.0, 0.2, step=0.1), 0.2),
    (optuna.distributions.IntDistribution(0, 8, step=2), 4),
    (optuna.distributions.CategoricalDistribution(["a", "b"]), "a"),
])
def test_a_perturbation_move_always_changes_the_value(dist, value):
    """A Gaussian step smaller than the parameter's step still moves it one step (a no-op move
    would spend a trial on the incumbent again)."""
    import numpy as np

    from agesearch.search.loop.sampling import _move

    rng = np.random.default_rng(0)
    for _ in range(50):
        moved = _move(value, dist, rng)
        assert moved != value and dist._contains(dist.to_internal_repr(moved))


def test_the_default_sampler_works_under_the_hyperband_pruner():
    """Hyperband shows the sampler a bracket view of the study without `best_trial`: the
    incumbent perturbation must find the incumbent without it (it crashed the run before)."""
    study = optuna.create_study(sampler=make_sampler("tpe", 0, n_baselines=2), pruner=optuna.pruners.HyperbandPruner(1, 9))
    for x in (0.3, 0.1):
        study.enqueue_trial({"x": x, "k": 5})
        t = study.ask()
        _space(t)
        study.tell(t, t.params["x"])
    decisions = []
    for _ in range(6):
        t = study.ask()
        _space(t)
        decisions.append(study.sampler.decision(t.number, fixed=False))
        study.tell(t, 0.5)
    assert any(d.startswith("perturbed #1: ") for d in decisions)  # the best of the two, x=0.1
