"""The server's checkpoint file (fedal/checkpoint.py): what is saved comes back exactly (the
random state and the weights bit for bit), and a file that is damaged, of another format or of
another experiment is refused, naming the file (tests/test_resume.py resumes real runs from it)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedal import checkpoint
from fedal.checkpoint import Checkpoint, CheckpointError


def make(**over) -> Checkpoint:
    rng = np.random.default_rng(5)
    rng.random(3)
    fields = dict(al_round=2, weights={"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
                                       "b": np.ones(2, np.float64) / 3},
                  clients={"0": (3, 4), "site-b": (0, 9)}, prev_entropy={"0": 0.25}, labeled_per_class=[1, 2],
                  rng_state=rng.bit_generator.state, rows=[{"round": 0, "accuracy": 0.1}],
                  config_hash="abc", seed=1)
    return Checkpoint(**{**fields, **over})


def arrays_of(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def rewrite(path, arrays: dict) -> None:
    """Write ``arrays`` as the checkpoint's npz, keeping whatever digest they hold."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())


def meta_of(path) -> dict:
    return json.loads(arrays_of(path)["meta"].tobytes())


def test_everything_saved_comes_back(tmp_path):
    ck = make(extra={"token": "t", "now": 1.5})
    checkpoint.save(tmp_path / "c.npz", ck)
    back = checkpoint.load(tmp_path / "c.npz", "abc", 1)
    assert list(back.weights) == ["a", "b"]
    assert all(np.array_equal(back.weights[k], ck.weights[k]) and back.weights[k].dtype == ck.weights[k].dtype
               for k in ck.weights)
    assert (back.al_round, back.clients, back.prev_entropy, back.labeled_per_class) == (2, ck.clients, {"0": 0.25}, [1, 2])
    assert (back.rows, back.config_hash, back.seed, back.extra) == (ck.rows, "abc", 1, {"token": "t", "now": 1.5})
    # the random state, bit for bit: the draws after a resume are the uninterrupted run's
    again, rng = np.random.default_rng(), np.random.default_rng()
    again.bit_generator.state, rng.bit_generator.state = back.rng_state, ck.rng_state
    assert np.array_equal(again.random(4), rng.random(4))
    assert isinstance(back.clients["0"], tuple) and isinstance(back.al_round, int)
    # numbers come back as the types the loop computes with
    assert type(back.prev_entropy["0"]) is float and all(type(v) is int for v in back.labeled_per_class)


def test_a_checkpoint_without_extra_state_holds_no_extra_key(tmp_path):
    # the synchronous loop's checkpoint stays what it was before the asynchronous loop's state existed
    checkpoint.save(tmp_path / "c.npz", make())
    assert "extra" not in meta_of(tmp_path / "c.npz")
    assert checkpoint.load(tmp_path / "c.npz", "abc", 1).extra is None
    checkpoint.save(tmp_path / "e.npz", make(extra={}))  # an empty dict is state too
    assert meta_of(tmp_path / "e.npz")["extra"] == {}
    assert checkpoint.load(tmp_path / "e.npz", "abc", 1).extra == {}
    assert meta_of(tmp_path / "c.npz")["format"] == checkpoint.FORMAT == 1


def test_the_file_is_replaced_atomically(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, make())
    checkpoint.save(path, make(al_round=3))
    assert checkpoint.load(path, "abc", 1).al_round == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"resume = true but there is no checkpoint .*c\.npz.*set resume = "
                                              r"false to start the run afresh"):
        checkpoint.load(tmp_path / "c.npz", "abc", 1)


@pytest.mark.parametrize("change", ["value", "weight name", "dtype", "shape", "meta"])
def test_any_change_to_the_content_fails_the_checksum(tmp_path, change):
    path = tmp_path / "c.npz"
    checkpoint.save(path, make())
    arrays = arrays_of(path)
    w0 = arrays["w:0"]
    if change == "value":
        arrays["w:0"] = w0 + np.float32(1e-3)
    elif change == "dtype":  # the same bytes read as another type
        arrays["w:0"] = w0.view(np.int32)
    elif change == "shape":  # the same bytes in another shape
        arrays["w:0"] = w0.reshape(3, 2)
    else:
        meta = meta_of(path)
        if change == "weight name":
            meta["weight_names"] = ["z", "b"]
        else:
            meta["al_round"] = 5
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=rf"the checkpoint {path} is corrupt \(its checksum does not "
                                              r"match its content\); delete it and set resume = false"):
        checkpoint.load(path, "abc", 1)


@pytest.mark.parametrize("damage,error", [("not a zip", "BadZipFile"), ("no meta", "KeyError"), ("no digest", "KeyError"),
                                          ("a weight missing", "KeyError"), ("meta not JSON", "JSONDecodeError")])
def test_an_unreadable_file_is_refused_naming_it_and_the_error(tmp_path, damage, error):
    path = tmp_path / "c.npz"
    checkpoint.save(path, make())
    arrays = arrays_of(path)
    if damage == "not a zip":
        path.write_bytes(b"PK\x03\x04 not really")
    else:
        if damage == "meta not JSON":
            arrays["meta"] = np.frombuffer(b"{nope", dtype=np.uint8)
        else:
            del arrays[{"no meta": "meta", "no digest": "digest", "a weight missing": "w:1"}[damage]]
        rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=rf"the checkpoint {path} is corrupt or unreadable \({error}: .*\); "
                                              r"delete it and set resume = false"):
        checkpoint.load(path, "abc", 1)


def test_loading_never_unpickles(tmp_path):
    # an object array in the file would run code when unpickled: it is refused unread
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "c.npz"
    checkpoint.save(path, make())
    arrays = arrays_of(path)
    arrays["meta"] = np.array([Payload()], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        checkpoint.load(path, "abc", 1)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(Payload())) is None and marker.exists()  # the payload does run


def test_another_format_or_experiment_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, make())
    with pytest.raises(CheckpointError, match=r"belongs to another experiment \(config hash abc, seed 1; this run: "
                                              r"xyz, seed 1\); resume with the run config that wrote it"):
        checkpoint.load(path, "xyz", 1)
    with pytest.raises(CheckpointError, match=r"\(config hash abc, seed 1; this run: abc, seed 2\)"):
        checkpoint.load(path, "abc", 2)
    meta = {**meta_of(path), "format": 2}
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    arrays = arrays_of(path)
    weights = {"a": arrays["w:0"], "b": arrays["w:1"]}
    arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    arrays["digest"] = np.frombuffer(checkpoint._digest(meta_bytes, weights).encode(), dtype=np.uint8)
    rewrite(path, arrays)
    with pytest.raises(CheckpointError, match=rf"the checkpoint {path} has format 2, this fedal writes 1; set "
                                              r"resume = false"):
        checkpoint.load(path, "abc", 1)
