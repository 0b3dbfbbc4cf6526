"""Append a benchmark's numbers, with its command and machine, to benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        gpus = []
    gpu = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({gpus[0].split(' (')[0]})" if gpus else "no GPU"
    return f"{os.cpu_count()} cores, {cpu}, {gpu}, Python {platform.python_version()}, KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}"


def record(title: str, lines: list[str], *, out: str | Path | None = None, table: list[str] | None = None) -> None:
    """Print the lines and append them as a section of RESULTS.md (or of `out`, e.g. a device run's file).

    `table` lines (a markdown table) follow the bullet lines as they are.
    """
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"## {title} ({stamp})", "", f"- command: `{command}`", f"- machine: {machine()}", *[f"- {l}" for l in lines]]
    if table:
        body += ["", *table]
    text = neutral_paths("\n".join([*body, "", ""]))
    print(text)
    path = Path(out) if out is not None else RESULTS
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmark results\n\nEvery section was written by the script named in its command line.\n\n")
    with path.open("a") as f:
        f.write(text)


def neutral_paths(text: str) -> str:
    """The record without this machine's paths: the checkout as `.`, its parent as `..`, the
    temporary folder as `$TMPDIR`, the home folder as `~` (RESULTS.md is read on other machines)."""
    import tempfile

    here = Path(__file__).resolve()
    for path, name in ((here.parents[1], "."), (here.parents[2], ".."), (Path(tempfile.gettempdir()).resolve(), "$TMPDIR"), (Path.home(), "~")):
        text = text.replace(str(path).rstrip("/") + "/", name + "/")
    return text


def add_data_argument(parser, *, required: bool = True) -> None:
    """`--data`: the image folder (or 'synthetic'); required unless AGESEARCH_DATA names one
    (or `required` is False: a script that can read its data elsewhere checks it itself).

    No default outside the repository: a benchmark measures the data its caller points it at.
    """
    default = os.environ.get("AGESEARCH_DATA")
    parser.add_argument("--data", default=default, required=required and default is None,
                        help="image folder of UTKFace-named faces, or 'synthetic' (default: $AGESEARCH_DATA)")


def split_run_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the flags after `--` that go to `agesearch run` unchanged)."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]
