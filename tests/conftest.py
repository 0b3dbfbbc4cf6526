"""Shared fixtures: a private decoded-image cache, small synthetic sets, quiet TensorFlow."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A killed process's trials are found stale after 3 heartbeats: 9 s instead of 30 s in the kill/resume tests.
os.environ.setdefault("AGESEARCH_HEARTBEAT_SECONDS", "3")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface-5k"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`agesearch ARGS` in-process: (exit code, stdout, stderr)."""
    from agesearch.search.cli import main

    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors exit from the parser
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """Every test decodes into one session cache, never into the user's ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AGESEARCH_CACHE_DIR")
    os.environ["AGESEARCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("AGESEARCH_CACHE_DIR", None)
    else:
        os.environ["AGESEARCH_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def synthetic_dir(cache_dir) -> Path:
    """The default synthetic set (1,200 faces), drawn once per session."""
    from agesearch.search.data.synthetic import synthetic_folder

    return synthetic_folder(1200, seed=0, cache_dir=cache_dir)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so studies/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@contextlib.contextmanager
def dashboard_server(argv: list[str], port: int):
    """Start a dashboard process, wait until its API answers, stop it (that process only)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    raise AssertionError(f"the dashboard exited with {proc.returncode}: {proc.stdout.read()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("the dashboard did not answer within 60 s") from None
                time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The session-scoped finished study (4 searched trials, a pruned and a failed one), trained once
# and shared by the report, browser, artifact and export tests.
from report_study import finished  # noqa: E402,F401


# The longest tests (a minute or more each on 2 cores: several processes, Ray runtimes) start
# first, so that under `-n 2` none of them is the last thing one worker runs while the other
# idles; `--dist worksteal` then evens out the rest. Written here: pytest-xdist has no
# longest-first order. Each uses function- or session-scoped fixtures only, so moving it out of
# its module sets nothing up twice.
LONG_FIRST = (
    "test_run_on_ray_ctrl_c_then_a_killed_driver_then_a_resume_reaches_the_count",
    "test_ctrl_c_is_one_line_and_the_resume_reruns_the_interrupted_trial",
    "test_two_processes_on_one_study_share_the_total_and_repeat_nothing",
    "test_run_joins_a_ray_cluster_by_address",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.originalname not in LONG_FIRST)  # stable: the rest keep their order
