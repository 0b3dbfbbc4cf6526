"""optuna-dashboard on an agesearch study: its API lists the study, the trials with their
intermediate values and user attrs; `agesearch dashboard` listens on loopback only.

Each test starts one server process on a free loopback port and stops exactly that process.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from conftest import dashboard_server, get_json
from report_study import hand_made_study

pytest.importorskip("optuna_dashboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.fixture
def study_db(tmp_path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'studies' / 'dash.db'}"
    (tmp_path / "studies").mkdir()
    return url, hand_made_study(url, "dash", n=5)


def check_api(port: int, study: optuna.Study) -> None:
    listed = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in listed] == [study.study_name]
    detail = get_json(f"http://127.0.0.1:{port}/api/studies/{listed[0]['study_id']}?after=0")
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [t.number for t in study.trials]
    first = trials[0]
    assert [(iv["step"], iv["value"]) for iv in first["intermediate_values"]] == sorted(study.trials[0].intermediate_values.items())
    attrs = {a["key"]: a["value"] for a in first["user_attrs"]}
    assert {"val_age_mae", "val_gender_accuracy", "history", "model_config"} <= set(attrs)
    assert float(attrs["val_age_mae"]) == pytest.approx(study.trials[0].user_attrs["val_age_mae"])


def test_optuna_dashboard_serves_an_agesearch_study(study_db):
    # exactly the README's command, with a free port
    url, study = study_db
    port = free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    with dashboard_server([str(exe), url, "--host", "127.0.0.1", "--port", str(port)], port):
        check_api(port, study)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if int(hexport, 16) == port and state == "0A":  # 0A = LISTEN
                found.add(addr)
    return found


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_agesearch_dashboard_listens_on_loopback_and_never_fails_a_trial(study_db):
    url, study = study_db
    # a trial being trained right now, whose heartbeat has gone stale
    writer = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)
    optuna.load_study(study_name="dash", storage=writer).ask()
    time.sleep(2.2)
    port = free_port()
    argv = [sys.executable, "-m", "agesearch.search.cli", "dashboard", "--storage", url, "--study", "dash", "--port", str(port)]
    with dashboard_server(argv, port):
        check_api(port, optuna.load_study(study_name="dash", storage=url))
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert optuna.load_study(study_name="dash", storage=url).trials[-1].state == TrialState.RUNNING


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--study", "nope"], r"no study database at studies/nope\.db"),
        ([], r"pass --study NAME or --storage URL \(study files in studies/: none\)"),
        (["--port", "70000"], r"argument --port: must be a TCP port 0-65535, got '70000'"),
    ],
)
def test_agesearch_dashboard_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from agesearch.search.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        rc = main(["dashboard", *argv])
    except SystemExit as e:  # argparse's own errors exit from the parser
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and re.search(message, err), err
