"""What the labeling page says to the person who labels (fedal/annotate/pages.py, app.py): the last
label confirmed with an Undo that names it, and, when there is nothing to label, why: nothing asked
yet, points being prepared, all done for now (more may come later), or the run has finished (as
the ClientApp records it in the store, fedal/async_labeling.py). In plain words: the page's main
text has no "query", "open queries", "paid" or "AL round"; those stay in the small details line.
The browser checks are in tests/test_labeling_page.py."""

import re
import warnings
from urllib.parse import unquote

import numpy as np
import pytest

from fedal.annotate import app as appmod
from fedal.annotate.annotators import mark_run, run_state
from fedal.data.info import dataset_info, site_display
from fedal.store import PoolStore
from tests.test_async_reserve import site  # noqa: F401  (the fixture: a site that takes query.labeling messages)

TOKEN = "a-token-of-enough-length-42"
NAMES = ["cat", "dog", "bird"]
JARGON = ("query", "queries", "paid", "AL round", "budget", "margin", "entropy", "strategy")


@pytest.fixture
def page(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 40)).astype("float32")
    store = PoolStore(tmp_path / "p.sqlite", "exp", "site-a", len(x), "fp")
    site = appmod.LabelingSite(store, x, NAMES, TOKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        c = TestClient(appmod.create_app(site), base_url="http://127.0.0.1",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    yield store, c
    store.close()


def main_text(html: str) -> str:
    """What a person reads: the page's text without tags, the details line and the script."""
    html = re.sub(r'<div class="details".*?</div>', "", html, flags=re.S)
    html = re.sub(r"<(script|style)>.*?</\1>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&rsquo;", "'").replace("&lsquo;", "'")


def shown_query(html: str) -> int:
    return int(re.search(r'data-query-id="(\d+)"', html).group(1))


def note_of(r) -> str:
    return unquote(r.headers["location"].partition("note=")[2])


def test_the_last_label_is_confirmed_and_undo_names_it(page):
    store, c = page
    store.set_budget(3)
    store.add_queries([4, 5, 6], 1, "margin", guesses=[0, 1, 2], confidences=[0.5, 0.6, 0.7])
    html = c.get("/").text
    assert 'id="last"' not in html and 'id="undo"' not in html  # nothing labeled yet: nothing to undo
    q1 = shown_query(html)
    assert c.post("/label", data={"query_id": q1, "label": 1}, follow_redirects=False).headers["location"] == "/"
    html = c.get("/").text
    text = main_text(html)
    assert "Your last label: 'dog'" in text and "Undo 'dog'" in text
    assert f'name="query_id" value="{q1}"' in html.split('id="last"')[1].split("</form>")[0]  # the form names it
    q2 = shown_query(html)
    c.post("/label", data={"query_id": q2, "label": 2})
    assert "Undo 'bird'" in main_text(c.get("/").text)
    # a stale button (another tab labeled since): it names 'dog', the last label is 'bird': nothing undone
    r = c.post("/undo", data={"query_id": q1}, follow_redirects=False)
    assert "Nothing was undone" in note_of(r) and store.query(q2).label == 2 and store.query(q1).label == 1
    r = c.post("/undo", data={"query_id": q2}, follow_redirects=False)
    assert "Undone: your label \u2018bird\u2019 was removed" in note_of(r)
    assert store.query(q2).state == "open" and store.n_labeled == 1
    html = c.get("/").text
    assert shown_query(html) == q2 and "Undo 'dog'" in main_text(html)  # the point is back; dog is next to undo
    r = c.post("/undo", follow_redirects=False)  # Backspace without a form value (the API): the last one
    assert "\u2018dog\u2019" in note_of(r) and store.n_labeled == 0
    assert "no label to undo" in note_of(c.post("/undo", follow_redirects=False))


def test_a_second_submit_and_a_withdrawn_point_are_said_in_plain_words(page):
    store, c = page
    store.set_budget(2)
    store.add_queries([1, 2, 3], 1, "entropy")
    q = shown_query(c.get("/").text)
    c.post("/label", data={"query_id": q, "label": 0})
    r = c.post("/label", data={"query_id": q, "label": 0}, follow_redirects=False)
    assert note_of(r) == "That point was already labeled \u2018cat\u2019; nothing changed." and store.n_labeled == 1
    other = store.queries("open")[0].id
    store.withdraw_open(reason="refill")
    r = c.post("/label", data={"query_id": other, "label": 1}, follow_redirects=False)
    assert note_of(r).startswith("That point is no longer needed") and store.n_labeled == 1


def test_each_empty_state_says_what_comes_next_in_plain_words(page):
    store, c = page

    def empty():
        html = c.get("/").text
        m = re.search(r'id="empty" data-state="([a-z-]+)"', html)
        text = main_text(html)
        assert not any(w in text for w in JARGON), text
        return m.group(1), text, html

    state, text, html = empty()  # no budget: this site was not asked yet
    assert state == "not-asked" and "Nothing to label yet" in text and 'http-equiv="refresh"' in html
    store.set_budget(2)  # granted, but no point ready yet
    state, text, _ = empty()
    assert state == "preparing" and "2 more labels are wanted" in text and "2 left now" in text
    store.add_queries([1, 2], 1, "entropy")
    for _ in range(2):
        c.post("/label", data={"query_id": shown_query(c.get("/").text), "label": 2})
    state, text, html = empty()  # everything granted is labeled; the run goes on
    assert state == "between-grants" and "More points may come later" in text and "0 left now" in text
    assert "Thank you" in text and "spent" not in text and "Undo 'bird'" in text and 'http-equiv="refresh"' in html
    mark_run(store, dataset="mnist1d", finished=True)  # the run's last message
    state, text, html = empty()
    assert state == "finished" and "This labeling run has finished" in text and "2 points were labeled" in text
    assert "(2 by you)" in text and 'id="undo"' not in html and 'http-equiv="refresh"' not in html
    r = c.post("/undo", follow_redirects=False)  # labels of a finished run stay as they are
    assert "has finished" in note_of(r) and store.n_labeled == 2
    assert c.get("/api/progress").json()["run_finished"] is True


def test_a_site_whose_points_are_all_labeled_or_skipped_does_not_promise_more(tmp_path):
    x = np.zeros((3, 40), "float32")
    with PoolStore(tmp_path / "p.sqlite", "exp", "site-a", 3, "fp") as store:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient

            c = TestClient(appmod.create_app(appmod.LabelingSite(store, x, NAMES, TOKEN)),
                           base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})
        store.set_budget(3)
        store.add_queries([0, 1, 2], 1, "entropy")
        c.post("/label", data={"query_id": shown_query(c.get("/").text), "label": 0})
        for _ in range(2):
            c.post("/skip", data={"query_id": shown_query(c.get("/").text)})
        html = c.get("/").text  # 2 labels still wanted, but no point is left to ask about
        assert 'data-state="nothing-left"' in html and "labeled or skipped" in main_text(html)
        assert "being prepared" not in main_text(html)


def test_a_query_page_keeps_the_details_out_of_the_main_text(page):
    store, c = page
    store.set_budget(5)
    store.add_queries([7], 3, "margin", guesses=[2], confidences=[0.81])
    html = c.get("/").text
    text = main_text(html)
    assert "What does this signal show?" in text and "The model's guess: bird (81% sure)" in text
    assert "1 point labeled" not in text and "0 points labeled · 5 left now" in text
    assert not any(w in text for w in JARGON), text
    details = re.search(r'<div class="details"[^>]*>(.*?)</div>', html).group(1)
    assert details == f"details: query {shown_query(html)} · point 7 · chosen by margin in AL round 3"


def test_the_client_app_marks_the_run_and_the_page_says_when_it_has_finished(site):  # noqa: F811
    """Messages through the site's persistent worker, as in a deployed people run: the first marks
    the run as labeling and records its dataset (digits), so the page draws 8x8 images; the run's
    last message (finish) marks it finished, after withdrawing the open queries."""
    from tests.test_async_reserve import page_client

    assert run_state(site.db).dataset is None
    site.send(0, 4)
    assert run_state(site.db).finished is False and run_state(site.db).dataset == "digits"
    page = appmod.LabelingSite(site.db, site.data.x, [str(k) for k in range(10)], TOKEN, annotator="person",
                               resolve=lambda d: site_display(site.data.x.shape[1:],
                                                              info=dataset_info(d)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        c = TestClient(appmod.create_app(page), base_url="http://127.0.0.1",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    html = c.get("/").text
    assert 'id="point-image"' in html and page.display.shape == (8, 8)
    site.send(1, 0, finish=True)
    assert run_state(site.db).finished is True
    html = c.get("/").text
    assert 'data-state="finished"' in html and not site.db.queries("open")
    site.send(2, 0)  # a run that goes on (resume = true) is labeling again
    assert run_state(site.db).finished is False
    assert 'data-state="finished"' not in page_client(site).get("/").text
