"""Every benchmarks/*.py script still imports and prints its --help (benchmarks are not run in CI).

Each script runs as `python SCRIPT --help` would (its folder first on sys.path, `__main__`), in
a fresh interpreter without AGESEARCH_DATA and with the heavy and optional frameworks blocked:
--help must answer before Keras, TensorFlow, JAX, PyTorch, Ray or KerasTuner load, so that a
machine without the `bench` extra can still read it, and each script takes well under a second.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
BLOCKED = ("keras_tuner", "keras", "tensorflow", "jax", "torch", "ray")

RUNNER = f"""
import runpy, sys

class Blocked:  # as a machine without the frameworks and the optional packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is blocked: --help must not need it")

sys.meta_path.insert(0, Blocked())
script = sys.argv[1]
sys.argv = [script, *(sys.argv[2:] or ["--help"])]
sys.path[0] = __import__("os").path.dirname(script)
runpy.run_path(script, run_name="__main__")
"""


def _help(script: Path, *args: str) -> subprocess.CompletedProcess:
    """`python SCRIPT --help` (or SCRIPT ARGS when given) in the blocked interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "AGESEARCH_DATA"}
    return subprocess.run([sys.executable, "-c", RUNNER, str(script), *args], cwd=BENCHMARKS.parent, env=env, capture_output=True, text=True, timeout=120)


def _purpose(script: Path) -> str:
    """The first line of the script's docstring: what it measures."""
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc, f"{script.name} has no docstring saying what it measures"
    return " ".join(doc.strip().splitlines()[0].split())


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help_says_what_it_measures(script):
    """--help exits 0 and states the purpose; --data, where a script takes it, is required (no
    machine's folder as its default: AGESEARCH_DATA is unset here)."""
    done = _help(script)
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert done.stdout.startswith("usage: "), done.stdout[:500]
    words = " ".join(done.stdout.split())  # argparse re-wraps the description
    assert _purpose(script) in words, f"{script.name} --help does not state its purpose:\n{done.stdout[:1000]}"
    usage = " ".join(done.stdout.split("\n\n")[0].split())
    if "[--data" in usage:  # optional in the usage line (another option can name the data): still no default
        bare = _help(script, "--out", os.devnull)
        assert bare.returncode == 2 and "--data" in bare.stderr, f"{script.name}: runs without --data:\n{bare.stderr[-1000:]}"
