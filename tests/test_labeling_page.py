"""The labeling page in a real browser (headless Chromium through Playwright): label by mouse
and by keyboard, undo, skip; then the store holds exactly those labels. A wrong token sees no data.

Skips only when no Chromium is installed (CI installs Debian's, see .ci/run). The screenshot
goes to the test's tmp dir; ``FEDAL_UPDATE_SCREENSHOT=1`` also writes docs/labeling-page.png.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedal.data.site import load_site_data
from fedal.store import PoolStore, site_store_path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "site-a-token-0123456789abcdef"
CLASSES = [f"class {c}" for c in range(12)]  # keys 0-9, then a, b
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page_server(tmp_path):
    """A small .npz site, its pool store with six open queries, and fedal-annotate serving it."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 40)
    x = np.stack([np.sin(t * (1 + k % 5) / 2) + 0.2 * rng.normal(size=40) for k in range(30)]).astype("float32")
    data = tmp_path / "site.npz"
    np.savez(data, x=x, class_names=np.array(CLASSES))
    site = load_site_data(data, "site-a")
    state = tmp_path / "state"
    state.mkdir()
    db = site_store_path(state, "exp-1", "site-a")
    with PoolStore(db, "exp-1", "site-a", site.n_points, site.fingerprint) as s:
        s.set_budget(40)
        s.acquire(0, lambda p: [0, 1], lambda i: [2, 3])  # labels paid earlier, synchronously
        s.add_queries([7, 3, 12, 20, 25, 9], model_version=3, strategy="entropy",
                      guesses=[4, 1, 11, 0, 2, 5], confidences=[0.62, 0.4, 0.9, 0.3, 0.5, 0.7])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedal.annotate.app", "--data-path", str(data), "--state-dir",
                             str(state), "--experiment-id", "exp-1", "--client-id", "site-a", "--port", str(port),
                             "--token-file", str(token_file), "--annotator", "tester"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"fedal-annotate exited: {proc.communicate()[1]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("fedal-annotate did not start within 60 s")
        time.sleep(0.2)
    try:
        yield {"url": url, "db": db, "site": site, "tmp": tmp_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def shown(page):
    meta = page.locator("#query-meta")
    return int(meta.get_attribute("data-query-id")), int(meta.get_attribute("data-index"))


def test_label_by_mouse_and_keyboard_undo_and_skip_land_exactly_in_the_store(page_server):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); CI installs it in .ci/run")
    from playwright.sync_api import sync_playwright

    url, db, site = page_server["url"], page_server["db"], page_server["site"]
    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.set_default_timeout(10_000)  # a key that does nothing fails in 10 s, not 30
            page.goto(f"{url}/?token={TOKEN}")
            assert page.url == url + "/"  # the token moved into a cookie, out of the URL
            assert page.locator("svg.signal polyline").count() == 1
            assert "Model's guess: class 4 (confidence 62%)" in page.locator("#guess").inner_text()
            assert "2 / 40 labels paid" in page.locator("#progress").inner_text()
            expected = {}

            q1 = shown(page)  # by mouse
            with page.expect_navigation():
                page.click("#class-3")
            expected[q1[1]] = 3
            q2 = shown(page)
            assert q2 != q1
            page.screenshot(path=str(page_server["tmp"] / "labeling-page.png"))
            if os.environ.get("FEDAL_UPDATE_SCREENSHOT"):
                page.screenshot(path=str(ROOT / "docs" / "labeling-page.png"))
            with page.expect_navigation():  # by keyboard: a digit
                page.keyboard.press("7")
            expected[q2[1]] = 7
            q3 = shown(page)
            with page.expect_navigation():  # a letter: the 12th class
                page.keyboard.press("b")
            expected[q3[1]] = 11
            q4 = shown(page)
            with page.expect_navigation():
                page.click("#class-0")
            q5 = shown(page)
            assert "6 / 40 labels paid" in page.locator("#progress").inner_text()
            with page.expect_navigation():  # undo the last label: the point comes back
                page.keyboard.press("Backspace")
            assert shown(page) == q4 and f"point {q4[1]} is back" in page.locator("#note").inner_text()
            assert "5 / 40 labels paid" in page.locator("#progress").inner_text()
            with page.expect_navigation():  # and skip it instead
                page.keyboard.press(" ")
            assert shown(page) == q5
            elapsed = time.time() - t0

            # a wrong or missing token: 403/401 and not a byte of the site's data
            other = browser.new_context()
            bad = other.new_page()
            r = bad.goto(f"{url}/?token=not-the-token-0000000")
            assert r.status == 403 and bad.locator("svg").count() == 0 and "data-index" not in bad.content()
            r = bad.goto(url + "/")
            assert r.status == 401 and bad.locator("svg").count() == 0
            for path in (f"/point/{q5[0]}.png", "/api/progress"):
                assert other.request.get(url + path, headers={"Authorization": "Bearer wrong-token-000000"}).status == 403
            assert other.request.post(url + "/label", form={"query_id": str(q5[0]), "label": "1"}).status == 401
            other.close()
        finally:
            browser.close()
    print(f"browser session: {elapsed:.1f} s")

    with PoolStore(db, "exp-1", "site-a", site.n_points, site.fingerprint) as s:
        idx, lab = s.labeled_arrays()
        got = dict(zip(idx.tolist(), lab.tolist()))
        assert got == {0: 2, 1: 3, **expected}  # exactly those labels; the undone one is not there
        assert q4[1] not in got and s.query(q4[0]).state == "skipped"
        assert s.query(q5[0]).state == "open"  # shown, not answered: nothing paid
        by = {q.closed_by for q in s.queries("labeled")}  # one browser session, named after --annotator
        assert len(by) == 1 and by.pop().startswith("tester/")
        p = s.progress()
        assert (p.labeled, p.labeled_queries, p.skipped, p.open) == (5, 3, 1, 2)
