"""Image dataset loaders on tiny datasets written in each dataset's real on-disk format.

Nothing is downloaded: every test writes its files into tmp_path and reads them back through the
torchvision-based loaders of ``fedal.data.vision``. The only thing replaced is torchvision's MD5
check for CIFAR (our tiny pickles cannot match the published sums) — the same thing torchvision's
own test-suite does; one test keeps the real check to see the "corrupted" error.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedal.compat import import_torchvision
from fedal.data import vision
from fedal.data.vision import DatasetCorrupted, DatasetNotFound, load_vision_dataset, vision_meta


# --------------------------------------------------------------------------- format writers

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING opcodes), as the official CIFAR archives do.

    Read back with ``encoding="latin1"`` (torchvision) the keys are ``'data'``; with
    ``encoding="bytes"`` (the CIFAR web page's snippet) they are ``b'data'``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _images(rng, n, h=32, w=32, c=3):
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _cifar_batch(x_hwc: np.ndarray, labels, label_key: bytes, extra=None) -> dict:
    # CIFAR rows are 3072 bytes: the 1024 red values, then green, then blue (channel-major).
    d = {b"batch_label": b"training batch 1 of 5",
         label_key: [int(v) for v in labels],
         b"data": x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1).copy(),
         b"filenames": [f"img_{i}.png".encode() for i in range(len(x_hwc))]}
    d.update(extra or {})
    return d


def write_cifar10(root: Path, rng, per_batch=3, n_test=4):
    base = root / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x = _images(rng, per_batch)
        y = rng.integers(0, 10, per_batch)
        _py2_pickle(_cifar_batch(x, y, b"labels"), base / f"data_batch_{i}")
        xs.append(x), ys.append(y)
    xt, yt = _images(rng, n_test), rng.integers(0, 10, n_test)
    _py2_pickle(_cifar_batch(xt, yt, b"labels"), base / "test_batch")
    _py2_pickle({b"num_cases_per_batch": per_batch,
                 b"label_names": [c.encode() for c in vision.CIFAR10_CLASSES], b"num_vis": 3072},
                base / "batches.meta")
    return np.concatenate(xs), np.concatenate(ys), xt, yt


def write_cifar100(root: Path, rng, n_train=6, n_test=4):
    base = root / "cifar-100-python"
    x, y = _images(rng, n_train), rng.integers(0, 100, n_train)
    xt, yt = _images(rng, n_test), rng.integers(0, 100, n_test)
    _py2_pickle(_cifar_batch(x, y, b"fine_labels", {b"coarse_labels": [int(v) // 5 for v in y]}), base / "train")
    _py2_pickle(_cifar_batch(xt, yt, b"fine_labels", {b"coarse_labels": [int(v) // 5 for v in yt]}), base / "test")
    _py2_pickle({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                 b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, base / "meta")
    return x, y, xt, yt


def _idx_bytes(arr: np.ndarray) -> bytes:
    # IDX (LeCun): magic 0x00 0x00 <type 0x08 = ubyte> <ndim>, big-endian int32 dims, raw data.
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _idx_bytes(arr)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(root: Path, rng, gz: bool, n_train=5, n_test=3):
    raw = root / "FashionMNIST" / "raw"
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x, gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


def write_emnist_letters(root: Path, rng, gz: bool, n_train=6, n_test=4):
    raw = root / "EMNIST" / "raw"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(1, 27, n).astype(np.uint8)  # on disk: 1..26
        y[0], y[-1] = 1, 26                            # both ends of the range
        _write_idx(raw / f"emnist-letters-{split}-images-idx3-ubyte", x, gz)
        _write_idx(raw / f"emnist-letters-{split}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


def write_cinic10(root: Path, rng, per_class=2, splits=("train", "valid", "test")):
    from PIL import Image

    truth = {}
    for split in splits:
        xs, ys = [], []
        for label, cls in enumerate(vision.CIFAR10_CLASSES):
            d = root / "CINIC-10" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                img = _images(rng, 1)[0]
                Image.fromarray(img).save(d / f"cifar10-{split}-{j}.png")
                xs.append(img), ys.append(label)
        truth[split] = (np.stack(xs), np.array(ys))
    return truth


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Existence-only integrity check for CIFAR (tiny files cannot match the real MD5 sums)."""
    tv = import_torchvision()
    import torchvision.datasets.cifar as cifar_mod

    monkeypatch.setattr(cifar_mod, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    return tv


# --------------------------------------------------------------------------- tests

def test_registry_and_metadata():
    assert set(vision.VISION_DATASETS) == {"cifar10", "cifar100", "fashion-mnist", "emnist-letters", "cinic10"}
    m = vision_meta("emnist-letters")
    assert m["num_classes"] == 26 and m["channels"] == 1 and m["image_size"] == [28, 28]
    assert len(vision_meta("cifar100")["mean"]) == 3 and vision_meta("cifar100")["num_classes"] == 100
    with pytest.raises(ValueError, match="valid: cifar10"):
        vision_meta("imagenet")


def test_cifar10_real_pickle_format(tmp_path, no_cifar_md5):
    rng = np.random.default_rng(0)
    x, y, xt, yt = write_cifar10(tmp_path, rng)
    # the files really are CIFAR's Python-2 pickles: read as the CIFAR page does
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(raw)
    assert raw[b"data"].shape == (3, 3072) and raw[b"data"].dtype == np.uint8

    gx, gy, meta = load_vision_dataset("cifar10", tmp_path, split="train")
    assert gx.shape == (15, 32, 32, 3) and gx.dtype == np.uint8 and gx.flags.c_contiguous
    assert gy.dtype == np.int64
    np.testing.assert_array_equal(gx, x)  # channel-major rows → HWC correctly
    np.testing.assert_array_equal(gy, y)
    tx, ty, _ = load_vision_dataset("cifar10", str(tmp_path), split="test")
    np.testing.assert_array_equal(tx, xt)
    np.testing.assert_array_equal(ty, yt)
    assert meta["num_classes"] == 10 and meta["channels"] == 3 and meta["image_size"] == [32, 32]


def test_cifar100_fine_labels(tmp_path, no_cifar_md5):
    rng = np.random.default_rng(1)
    x, y, xt, yt = write_cifar100(tmp_path, rng)
    gx, gy, meta = load_vision_dataset("cifar100", tmp_path, "train")
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)  # fine labels, not coarse
    tx, ty, _ = load_vision_dataset("cifar100", tmp_path, "test")
    np.testing.assert_array_equal(ty, yt)
    assert meta["num_classes"] == 100


def test_cifar10_md5_mismatch_is_reported_as_corrupted(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(2))  # real torchvision MD5 check stays on
    with pytest.raises(DatasetCorrupted, match="cifar10.*exist but torchvision rejected them"):
        load_vision_dataset("cifar10", tmp_path)


def test_cifar_missing_files_named(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        load_vision_dataset("cifar10", tmp_path, "train")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "cifar10" in msg and str(tmp_path) in msg and "download=True" in msg
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        assert str(tmp_path / "cifar-10-batches-py" / f) in msg
    # partially present: says which ones are missing
    write_cifar10(tmp_path, np.random.default_rng(3))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFound, match=r"MISSING .*data_batch_4"):
        load_vision_dataset("cifar10", tmp_path, "test")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    truth = write_fashion_mnist(tmp_path, np.random.default_rng(4), gz=gz)
    x, y, meta = load_vision_dataset("fashion-mnist", tmp_path, "train")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], truth["train"][0])
    np.testing.assert_array_equal(y, truth["train"][1])
    xt, yt, _ = load_vision_dataset("fashion-mnist", tmp_path, "test")
    np.testing.assert_array_equal(xt[..., 0], truth["t10k"][0])
    assert meta["channels"] == 1
    if gz:  # decompressed once, next to the archives, where torchvision reads them
        assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_fashion_mnist_legacy_processed(tmp_path):
    import torch

    rng = np.random.default_rng(5)
    proc = tmp_path / "FashionMNIST" / "processed"
    proc.mkdir(parents=True)
    tr = (torch.from_numpy(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)), torch.tensor([0, 9, 3, 3]))
    te = (torch.from_numpy(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)), torch.tensor([1, 2]))
    torch.save(tr, proc / "training.pt")
    torch.save(te, proc / "test.pt")
    x, y, _ = load_vision_dataset("fashion-mnist", tmp_path, "test")
    np.testing.assert_array_equal(x[..., 0], te[0].numpy())
    np.testing.assert_array_equal(y, [1, 2])


@pytest.mark.parametrize("gz", [True, False])
def test_emnist_letters_labels_zero_based_and_upright(tmp_path, gz):
    truth = write_emnist_letters(tmp_path, np.random.default_rng(6), gz=gz)
    x, y, meta = load_vision_dataset("emnist-letters", tmp_path, "train")
    raw_x, raw_y = truth["train"]
    np.testing.assert_array_equal(y, raw_y.astype(np.int64) - 1)
    assert y.min() == 0 and y.max() == 25 and meta["num_classes"] == 26
    # EMNIST binaries are transposed relative to MNIST; the loader returns upright images
    np.testing.assert_array_equal(x[..., 0], raw_x.transpose(0, 2, 1))
    _, yt, _ = load_vision_dataset("emnist-letters", tmp_path, "test")
    np.testing.assert_array_equal(yt, truth["test"][1].astype(np.int64) - 1)


def test_emnist_wrong_label_range_is_corrupted(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    _write_idx(raw / "emnist-letters-train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=False)
    _write_idx(raw / "emnist-letters-train-labels-idx1-ubyte", np.array([0, 3], np.uint8), gz=False)
    with pytest.raises(DatasetCorrupted, match="1..26"):
        load_vision_dataset("emnist-letters", tmp_path, "train")


def test_mnist_family_missing_files_named(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        load_vision_dataset("emnist-letters", tmp_path, "test")
    msg = str(e.value)
    assert str(tmp_path / "EMNIST" / "raw" / "emnist-letters-test-images-idx3-ubyte") in msg
    assert "emnist-letters-test-labels-idx1-ubyte" in msg and "test_letters.pt" in msg
    with pytest.raises(DatasetNotFound, match=r"FashionMNIST/raw/t10k-labels-idx1-ubyte"):
        load_vision_dataset("fashion-mnist", tmp_path, "train")


def test_cinic10_imagefolder(tmp_path):
    truth = write_cinic10(tmp_path, np.random.default_rng(7))
    for split in ("train", "valid", "test"):
        x, y, meta = load_vision_dataset("cinic10", tmp_path, split)
        assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
        np.testing.assert_array_equal(x, truth[split][0])  # PNG is lossless
        np.testing.assert_array_equal(y, truth[split][1])
    assert meta["num_classes"] == 10


def test_cinic10_missing_and_wrong_classes(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        load_vision_dataset("cinic10", tmp_path, "train", download=True)
    msg = str(e.value)
    assert str(tmp_path / "CINIC-10" / "train") in msg and "airplane" in msg
    assert "no CINIC-10 downloader" in msg and "datashare.ed.ac.uk" in msg
    write_cinic10(tmp_path, np.random.default_rng(8), per_class=1, splits=("test",))
    (tmp_path / "CINIC-10" / "test" / "extra").mkdir()
    (tmp_path / "CINIC-10" / "test" / "ship").rename(tmp_path / "CINIC-10" / "test" / "extra" / "x")
    with pytest.raises(DatasetNotFound, match=r"MISSING .*CINIC-10/test/ship"):
        load_vision_dataset("cinic10", tmp_path, "test")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_vision_dataset("cifar10", tmp_path, "valid")
    with pytest.raises(DatasetNotFound, match="data-root"):
        load_vision_dataset("cifar10", "", "train")


def test_download_failure_offline_is_one_clear_error(tmp_path, monkeypatch):
    """download=True with no network: the download error is wrapped, files are still named."""
    tv = import_torchvision()
    import torchvision.datasets.cifar as cifar_mod
    from urllib.error import URLError

    def offline(*a, **k):
        raise URLError("network is unreachable")

    monkeypatch.setattr(cifar_mod, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotFound) as e:
        load_vision_dataset("cifar10", tmp_path / "new", "train", download=True)
    msg = str(e.value)
    assert "download failed" in msg and "network is unreachable" in msg and "data_batch_1" in msg
    assert tv is not None


def test_registry_is_built_on_the_model_side_metadata():
    # fedal.training reads fedal.image_meta; the loaders' registry takes its leading fields from
    # it by position, so a field order that drifted apart would swap e.g. classes and channels
    from fedal.data.vision import REGISTRY
    from fedal.image_meta import IMAGE_DATASETS, IMAGE_META

    assert tuple(REGISTRY) == IMAGE_DATASETS
    for name, spec in REGISTRY.items():
        m = IMAGE_META[name]
        assert (spec.name, spec.num_classes, spec.channels, spec.image_size, spec.mean, spec.std) == (
            name, m.num_classes, m.channels, m.image_size, m.mean, m.std)
