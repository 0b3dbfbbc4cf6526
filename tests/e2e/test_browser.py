"""The report in a real browser: headless Chromium loads it offline, with no console errors,
every plot rendered, and a screenshot that is not blank.

Chromium is driven over the DevTools protocol (websocket-client from the `test` extra), which
reports console errors and uncaught exceptions as events; skipped where Chromium is missing.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]


class DevTools:
    """Just enough of the DevTools protocol: send a command, wait for its answer, keep events."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                found.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(json.dumps(p.get("args"))[:500])
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                found.append(p["entry"].get("text", "")[:500])
        return found


@pytest.fixture(scope="module")
def report_page(finished) -> Path:
    from agesearch.search.cli import main

    files = finished
    out = files.root / "browser-report.html"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", "--study", files.name, "--storage", files.url, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
            "--window-size=1400,1000", "--hide-scrollbars", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # port 0: Chromium picks a free port and announces it on stderr
        deadline = time.monotonic() + 60
        endpoint = None
        while time.monotonic() < deadline and endpoint is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line)
            endpoint = m.group(1) if m else None
        assert endpoint, "Chromium did not start its DevTools endpoint"
        # keep draining stderr so Chromium never blocks on a full pipe
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        targets = json.load(urllib.request.urlopen(f"http://{endpoint}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        with contextlib.suppress(Exception):
            tools.ws.close()
    finally:
        proc.terminate()  # only the browser this fixture started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def loaded(browser, report_page):
    browser.call("Runtime.enable")
    browser.call("Log.enable")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=report_page.as_uri())
    browser.wait_for("Page.loadEventFired", timeout=120)
    # Plotly draws each figure into an svg.main-svg when its script runs; wait until all have.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        want, drawn = browser.evaluate(
            "[document.querySelectorAll('.plotly-graph-div').length,"
            " [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('svg.main-svg')).length]"
        )
        if want and want == drawn:
            break
        time.sleep(0.5)
    return browser


def test_browser_loads_the_report_without_console_errors(loaded):
    assert loaded.evaluate("typeof Plotly") == "object"
    assert loaded.errors() == []


def test_browser_renders_every_plot_and_face(loaded):
    want, drawn = loaded.evaluate(
        "[document.querySelectorAll('.plotly-graph-div').length,"
        " [...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('svg.main-svg')).length]"
    )
    assert want >= 8 and drawn == want
    # every face PNG decoded (naturalWidth is 0 for a broken image)
    assert loaded.evaluate("[...document.querySelectorAll('#faces img')].filter(i => i.complete && i.naturalWidth === 32).length") == 20


@pytest.mark.parametrize("section", ["history", "learning-curves", "predictions"])
def test_browser_screenshot_of_plots_is_not_blank(loaded, section, tmp_path):
    from PIL import Image

    loaded.evaluate(f"document.getElementById('{section}').scrollIntoView()")
    time.sleep(0.3)
    shot = loaded.call("Page.captureScreenshot", format="png")["data"]
    path = tmp_path / f"{section}.png"
    path.write_bytes(base64.b64decode(shot))
    img = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    # A blank or single-colour page has (almost) no variance and a handful of colours; a plot
    # with axes, text and lines has both.
    assert img.std() > 15
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200
