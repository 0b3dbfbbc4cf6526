"""Distributed search on Ray: parallel trials, the cluster path, faults, storage under load.

CPU only, synthetic faces at 32 px. Ray start-up is slow, so the in-process tests share one
local runtime (module fixture); the driver-kill and cluster tests run the CLI as a subprocess
in its own session (process group), and end only the processes of that session: never
`ray stop`, which would end every Ray process on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.ray

pytest.importorskip("ray")

from agesearch.search.store import study as st  # noqa: E402
from agesearch.search.cli import main  # noqa: E402
from agesearch.search.loop.ray_executor import drive  # noqa: E402
from agesearch.search.loop.trial import SearchInterrupted, TrialOutcome  # noqa: E402

AGESEARCH = [sys.executable, "-m", "agesearch.search.cli"]
# The train space: one small fixed model, so these tests pay for Ray, not for the random
# architectures `arch` can draw (up to 512 filters per block: 4-20 s a trial here).
TINY = ["--space", "train", "--no-baselines", "--epochs", "2", "--image-size", "32", "--limit", "160", "--synthetic-count", "200", "--sampler", "random"]


def sleep_work(payload: dict, data, reporter) -> TrialOutcome:
    """A trial without Keras for load tests of the driver and storage: `steps` reports.

    `payload`: {"x": float, "steps": int, "seconds": float per step, "crash": bool}.
    """
    value = 0.0
    for step in range(payload.get("steps", 5)):
        time.sleep(payload.get("seconds", 0.0))
        value = (payload["x"] - 0.3) ** 2 + 1.0 / (step + 1)
        if reporter is not None and reporter(step, value):
            return TrialOutcome(TrialState.PRUNED, None, {"pruned_at_epoch": step})
    if payload.get("crash"):
        os._exit(1)  # like a SIGKILL'd worker: no exception, the process is gone
    return TrialOutcome(TrialState.COMPLETE, [value], {"objective": value, "pid": os.getpid()})


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray runtime for the in-process tests; `run_distributed` uses it as it is."""
    import ray
    from ray import cloudpickle

    # The workers cannot import this test module: send its functions (sleep_work) by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _study(url: str, name: str = "train") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.open_storage(url, heartbeat=False, create_dirs=False))


def _overlap(trials) -> bool:
    """At least two trials were running at the same time."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid`: what one `ray start` / one CLI run started."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and int(entry) != os.getpid():
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def test_run_workers_2_runs_trials_at_once_and_retries_a_killed_worker(ray_local, in_tmp, capsys):
    """Two trials at a time, each in a fresh worker process that uploads its model; the worker of
    one trial is SIGKILLed mid-trial: that trial is FAIL "worker died" and runs again."""
    url = "sqlite:///studies/train.db"
    killed: list[tuple[int, int]] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                running = _study(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            except Exception:  # the study is not made yet
                continue
            for t in running:
                if "worker" in t.user_attrs:
                    os.kill(t.user_attrs["worker"]["pid"], signal.SIGKILL)
                    killed.append((t.number, t.user_attrs["worker"]["pid"]))
                    return

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert main(["run", *TINY, "--n-trials", "4", "--workers", "2", "--pruner", "none"]) == 0
    thread.join()
    out = capsys.readouterr().out
    assert killed, "no worker was found to kill"
    study = _study(url)
    trials = study.get_trials()
    number = killed[0][0]
    failed = trials[number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("worker died: ")
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.user_attrs["retry_count"] == 1 and retry.state == TrialState.COMPLETE
    assert retry.params == failed.params
    assert "its parameters are enqueued again" in out
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and st.finished_count(study) == 4
    assert _overlap(complete)
    # Learning curves reached the study from the workers, one value per epoch.
    assert all(sorted(t.intermediate_values) == [0, 1] for t in complete)
    assert len({t.user_attrs["worker"]["pid"] for t in complete} | {killed[0][1]}) == 5  # a fresh process per trial
    # every worker uploaded its model to the study's artifact store and the driver attached it
    from agesearch.search.store.artifacts import exists, model_artifacts, study_store

    store = study_store(study, url)
    assert [len(model_artifacts(t)) for t in complete] == [1] * 4
    assert all(exists(store, model_artifacts(t)[0]["artifact_id"]) for t in complete)
    assert "4/4 finished: 4 complete, 0 pruned, 1 failed, 0 running" in out


def test_drive_storage_under_load_loses_nothing(ray_local, tmp_path):
    """16 trials at once, 5 reports each, a few hundred trials, while another process reads."""
    db = tmp_path / "load.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="load", storage=st.open_storage(url, heartbeat=False), pruner=optuna.pruners.NopPruner())
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib, optuna\n"
            "from agesearch.search.store.study import open_storage\n"
            "s = optuna.load_study(study_name='load', storage=open_storage(sys.argv[1], heartbeat=False))\n"
            "reads = errors = 0\n"
            "while not pathlib.Path(sys.argv[2]).exists():\n"
            "    try:\n"
            "        s.get_trials(deepcopy=False); reads += 1\n"
            "    except Exception as e:\n"
            "        errors += 1; print(repr(e), file=sys.stderr)\n"
            "    time.sleep(0.05)\n"
            "print(reads, errors)\n",
            url,
            str(stop),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    n = 120
    stats = drive(
        study,
        sample=lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": 5, "seconds": 0.01},
        work=sleep_work,
        data=None,
        n_trials=n,
        workers=16,
        cpus_per_trial=0.1,
        fresh_process=False,  # measures the driver and the storage, not process start-up
        progress=lambda line: None,
    )
    stop.touch()
    reads, errors = map(int, reader.communicate(timeout=60)[0].split())
    trials = study.get_trials()
    assert (stats.complete, stats.failed, stats.reports) == (n, 0, 5 * n)
    assert len(trials) == n and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == [0, 1, 2, 3, 4] for t in trials)
    assert reads > 10 and errors == 0
    assert len({t.user_attrs["pid"] for t in trials}) > 1  # the trials really ran side by side
    assert _integrity(db) == "ok"


def _heartbeat_storage(url: str):
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2,
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1, inherit_intermediate_values=False))


def test_drive_trial_of_a_dead_process_is_failed_by_its_heartbeat_and_retried(ray_local, tmp_path):
    storage = _heartbeat_storage(f"sqlite:///{tmp_path / 'stale.db'}")
    study = optuna.create_study(study_name="stale", storage=storage)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(dead._trial_id)  # its last sign of life; then its process "died"
    time.sleep(2.5)
    stats = drive(study, sample=lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": 2}, work=sleep_work, data=None, n_trials=3,
                  workers=2, cpus_per_trial=0.1, fresh_process=False, progress=lambda line: None)
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if RetryHeartbeatStaleTrialCallback_retried_from(t) == dead.number]
    assert retry.params == trials[dead.number].params and retry.state == TrialState.COMPLETE
    assert st.finished_count(study) == 3 and stats.complete == 3


def retry_history(trial) -> list[int]:
    """The trials this one retries, first to last (Optuna's retry callback's record)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def RetryHeartbeatStaleTrialCallback_retried_from(trial):  # noqa: N802
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def test_drive_leaves_a_trial_another_live_process_is_training_alone(ray_local, tmp_path):
    """Another process trains trial 0 (its heartbeat keeps coming) while a Ray run starts."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    storage = _heartbeat_storage(f"sqlite:///{tmp_path / 'live.db'}")
    study = optuna.create_study(study_name="live", storage=storage)
    other = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    with get_heartbeat_thread(other._trial_id, storage):  # the other process, alive for 8 s, then done
        finish = threading.Timer(8.0, lambda: study.tell(other.number, 0.5))
        finish.start()
        stats = drive(study, sample=lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": 3, "seconds": 0.5}, work=sleep_work,
                      data=None, n_trials=3, workers=2, cpus_per_trial=0.1, fresh_process=False, progress=lambda line: None)
        finish.join()
    trials = study.get_trials()
    # Left alone: the other process told it COMPLETE (a FAIL by this run would have made that tell raise).
    assert trials[other.number].state == TrialState.COMPLETE and "fail_reason" not in trials[other.number].user_attrs
    # Two trials here: the live one held the third place, and the run waited for it.
    assert (stats.complete, stats.failed) == (2, 0) and st.finished_count(study) == 3


def test_drive_crashing_worker_is_retried_up_to_max_retries(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    study = optuna.create_study(study_name="crash", storage=st.open_storage(url, heartbeat=False))
    stats = drive(
        study,
        sample=lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": 1, "crash": True},
        work=sleep_work,
        data=None,
        n_trials=1,
        workers=1,
        cpus_per_trial=0.1,
        max_retries=2,
        progress=lambda line: None,
    )
    trials = study.get_trials()
    # The first try and two retries, all with the same params; only the last one counts.
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert [t.user_attrs.get("retry_count") for t in trials] == [None, 1, 2]
    assert len({t.params["x"] for t in trials}) == 1
    assert all(t.user_attrs["fail_reason"].startswith("worker died: ") for t in trials)
    assert stats.retried == 2


def test_drive_interrupt_fails_running_trials_and_enqueues_them_again(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path / 'intr.db'}"
    study = optuna.create_study(study_name="intr", storage=st.open_storage(url, heartbeat=False))
    sample = lambda t: {"x": t.suggest_float("x", 0.0, 1.0), "steps": 3, "seconds": 0.2}  # noqa: E731

    def ctrl_c(number, epoch, value):  # the user presses Ctrl-C while epochs come in
        raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SearchInterrupted, match=r"^interrupted; running trial\(s\) #0, #1 marked FAIL and enqueued again"):
            drive(study, sample=sample, work=sleep_work, data=None, n_trials=3, workers=2, cpus_per_trial=0.1,
                  fresh_process=False, on_epoch=ctrl_c, progress=lambda line: None)
    finally:
        signal.signal(signal.SIGINT, handler)  # the driver arms "a second Ctrl-C exits at once"
    trials = study.get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in trials[:2])
    assert st.finished_count(study) == 0  # interrupted trials do not count toward n_trials
    # The resume runs the interrupted trials first, with their parameters, then a new one.
    stats = drive(study, sample=sample, work=sleep_work, data=None, n_trials=3, workers=2, cpus_per_trial=0.1,
                  fresh_process=False, progress=lambda line: None)
    trials = study.get_trials()
    assert stats.complete == 3 and st.finished_count(study) == 3
    for number in (0, 1):
        (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
        assert retry.state == TrialState.COMPLETE and retry.params == trials[number].params


@pytest.fixture
def ray_cluster():
    """`ray start --head` on loopback with its own port, temp dir and token; ended by session.

    The short temp dir keeps Ray's socket paths under the Unix limit. HOME is a temp folder
    holding a fresh auth token, so the cluster runs with token authentication as on a user's
    machine and the test never touches the real ~/.ray.
    """
    root = Path(tempfile.mkdtemp(prefix="asray", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = _free_port()
    start = subprocess.Popen(
        [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--temp-dir", str(root / "t"), "--include-dashboard=false", "--disable-usage-stats"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = start.communicate(timeout=90)[0]
        assert start.returncode == 0, out[-2000:]
        yield f"127.0.0.1:{port}", env, root
    finally:
        _kill_session(start.pid)  # gcs, raylet, its workers: all in the session of `ray start`


def test_run_joins_a_ray_cluster_by_address(ray_cluster, tmp_path, cache_dir):
    address, env, root = ray_cluster
    env = dict(env, AGESEARCH_CACHE_DIR=str(cache_dir))
    result = subprocess.run(
        [*AGESEARCH, "run", *TINY, "--n-trials", "2", "--epochs", "1", "--address", address],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ray: Ray cluster at {address} with 2 CPUs" in result.stdout
    study = _study(f"sqlite:///{tmp_path / 'studies' / 'train.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    # The workers were the cluster's: their logs are in its temp dir.
    assert list((root / "t").glob("session_*/logs/worker-*.out"))


def test_run_on_ray_ctrl_c_then_a_killed_driver_then_a_resume_reaches_the_count(tmp_path, cache_dir):
    """Three runs of one command on one study:
    1. Ctrl-C mid-trial: one line, exit 130; the running trials FAIL "interrupted (Ctrl-C)".
    2. The driver SIGKILLed mid-search (as if its machine lost it): its trials stay RUNNING.
    3. A resume fails those by their heartbeat, retries them and the interrupted ones with their
       parameters, and brings the study to its count with nothing finished lost or changed."""
    db = tmp_path / "studies" / "train.db"
    url = f"sqlite:///{db}"
    # Two retries: a trial interrupted in run 1 may be killed again, as its retry, in run 2.
    cmd = [*AGESEARCH, "run", *TINY, "--n-trials", "3", "--workers", "2", "--pruner", "none", "--max-retries", "2"]
    env = dict(os.environ, AGESEARCH_CACHE_DIR=str(cache_dir), RAY_AUTH_MODE="disabled")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if " epoch 1/2 " in line:  # a trial is mid-way
                first.send_signal(signal.SIGINT)
                break
        _, err = first.communicate(timeout=120)
    finally:
        _kill_session(first.pid)
    assert first.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("agesearch: interrupted; running trial(s) #"), err[-2000:]
    study = _study(url)
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("fail_reason") == "interrupted (Ctrl-C)"]
    assert interrupted and st.finished_count(study) == sum(t.state == TrialState.COMPLETE for t in study.get_trials())

    complete_before = st.finished_count(study)
    second = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and second.poll() is None:
            time.sleep(0.3)
            try:
                trials = _study(url).get_trials()
            except Exception:
                continue
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            # A running trial whose worker started: past its first heartbeat.
            if len(complete) > complete_before and any(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in trials):
                second.send_signal(signal.SIGKILL)  # the driver only
                before = {t.number: t.value for t in complete}
                break
        assert before, "the driver was not caught mid-search"
        second.wait(timeout=30)
    finally:
        _kill_session(second.pid)  # what Ray's reaper did not end of that run's runtime

    third = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)  # the heartbeat grace first
    assert third.returncode == 0, third.stderr[-2000:]
    assert "its process stopped (no heartbeat for the grace period)" in third.stdout
    study = _study(url)
    trials = study.get_trials()
    assert st.finished_count(study) == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, value in before.items():  # nothing finished was lost or changed
        assert trials[number].state == TrialState.COMPLETE and trials[number].value == value
    for t in interrupted:  # each ran again with its parameters
        assert [r for r in trials if r.user_attrs.get("retry_of") == t.number and r.params == t.params]
    stale = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs]
    assert stale and all(any(t.number in retry_history(r) for r in trials) for t in stale)
    assert _integrity(db) == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "ray"])
def test_run_grid_space_never_runs_a_point_twice_and_stops_when_used_up(tmp_path, cache_dir, workers):
    """A grid space (registered here, three points) through both executors: three trials, then done."""
    from agesearch.models import ModelConfig
    from agesearch.models.config import TrainConfig
    from agesearch.search.loop.run import DataSpec, run_search
    from agesearch.spaces import SPACES, register_space

    name = f"grid3-{workers}"
    rates = [1e-3, 2e-3, 3e-3]

    @register_space(name, grid=lambda image_size: {"learning_rate": rates})
    def grid3(trial, image_size):
        lr = trial.suggest_categorical("learning_rate", rates)
        model = ModelConfig(image_size=image_size, shared_blocks=1, age_blocks=1, gender_blocks=1, filters=(8, 16), age_dense=16, gender_dense=16)
        return model, TrainConfig(learning_rate=lr, batch_size=64)

    try:
        study = run_search(name, data=DataSpec(image_size=16, limit=120, synthetic_count=200, cache_dir=cache_dir), storage=f"sqlite:///{tmp_path / 'g.db'}",
                           n_trials=10, epochs=1, workers=workers, cpus_per_trial=1.0, artifacts=str(tmp_path / "models"))
    finally:
        SPACES.pop(name)
    trials = study.get_trials()
    assert sorted(t.params["learning_rate"] for t in trials) == rates  # each point once, and no more trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
