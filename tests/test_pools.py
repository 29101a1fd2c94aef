import json

import numpy as np
import pytest

from fedal.pools import PoolError, Pools


def test_add_and_views():
    p = Pools(size=6)
    p.add([4, 1], [9, 3], al_round=0)
    assert p.n_labeled == 2 and p.n_unlabeled == 4
    assert p.unlabeled.tolist() == [0, 2, 3, 5]
    idx, lab = p.labeled_arrays()
    assert idx.tolist() == [4, 1] and lab.tolist() == [9, 3]


def test_a_label_is_never_paid_twice():
    p = Pools(size=5)
    p.add([0, 1], [1, 1], 0)
    with pytest.raises(PoolError, match="already labeled"):
        p.add([1, 2], [0, 0], 1)
    with pytest.raises(PoolError, match="twice in one acquisition"):
        p.add([3, 3], [0, 0], 1)
    with pytest.raises(PoolError, match="outside"):
        p.add([7], [0], 1)
    assert p.n_labeled == 2  # failed acquisitions changed nothing


def test_durable_store_round_trip_and_corruption(tmp_path):
    p = Pools(size=10)
    p.add([3, 5, 7], [0, 1, 2], 1)
    f = tmp_path / "pools.json"
    p.save(f)
    assert Pools.load(f) == p
    doc = json.loads(f.read_text())
    doc["pools"]["labels"][0] = 9  # tampered / bit-rotted
    f.write_text(json.dumps(doc))
    with pytest.raises(PoolError, match="checksum.*paid labels"):
        Pools.load(f)
    f.write_text("{not json")
    with pytest.raises(PoolError, match="corrupt"):
        Pools.load(f)


def test_state_round_trip_through_dict():
    p = Pools(size=4)
    p.add(np.array([2]), np.array([1]), 3)
    assert Pools.from_dict(p.to_dict()) == p
    with pytest.raises(PoolError, match="missing or malformed"):
        Pools.from_dict({"size": 4})


def test_as_of_keeps_the_labels_of_rounds_up_to_it_and_leaves_the_pools_alone():
    p = Pools(10)
    p.add([1, 2], [0, 1], 0)
    p.add([5], [3], 1)
    p.add([7, 8], [2, 2], 2)
    p.set_logits([5, 7], [[0.5, 0.5], [1.0, 0.0]])
    v = p.as_of(1)
    assert (v.labeled, v.labels, v.acquired_round) == ([1, 2, 5], [0, 1, 3], [0, 0, 1])
    assert list(v.unlabeled) == [0, 3, 4, 6, 7, 8, 9] and set(v.logits) == {5}
    assert p.n_labeled == 5 and p.as_of(2) is p and p.as_of(-1).n_labeled == 0
