"""freeze-backbone end to end (issue #5): a tiny Fashion-MNIST in its real IDX format, a
ResNet-18 run once per client, and the AL protocol on the cached features."""

import numpy as np
import pytest

from tests.inprocess import run_inprocess
from tests.test_vision_data import _write_idx
from tests.helpers import without_times


@pytest.fixture
def fashion_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDAL_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 160), ("t10k", 40)):
        y = np.arange(n, dtype=np.uint8) % 10
        # class-dependent images so that even a random frozen ResNet separates something
        x = (rng.integers(0, 60, (n, 28, 28)) + (y[:, None, None] * 20)).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x, gz=False)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz=False)
    return tmp_path / "data"


def test_frozen_backbone_protocol_trains_the_head_only_and_caches_features(fashion_root, tmp_path):
    rc = {"dataset": "fashion-mnist", "data-root": str(fashion_root), "freeze-backbone": True,
          "backbone": "resnet18", "partition": "iid", "al-rounds": 1, "init-clients": 2,
          "init-points": 10, "clients-per-round": 2, "points-per-client": 8, "fl-rounds": 2,
          "local-epochs": 1, "pseudo-epochs": 1, "knn-k": 2, "local-k": 3}
    sent = []
    rows, _ = run_inprocess(rc, 4, on_reply=lambda m, r: sent.append(r))
    assert [r["labels"] for r in rows] == [20, 36]
    trained = [r.content["arrays"] for r in sent if "arrays" in r.content.array_records]
    assert trained and all(k.startswith("head.") for k in trained[0].keys())  # a 512-d head only
    cached = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(cached) == 5  # 4 clients + the server's test set, extracted once each
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    rows2, _ = run_inprocess({**rc, "seed": 0}, 4)
    assert without_times(rows2) == without_times(rows)  # same seed, cached features: the same run
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes  # second run: cache hits only
