"""The labeling page in a real browser (headless Chromium through Playwright): label by mouse
and by keyboard, undo, skip; then the store holds exactly those labels. A wrong token sees no data.

Then the issue-20 pages: a digits site's 8x8 digit and an image folder's image drawn as images of
their shape (the decoded <img> size and its pixels, read back in the browser), class names on the
buttons, and the pages between grants ("more may come later") and at the end of the run.

Skips only when no Chromium is installed (CI installs Debian's, see .ci/run). Screenshots go to
the test's tmp dir; ``FEDAL_UPDATE_SCREENSHOT=1`` also writes them to docs/ (labeling-page.png,
labeling-digits.png, labeling-between-grants.png, labeling-finished.png).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fedal.annotate.annotators import mark_run
from fedal.data.site import load_site_data
from fedal.store import PoolStore, site_store_path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "site-a-token-0123456789abcdef"
# a heart-rhythm site: twelve classes, keys 0-9, then a, b
CLASSES = ["normal", "atrial fib.", "flutter", "tachycardia", "bradycardia", "block", "ectopic", "paced",
           "noise", "artifact", "ischemia", "other"]
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


def serve(data, state, experiment_id="exp-1", client_id="site-a", token_file=None):
    """fedal-annotate as a site runs it, serving ``data`` with the store under ``state``; the URL
    and the process."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fedal.annotate.app", "--data-path", str(data), "--state-dir",
                             str(state), "--experiment-id", experiment_id, "--client-id", client_id, "--port",
                             str(port), "--token-file", str(token_file), "--annotator", "tester"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return url, proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"fedal-annotate exited: {proc.communicate()[1]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("fedal-annotate did not start within 60 s")
        time.sleep(0.2)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


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
    url, proc = serve(data, state, token_file=token_file)
    try:
        yield {"url": url, "db": db, "site": site, "tmp": tmp_path}
    finally:
        stop(proc)


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
            assert "The model\u2019s guess: bradycardia (62% sure)" in page.locator("#guess").inner_text()
            assert "2 points labeled · 38 left now" in page.locator("#progress").inner_text()
            assert page.locator("#last").count() == 0  # nothing of this person's to confirm or undo yet
            expected = {}

            q1 = shown(page)  # by mouse
            with page.expect_navigation():
                page.click("#class-3")
            expected[q1[1]] = 3
            q2 = shown(page)
            assert q2 != q1
            assert "Your last label: \u2018tachycardia\u2019" in page.locator("#last").inner_text()
            assert page.locator("#undo").inner_text().startswith("Undo \u2018tachycardia\u2019")
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
            assert "6 points labeled · 34 left now" in page.locator("#progress").inner_text()
            assert page.locator("#undo").inner_text().startswith("Undo \u2018normal\u2019")  # names what it undoes
            with page.expect_navigation():  # undo the last label: the point comes back
                page.keyboard.press("Backspace")
            assert shown(page) == q4 and "your label \u2018normal\u2019 was removed" in page.locator("#note").inner_text()
            assert "5 points labeled · 35 left now" in page.locator("#progress").inner_text()
            assert page.locator("#undo").inner_text().startswith("Undo \u2018other\u2019")  # the label before
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


# ---------------------------------------------------------------------------------- images and page states
@contextmanager
def browser_page(width=1000, height=760):
    """A headless Chromium page (skips when no Chromium is installed)."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); CI installs it in .ci/run")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(10_000)
            yield page
        finally:
            browser.close()


def site_with_queries(tmp_path, data, indices, *, budget, dataset=None, guesses=None):
    """A site's store (as its ClientApp leaves it: ``dataset`` recorded by ``mark_run``) with open
    queries on ``indices``, and fedal-annotate serving it: (url, process, store path, site data)."""
    site = load_site_data(data, "site-a")
    state = tmp_path / "state"
    state.mkdir()
    db = site_store_path(state, "exp-1", "site-a")
    with PoolStore(db, "exp-1", "site-a", site.n_points, site.fingerprint) as s:
        if dataset:
            mark_run(s, dataset=dataset, finished=False)
        s.set_budget(budget)
        s.add_queries(indices, model_version=1, strategy="margin", guesses=guesses,
                      confidences=None if guesses is None else [0.7] * len(indices))
    (tmp_path / "token").write_text(TOKEN)
    url, proc = serve(data, state, token_file=tmp_path / "token")
    return url, proc, db, site


def loaded(page):
    """Wait until the point's image is decoded (the page's CSP forbids eval, so no wait_for_function)."""
    page.locator("#point-image").evaluate(
        "el => el.complete ? true : new Promise(done => { el.onload = () => done(true); })")


# the <img>'s decoded size, its size on screen, and the red channel at the centre of each of the
# data's pixels (blocks of `scale` screen pixels), read back through a canvas
READ_IMAGE = """([rows, cols, scale]) => {
  const el = document.getElementById('point-image');
  const c = document.createElement('canvas');
  c.width = el.naturalWidth; c.height = el.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(el, 0, 0);
  const px = [];
  for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++)
    px.push(g.getImageData(k * scale + (scale >> 1), r * scale + (scale >> 1), 1, 1).data[0]);
  return {natural: [el.naturalWidth, el.naturalHeight], shown: [el.clientWidth, el.clientHeight], px: px};
}"""


def test_a_digits_site_shows_each_digit_as_an_8x8_image_with_digit_buttons(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:20] / 16.0).astype("float32")  # fedal's digits: 64 values per point, as the ClientApp has them
    np.savez(tmp_path / "digits.npz", x=x)
    url, proc, db, site = site_with_queries(tmp_path, tmp_path / "digits.npz", [7, 3, 12], budget=10,
                                            dataset="digits", guesses=[7, 3, 2])
    try:
        with browser_page() as page:
            page.goto(f"{url}/?token={TOKEN}")
            loaded(page)
            assert page.locator("svg.signal").count() == 0  # not a "64 samples" line chart
            index = shown(page)[1]
            got = page.evaluate(READ_IMAGE, [8, 8, 35])
            assert got["natural"] == [280, 280]  # 8x8, each pixel a 35x35 block
            assert got["shown"][0] >= 200 and got["shown"][1] >= 200  # drawn at a size a person can read
            ink = 255 - np.rint(255 * x[index]).astype(int)  # the digit's own pixels, ink dark on white
            assert got["px"] == ink.tolist()
            assert [page.locator(f"#class-{k}").inner_text().split()[0] for k in range(10)] == list("0123456789")
            assert f"The model\u2019s guess: {d.target[index]}" in page.locator("#guess").inner_text()
            with page.expect_navigation():
                page.keyboard.press(str(d.target[index]))
            assert page.locator("#last img").count() == 1  # the digit just labeled, small, beside its label
            assert f"Your last label: \u2018{d.target[index]}\u2019" in page.locator("#last").inner_text()
            page.screenshot(path=str(tmp_path / "labeling-digits.png"))
            if os.environ.get("FEDAL_UPDATE_SCREENSHOT"):
                page.screenshot(path=str(ROOT / "docs" / "labeling-digits.png"))
    finally:
        stop(proc)
    with PoolStore(db, "exp-1", "site-a", site.n_points, site.fingerprint) as s:
        assert dict(zip(*map(np.ndarray.tolist, s.labeled_arrays()))) == {index: int(d.target[index])}


def test_an_image_folder_site_shows_its_images_at_their_shape_with_its_folder_names(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    for name in ("benign", "malignant"):
        (folder / name).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name / f"{j}.png")
    url, proc, _, site = site_with_queries(tmp_path, folder, [4], budget=3)
    try:
        with browser_page() as page:
            page.goto(f"{url}/?token={TOKEN}")
            loaded(page)
            got = page.evaluate(READ_IMAGE, [24, 32, 12])
            assert got["natural"] == [384, 288]  # 32 wide, 24 high, each pixel 12x12: the shape kept
            assert got["shown"] == [384, 288]
            assert got["px"] == site.x[4][:, :, 0].reshape(-1).tolist()  # the image's own pixels (red)
            assert [page.locator(f"#class-{k}").inner_text().split()[0] for k in range(2)] == ["benign", "malignant"]
    finally:
        stop(proc)


def test_between_grants_the_page_says_more_may_come_and_turns_into_the_finished_page(tmp_path):
    x = np.random.default_rng(2).normal(size=(10, 40)).astype("float32")
    np.savez(tmp_path / "s.npz", x=x)
    url, proc, db, site = site_with_queries(tmp_path, tmp_path / "s.npz", [1, 2], budget=2, dataset="mnist1d")
    try:
        with browser_page() as page:
            page.goto(f"{url}/?token={TOKEN}")
            for key in ("4", "9"):  # the site's grant, labeled
                with page.expect_navigation():
                    page.keyboard.press(key)
            empty = page.locator("#empty")
            assert empty.get_attribute("data-state") == "between-grants"
            text = empty.inner_text()
            assert "All done for now" in text and "More points may come later" in text and "leave this page open" in text
            assert "2 points labeled · 0 left now" in page.locator("#progress").inner_text()
            assert page.locator("#undo").inner_text().startswith("Undo \u20189\u2019")  # a slip can still be undone
            page.screenshot(path=str(tmp_path / "labeling-between-grants.png"))
            if os.environ.get("FEDAL_UPDATE_SCREENSHOT"):
                page.screenshot(path=str(ROOT / "docs" / "labeling-between-grants.png"))
            with PoolStore(db, "exp-1", "site-a", site.n_points, site.fingerprint) as s:
                mark_run(s, dataset="mnist1d", finished=True)  # the run's last message reaches the site
            # the page looks again by itself (every 5 s) and says the run is over
            page.locator("#empty[data-state=finished]").wait_for(timeout=20_000)
            text = page.locator("#empty").inner_text()
            assert "This labeling run has finished" in text and "you can close this page" in text
            assert page.locator("#undo").count() == 0 and "labeling finished" in page.locator("#progress").inner_text()
            page.screenshot(path=str(tmp_path / "labeling-finished.png"))
            if os.environ.get("FEDAL_UPDATE_SCREENSHOT"):
                page.screenshot(path=str(ROOT / "docs" / "labeling-finished.png"))
            time.sleep(1)
            r = page.reload()  # and it stays up, saying so, until the operator stops it
            assert r.status == 200 and page.locator("#empty").get_attribute("data-state") == "finished"
    finally:
        stop(proc)
