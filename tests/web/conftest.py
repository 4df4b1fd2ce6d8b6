"""Fixtures of the viewer tests: a running `appion serve` and a headless system Chromium.

Chromium and chromedriver are Debian's packages (`apt-get install chromium chromium-driver`);
selenium talks to them directly (no driver or browser download).  Locally a missing browser
skips the browser tests; in CI (CI set) it fails them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class Server:
    """`appion serve --port 0` in a child process; url is its base address."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen(["appion", "serve", "--port", "0"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r"http://[^ ]+/", line)
        if not found:
            self.stop()
            raise RuntimeError(f"appion serve did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = found.group(0).rstrip("/")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def serve():
    """Start servers for given environments; all are stopped at the end of the test."""
    servers: list[Server] = []

    def start(env: dict | None = None) -> Server:
        server = Server(dict(env or os.environ))
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def chromium():
    """A headless system Chromium driven by selenium (one browser for the whole run)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        _missing("Chromium is not installed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="appion-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1440,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.2, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last value {last!r})")


def save_screenshot(driver, name: str, full_page: bool = False) -> Path:
    """A PNG of the page in test-artifacts/ (the whole page, up to 4000 px, when full_page)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    size = driver.get_window_size()
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(max(height + 120, size["height"]), 4000))
    driver.save_screenshot(str(path))
    if full_page:
        driver.set_window_size(size["width"], size["height"])
    return path


def read_table(driver) -> dict[int, dict[str, str]]:
    """Every visible row in page order: image id → column → text (one script call, not one per cell)."""
    return {int(k): v for k, v in driver.execute_script("""
        const out = [];
        for (const tr of document.querySelectorAll('#rows tr')) {
          const row = {};
          for (const td of tr.querySelectorAll('[data-col]')) row[td.dataset.col] = td.innerText.trim();
          const badge = tr.querySelector('.badge');
          row.status = badge ? badge.innerText.trim() : '';
          row.thumb = tr.querySelector('td.thumb img') ? tr.querySelector('td.thumb img').getAttribute('src') : '';
          out.push([tr.dataset.id, row]);
        }
        return out;""")}
