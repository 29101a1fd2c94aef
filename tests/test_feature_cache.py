"""freeze-backbone: feature extraction and the on-disk feature cache."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from fedal.backbones import BackboneTransform, build_backbone
from fedal.feature_cache import (
    FeatureCache, FeatureCacheWarning, array_fingerprint, backbone_identity, cached_features,
    extract_features, feature_key,
)

TR = BackboneTransform()




@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def resnet18():
    return build_backbone("resnet18", seed=0)


def test_extract_features_eval_mode_batches_and_restores_mode(resnet18, images):
    resnet18.train()
    f = extract_features(resnet18, images, batch_size=4, device="cpu", transform=TR)
    assert f.shape == (10, 512) and f.dtype == np.float32 and np.isfinite(f).all()
    assert resnet18.training  # mode restored
    f_one_batch = extract_features(resnet18, images, batch_size=64, device="cpu", transform=TR)
    np.testing.assert_allclose(f, f_one_batch, rtol=1e-4, atol=1e-5)  # eval BN: batch-independent
    resnet18.eval()
    with torch.no_grad():
        ref = resnet18(TR(images)).numpy()
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)
    assert extract_features(resnet18, images[:0], batch_size=4, device="cpu", transform=TR).shape == (0, 512)
    with pytest.raises(TypeError, match="uint8"):
        extract_features(resnet18, images.astype(np.float32), batch_size=4, device="cpu", transform=TR)


def test_grayscale_extraction(resnet18):
    g = np.random.default_rng(1).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    f = extract_features(resnet18, g, batch_size=2, device="cpu", transform=BackboneTransform((0.286,), (0.353,)))
    assert f.shape == (3, 512)


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return self.value


def test_cache_hit_calls_compute_once(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    arr = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    comp = Counter(arr)
    key = {"model": {"backbone": "resnet18", "state": "abc"}, "dataset": "cifar10", "partition": 3, "data": "d"}
    a = cache.get_or_compute(key, comp)
    b = FeatureCache(tmp_path / "c").get_or_compute(dict(reversed(list(key.items()))), comp)  # new process, same key
    assert comp.calls == 1 and np.array_equal(a, b) and b.dtype == np.float32
    assert cache.misses == 1
    cache.get_or_compute(key, comp)
    assert cache.hits == 1 and comp.calls == 1
    cache.get_or_compute({**key, "partition": 4}, comp)  # another client → another entry
    assert comp.calls == 2
    assert not list((tmp_path / "c").glob("*.part"))  # atomic writes leave no temporaries
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2


def test_key_must_be_json_like(tmp_path):
    with pytest.raises(TypeError, match="array_fingerprint"):
        FeatureCache(tmp_path).get_or_compute({"x": np.zeros(3)}, lambda: np.zeros(1))
    # numpy scalars (e.g. a partition id from numpy) are fine and equal to Python ints
    c = FeatureCache(tmp_path)
    assert c.key_hash({"p": np.int64(3)}) == c.key_hash({"p": 3})


@pytest.mark.parametrize("damage", ["truncate", "flip", "json", "no_json", "swap_key"])
def test_corrupted_entry_is_recomputed_with_warning(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    arr = np.arange(4000, dtype=np.float32).reshape(100, 40)
    key = {"k": 1}
    cache.get_or_compute(key, lambda: arr)
    npy, meta = cache.paths(key)
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:1000])
    elif damage == "flip":  # same size, one byte of the data changed: only the digest sees it
        b = bytearray(npy.read_bytes())
        b[-5] ^= 0xFF
        npy.write_bytes(bytes(b))
    elif damage == "json":
        meta.write_text("{not json")
    elif damage == "no_json":
        meta.unlink()
    elif damage == "swap_key":
        info = json.loads(meta.read_text())
        info["key"] = {"k": 2}
        meta.write_text(json.dumps(info))
    comp = Counter(arr)
    with pytest.warns(FeatureCacheWarning, match="recomputing"):
        out = cache.get_or_compute(key, comp)
    assert comp.calls == 1 and np.array_equal(out, arr) and cache.recovered == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: a clean hit now
        assert np.array_equal(cache.get_or_compute(key, comp), arr)
    assert comp.calls == 1


def test_cached_features_invalidation(tmp_path, images, monkeypatch):
    """Same backbone + data → hit; new weights file, other data or other transform → recompute."""
    import fedal.feature_cache as fc

    calls = []
    real = fc.extract_features

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fc, "extract_features", counting)
    cache = FeatureCache(tmp_path / "cache")
    w = tmp_path / "w.pt"
    torch.save(build_backbone("resnet18", seed=1).state_dict(), w)
    kw = dict(backbone_name="resnet18", transform=TR, dataset="cifar10", partition=0, batch_size=8)

    f1 = cached_features(cache, images, weights=str(w), **kw)
    f2 = cached_features(cache, images, weights=str(w), **kw)
    assert len(calls) == 1 and np.array_equal(f1, f2)

    torch.save(build_backbone("resnet18", seed=2).state_dict(), w)  # backbone weights changed
    f3 = cached_features(cache, images, weights=str(w), **kw)
    assert len(calls) == 2 and not np.allclose(f1, f3)

    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel of the client's data
    cached_features(cache, changed, weights=str(w), **kw)
    assert len(calls) == 3
    cached_features(cache, images, weights=str(w), **{**kw, "transform": BackboneTransform(size=64)})
    assert len(calls) == 4
    cached_features(cache, images, weights=str(w), **kw)  # original combination still cached
    assert len(calls) == 4

    # random init: identified by its parameters; same seed → hit, other seed → recompute
    cached_features(cache, images, weights=None, init_seed=0, **kw)
    cached_features(cache, images, weights=None, init_seed=0, **kw)
    assert len(calls) == 5
    cached_features(cache, images, weights=None, init_seed=1, **kw)
    assert len(calls) == 6

    # a backbone built by the caller: keyed by its parameters
    bb = build_backbone("resnet18", seed=7)
    cached_features(cache, images, weights=None, backbone=bb, **kw)
    cached_features(cache, images, weights=None, backbone=bb, **kw)
    assert len(calls) == 7
    with torch.no_grad():
        bb.layer4[1].bn2.weight.mul_(2)
    cached_features(cache, images, weights=None, backbone=bb, **kw)
    assert len(calls) == 8


@pytest.mark.parametrize("path", ["weights file", "random init", "caller's backbone"])
def test_another_normalisation_is_never_served_stale_features(tmp_path, images, path):
    """Each of cached_features' three ways to identify the backbone keys the transform too: the
    features of the same images under another normalisation are computed, never the cached ones."""
    other = BackboneTransform(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    kw = dict(backbone_name="resnet18", dataset="cifar10", partition=0, batch_size=16)
    if path == "weights file":
        torch.save(build_backbone("resnet18", seed=1).state_dict(), tmp_path / "w.pt")
        kw["weights"] = str(tmp_path / "w.pt")
    elif path == "random init":
        kw.update(weights=None, init_seed=3)
    else:
        kw.update(weights=None, backbone=build_backbone("resnet18", seed=7))
    cache = FeatureCache(tmp_path / "cache")
    f1 = cached_features(cache, images, transform=TR, **kw)
    f2 = cached_features(cache, images, transform=other, **kw)
    assert (cache.hits, cache.misses) == (0, 2)
    assert not np.allclose(f1, f2)  # what the second extraction computed, not the first's features
    assert np.array_equal(cached_features(cache, images, transform=other, **kw), f2) and cache.hits == 1


def test_key_parts_change_with_inputs(resnet18, images):
    ident = backbone_identity("resnet18", backbone=resnet18, transform=TR)
    k1 = feature_key(ident, images, dataset="cifar10", partition=0)
    assert k1["data"] == array_fingerprint(images.copy())
    assert feature_key(ident, images[:5], dataset="cifar10", partition=0)["data"] != k1["data"]
    with torch.no_grad():
        resnet18.layer1[0].bn1.running_mean += 1  # a buffer, not a parameter, still changes features
    assert backbone_identity("resnet18", backbone=resnet18, transform=TR)["state"] != ident["state"]
    with pytest.raises(ValueError, match="weights_path or the backbone"):
        backbone_identity("resnet18")
