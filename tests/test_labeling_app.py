"""The labeling page without a browser (fedal/annotate/app.py, render.py): startup errors,
tokens, the Host check, image sites, drawing. The browser test is tests/test_labeling_page.py."""

import io
import re
import warnings

import numpy as np
import pytest

from fedal.annotate import app as appmod
from fedal.annotate.render import image_png, point_kind, signal_svg
from fedal.data.site import load_site_data
from fedal.store import PoolStore, site_store_path

TOKEN = "a-token-of-enough-length-42"


def client_for(site):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(appmod.create_app(site), base_url="http://127.0.0.1")


def args_for(tmp_path, **over):
    vals = {**dict(data_path=tmp_path / "site.npz", state_dir=tmp_path / "state", experiment_id="exp",
                   client_id="site-a"), **over}
    argv = []
    for k, v in vals.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return appmod.parse_args(argv)


def make_site(tmp_path, x=None, names=("no", "yes"), store=True):
    x = np.random.default_rng(0).normal(size=(20, 40)).astype("float32") if x is None else x
    kw = {} if names is None else {"class_names": np.array(names)}
    np.savez(tmp_path / "site.npz", x=x, **kw)
    (tmp_path / "state").mkdir(exist_ok=True)
    d = load_site_data(tmp_path / "site.npz", "site-a")
    if store:
        PoolStore(site_store_path(tmp_path / "state", "exp", "site-a"), "exp", "site-a", d.n_points,
                  d.fingerprint).close()
    return d


@pytest.mark.parametrize("over,needle", [
    (dict(token=TOKEN, data_path="/nonexistent/site.npz"), "data-path /nonexistent/site.npz does not exist"),
    (dict(token=TOKEN, state_dir="/nonexistent/state"), "state-dir /nonexistent/state does not exist"),
    (dict(token=TOKEN, experiment_id="other"), "no pool store at .*pools/other/site-a.sqlite: the site's ClientApp "
                                               "creates it.*stores in .*: exp/site-a.sqlite"),
    (dict(token=TOKEN, experiment_id="../up"), "experiment-id '../up' is not valid"),
    (dict(), "no token: pass --token-file FILE"),
    (dict(token="short"), "has 5 characters; use at least 16"),
    (dict(token_file="/nonexistent/token"), "token file /nonexistent/token cannot be read"),
])
def test_startup_errors_say_what_is_wrong(tmp_path, monkeypatch, over, needle):
    monkeypatch.delenv(appmod.TOKEN_ENV, raising=False)
    make_site(tmp_path)
    with pytest.raises(appmod.StartupError, match=needle):
        appmod.build_site(args_for(tmp_path, **over))


def test_main_exits_2_with_the_message_and_a_store_of_other_data_is_refused(tmp_path, capsys, monkeypatch):
    make_site(tmp_path)
    monkeypatch.setenv(appmod.TOKEN_ENV, TOKEN)
    np.savez(tmp_path / "site.npz", x=np.zeros((20, 40), "float32"), class_names=np.array(["no", "yes"]))
    argv = ["--data-path", str(tmp_path / "site.npz"), "--state-dir", str(tmp_path / "state"),
            "--experiment-id", "exp", "--client-id", "site-a"]
    assert appmod.main(argv) == 2
    err = capsys.readouterr().err
    assert "fedal annotate: error:" in err and "data fingerprint is" in err and "do not delete it" in err


def test_token_from_env_and_classes_from_num_classes(tmp_path, monkeypatch):
    make_site(tmp_path, names=None)
    monkeypatch.setenv(appmod.TOKEN_ENV, TOKEN)
    with pytest.raises(appmod.StartupError, match="names no classes and holds no labels: give --num-classes"):
        appmod.build_site(args_for(tmp_path))
    site, db = appmod.build_site(args_for(tmp_path, num_classes=40))
    assert site.token == TOKEN and len(site.class_names) == 40
    assert site.keys[:11] == list("0123456789a") and site.keys[35] == "z" and site.keys[36] is None
    site.store.close()


def test_tokens_hosts_and_actions_over_http(tmp_path):
    d = make_site(tmp_path)
    store = PoolStore(site_store_path(tmp_path / "state", "exp", "site-a"), "exp", "site-a", d.n_points,
                      d.fingerprint)
    store.add_queries([4, 5], 0, "margin", guesses=[1, 0], confidences=[0.55, 0.8])
    c = client_for(appmod.LabelingSite(store, d.x, ["no", "yes"], TOKEN))
    for r, status in [(c.get("/"), 401), (c.get("/api/progress", headers={"Authorization": "Bearer nope-nope"}), 403),
                      (c.post("/label", data={"query_id": "1", "label": "1"}), 401),
                      (c.post("/undo", headers={"Authorization": "Bearer x"}), 403)]:
        assert r.status_code == status and "svg" not in r.text and "point" not in r.text
    assert c.get("/healthz").text == "ok"
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = c.get("/", headers=auth)
    assert r.status_code == 200 and "<svg" in r.text and "(55% sure)" in r.text
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    qid = int(re.search(r'data-query-id="(\d+)"', r.text).group(1))
    r = c.post("/label", data={"query_id": str(qid), "label": "2"}, headers=auth, follow_redirects=False)
    assert r.status_code == 303 and "not%20a%20class%20id" in r.headers["location"]
    assert store.n_labeled == 0  # class 2 does not exist: refused, with the reason on the page
    r = c.post("/label", data={"query_id": str(qid), "label": "1"}, headers=auth, follow_redirects=True)
    assert store.labeled_arrays()[1].tolist() == [1]
    r = c.post("/label", data={"query_id": str(qid), "label": "1"}, headers=auth, follow_redirects=True)
    assert "already labeled \u2018yes\u2019" in r.text and store.n_labeled == 1  # a double submit pays once
    assert c.post("/label", data={"query_id": "x"}, headers=auth).status_code == 400
    store.close()


def test_an_image_site_is_served_as_png(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    for k, name in enumerate(["cat", "dog"]):
        (folder / name).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((8, 10), 40 * (k + j), np.uint8)).save(folder / name / f"{j}.png")
    d = load_site_data(folder, "site-a")
    store = PoolStore(tmp_path / "p.sqlite", "exp", "site-a", d.n_points, d.fingerprint)
    (qid,) = store.add_queries([4], 1, "entropy")
    c = client_for(appmod.LabelingSite(store, d.x, list(d.class_names), TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = c.get("/", headers=auth).text
    assert f'src="/point/{qid}.png"' in page and "<svg" not in page
    r = c.get(f"/point/{qid}.png", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (350, 280)  # 10x8 enlarged 35 times (shorter side >= 280), nearest neighbour
    assert c.get("/point/999.png", headers=auth).status_code == 404  # only points that were asked about
    assert c.get(f"/point/{qid}.png").status_code == 401
    store.close()


def test_drawing():
    assert point_kind(np.zeros((5, 40))) == "signal" and point_kind(np.zeros((5, 2, 100))) == "signal"
    assert point_kind(np.zeros((5, 28, 28))) == "image" and point_kind(np.zeros((5, 32, 32, 3))) == "image"
    assert point_kind(np.zeros((5, 3, 32, 32))) == "image"
    with pytest.raises(ValueError, match="neither a signal"):
        point_kind(np.zeros((5, 2, 3, 4, 5)))
    svg = signal_svg(np.stack([np.sin(np.arange(50)), np.cos(np.arange(50))]))
    assert svg.count("<polyline") == 2 and "2 channels" in svg and "<script" not in svg
    assert "<polyline" in signal_svg(np.ones(10))  # a flat signal draws too
    from PIL import Image

    chw = Image.open(io.BytesIO(image_png(np.random.default_rng(0).normal(size=(3, 16, 16)))))
    assert chw.mode == "RGB" and chw.size == (288, 288)


def test_the_page_and_the_client_app_open_the_same_store_file(tmp_path):
    """The ClientApp of a deployed site (fedal.client_app.worker, node config data-path +
    client-id + state-dir) and fedal-annotate started with the same state-dir, experiment id
    and client id open one file: a label paid on the page is a label the ClientApp trains on."""
    from flwr.app import Context, RecordDict

    from fedal.client_app import worker
    from fedal.config import Config

    x = np.random.default_rng(1).normal(size=(20, 40)).astype("float32")
    np.savez(tmp_path / "site.npz", x=x, y=np.arange(20) % 10)
    state = tmp_path / "state"
    rc = {"dataset": "mnist1d"}
    nc = {"data-path": str(tmp_path / "site.npz"), "client-id": "site-a", "state-dir": str(state)}
    w = worker(Context(run_id=1, node_id=5, node_config=nc, state=RecordDict(), run_config=rc), rc)
    exp = Config.from_run_config(rc).experiment
    site, db = appmod.build_site(args_for(tmp_path, token=TOKEN, experiment_id=exp))
    try:
        assert db.resolve() == w.store.db.path.resolve() == (state / "pools" / exp / "site-a.sqlite").resolve()
        site.store.set_budget(1)
        site.store.add_queries([4], model_version=0, strategy="random")
        q = site.store.next_query("page")
        site.store.submit_label(q.id, 3, "page")
        pools = w.pools()
        assert list(pools.labeled) == [4] and list(pools.labels) == [3]
    finally:
        site.store.close()


def test_the_page_may_wait_for_the_client_app_to_create_the_store(tmp_path):
    import threading

    d = make_site(tmp_path, store=False)

    def client_app_starts():
        PoolStore(site_store_path(tmp_path / "state", "exp", "site-a"), "exp", "site-a", d.n_points,
                  d.fingerprint).close()

    timer = threading.Timer(0.5, client_app_starts)
    timer.start()
    site, db = appmod.build_site(args_for(tmp_path, token=TOKEN, wait_s=20))
    site.store.close()
    assert db == site_store_path(tmp_path / "state", "exp", "site-a")
    with pytest.raises(appmod.StartupError, match="or give --wait-s"):
        appmod.build_site(args_for(tmp_path, token=TOKEN, experiment_id="other", wait_s=0.2))
