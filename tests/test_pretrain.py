"""Self-supervised CNN1D pretraining (fedal.pretrain), its command, and the pretrained backbone
through backbone-weights, with and without freeze-backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedal.backbones import BackboneWeightsError, BackboneWeightsNotFound
from fedal.config import Config, ConfigError
from fedal.models import CNN1D, MLPBackbone
from fedal.pretrain import (
    augment, backbone_features, linear_probe_accuracy, new_backbone, pretrain_backbone, unlabeled_mnist1d,
)
from fedal.training import build_model


@pytest.fixture(scope="module")
def x_unlabeled() -> np.ndarray:
    return unlabeled_mnist1d(300, seed=7)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, x_unlabeled) -> tuple[str, CNN1D]:
    bb = pretrain_backbone(x_unlabeled, epochs=1, batch_size=64, seed=0)
    path = tmp_path_factory.mktemp("weights") / "cnn1d.pt"
    torch.save(bb.state_dict(), path)
    return str(path), bb


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- pretraining

def test_unlabeled_set_is_deterministic_and_never_the_federations_seed():
    a, b = unlabeled_mnist1d(100, seed=7), unlabeled_mnist1d(100, seed=7)
    assert a.shape == (100, 40) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, unlabeled_mnist1d(100, seed=8))
    with pytest.raises(ValueError, match="42"):
        unlabeled_mnist1d(100, seed=42)
    state = np.random.get_state()[1].copy()
    unlabeled_mnist1d(20, seed=9)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global RNG left alone


def test_augment_is_seeded_and_changes_the_signal(x_unlabeled):
    x = torch.from_numpy(x_unlabeled[:32])
    v1 = augment(x, torch.Generator().manual_seed(3))
    v2 = augment(x, torch.Generator().manual_seed(3))
    assert v1.shape == x.shape and torch.equal(v1, v2)
    assert not torch.equal(v1, augment(x, torch.Generator().manual_seed(4)))
    assert not torch.allclose(v1, x)


def test_pretraining_is_deterministic_under_a_seed(x_unlabeled):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = pretrain_backbone(x_unlabeled[:200], epochs=1, batch_size=64, seed=0)
    assert torch.equal(torch.rand(1), before)  # the global RNG is not consumed
    b = pretrain_backbone(x_unlabeled[:200], epochs=1, batch_size=64, seed=0)
    c = pretrain_backbone(x_unlabeled[:200], epochs=1, batch_size=64, seed=1)
    assert _state_equal(a.state_dict(), b.state_dict())
    assert not _state_equal(a.state_dict(), c.state_dict())
    # it trained: not the initialisation it started from
    assert not _state_equal(a.state_dict(), new_backbone(0).state_dict())


def test_pretraining_reduces_its_own_loss(x_unlabeled):
    hist: list[float] = []
    lines: list[str] = []
    pretrain_backbone(x_unlabeled, epochs=6, batch_size=100, lr=2e-3, seed=0, history=hist, log=lines.append)
    assert len(hist) == 6 and all(np.isfinite(hist))
    assert hist[-1] < hist[0] - 0.1, hist
    assert lines[0].startswith("epoch 1/6") and "loss" in lines[0] and "elapsed" in lines[0]


def test_pretraining_rejects_bad_arguments(x_unlabeled):
    with pytest.raises(ValueError, match="epochs = -1"):
        pretrain_backbone(x_unlabeled, epochs=-1)
    with pytest.raises(ValueError, match="batch_size = 1"):
        pretrain_backbone(x_unlabeled, epochs=1, batch_size=1)


def test_linear_probe_separates_separable_features_and_not_noise():
    class Ident(torch.nn.Module):
        out_dim = 5

        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    x[:, 0] += 4 * y
    assert linear_probe_accuracy(Ident(), x[:200], y[:200], x[200:], y[200:]) > 0.95
    assert linear_probe_accuracy(Ident(), x[:200, 1:2], y[:200], x[200:, 1:2], y[200:]) < 0.7


# --------------------------------------------------------------------------- loading

def test_weights_load_through_build_model_and_give_the_same_features(weights, x_unlabeled):
    path, bb = weights
    m = build_model("mnist1d", (40,), 10, backbone_weights=path, seed=3)
    assert _state_equal(m.backbone.state_dict(), bb.state_dict())  # not re-initialised afterwards
    np.testing.assert_array_equal(backbone_features(m.backbone, x_unlabeled), backbone_features(bb, x_unlabeled))
    # without weights: a fresh He-initialised backbone, as before
    fresh = build_model("mnist1d", (40,), 10, seed=3)
    assert not _state_equal(fresh.backbone.state_dict(), bb.state_dict())


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "module.backbone."])
def test_prefixed_and_whole_model_checkpoints_load(weights, tmp_path, prefix):
    path, bb = weights
    p = tmp_path / "prefixed.pt"
    torch.save({prefix + k: v for k, v in bb.state_dict().items()}, p)
    m = build_model("mnist1d", (40,), 10, backbone_weights=str(p))
    assert _state_equal(m.backbone.state_dict(), bb.state_dict())
    # a whole FedALModel checkpoint: only its backbone.* part is taken
    whole = tmp_path / "whole.pt"
    torch.save(m.state_dict(), whole)
    assert _state_equal(build_model("mnist1d", (40,), 10, backbone_weights=str(whole)).backbone.state_dict(),
                        bb.state_dict())


def test_missing_or_mismatched_weights_give_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(BackboneWeightsNotFound, match="nope.pt"):
        build_model("mnist1d", (40,), 10, backbone_weights=str(missing))
    narrow = tmp_path / "narrow.pt"
    torch.save(CNN1D(channels=16).state_dict(), narrow)
    with pytest.raises(BackboneWeightsError, match=r"narrow\.pt does not fit CNN1D.*mismatched shapes.*net\.0\.weight"):
        build_model("mnist1d", (40,), 10, backbone_weights=str(narrow))
    partial = tmp_path / "partial.pt"
    sd = CNN1D().state_dict()
    sd.pop("net.4.bias")
    sd["net.9.weight"] = torch.zeros(1)
    torch.save(sd, partial)
    with pytest.raises(BackboneWeightsError, match=r"1 missing.*net\.4\.bias.*1 unexpected.*net\.9\.weight"):
        build_model("mnist1d", (40,), 10, backbone_weights=str(partial))
    other = tmp_path / "mlp.pt"
    torch.save(MLPBackbone(40).state_dict(), other)
    with pytest.raises(BackboneWeightsError, match="mlp.pt: none of its 2 keys"):
        build_model("mnist1d", (40,), 10, backbone_weights=str(other))


def test_mlp_backbone_loads_weights_too(tmp_path):
    src = MLPBackbone(64)
    torch.nn.init.constant_(src.net[1].weight, 0.5)
    p = tmp_path / "mlp.pt"
    torch.save(src.state_dict(), p)
    m = build_model("digits", (64,), 10, backbone_weights=str(p))
    assert _state_equal(m.backbone.state_dict(), src.state_dict())


# --------------------------------------------------------------------------- config and features

def test_freeze_needs_weights_for_cnn1d():
    with pytest.raises(ConfigError, match="backbone-weights"):
        Config.from_run_config({"dataset": "mnist1d", "freeze-backbone": True})
    with pytest.raises(ConfigError, match="backbone-weights"):
        Config.from_run_config({"dataset": "digits", "backbone": "cnn1d", "freeze-backbone": True})
    with pytest.raises(ConfigError, match="freeze-backbone"):
        Config.from_run_config({"dataset": "digits", "freeze-backbone": True, "backbone-weights": "w.pt"})
    cfg = Config.from_run_config({"dataset": "mnist1d", "freeze-backbone": True, "backbone-weights": "w.pt"})
    assert cfg.freeze_backbone and cfg.backbone_weights == "w.pt"
    Config.from_run_config({"dataset": "mnist1d", "backbone": "cnn1d", "freeze-backbone": True,
                            "backbone-weights": "w.pt"})


def test_model_inputs_are_the_frozen_backbones_features(weights, x_unlabeled):
    from fedal.data import model_inputs

    path, bb = weights
    x = x_unlabeled[:50]
    cfg = Config.from_run_config({"dataset": "mnist1d", "freeze-backbone": True, "backbone-weights": path})
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    f = model_inputs(cfg, x, 0)
    assert torch.equal(torch.rand(1), before)  # extracting features does not reseed torch
    assert f.dtype == np.float32 and f.shape == (50, bb.out_dim)
    np.testing.assert_allclose(f, backbone_features(bb, x), rtol=1e-6, atol=1e-6)
    # the head sees those features: build_model with the feature shape
    m = build_model("mnist1d", f.shape[1:], 10, backbone_weights=path, freeze_backbone=True)
    assert m.head.in_dim == bb.out_dim and m(torch.from_numpy(f)).shape == (50, 10)
    unfrozen = Config.from_run_config({"dataset": "mnist1d", "backbone-weights": path})
    assert model_inputs(unfrozen, x, 0) is x


# --------------------------------------------------------------------------- federated runs

def _run(path, frozen, tmp_path):
    from tests.inprocess import run_inprocess

    rc = {"dataset": "mnist1d", "client-strategy": "random", "point-strategy": "random",
          "init-clients": 2, "init-points": 20, "al-rounds": 1, "clients-per-round": 2,
          "points-per-client": 20, "fl-rounds": 1, "local-epochs": 1, "backbone-weights": path,
          "freeze-backbone": frozen, "run-dir": str(tmp_path)}
    sent = []
    rows, _ = run_inprocess(rc, 4, on_reply=lambda m, r: sent.append((m, r)))
    assert [r["labels"] for r in rows] == [40, 80]
    assert all(np.isfinite(r["accuracy"]) for r in rows)
    return [m.content["arrays"].to_torch_state_dict() for m, _ in sent if "arrays" in m.content.array_records]


def test_federated_run_fine_tunes_the_pretrained_backbone(weights, tmp_path):
    path, bb = weights
    models = _run(path, False, tmp_path)
    first = models[0]  # the global model of the first FL round: the pretrained backbone, untouched
    assert _state_equal({k[len("backbone."):]: v for k, v in first.items() if k.startswith("backbone.")},
                        bb.state_dict())
    last = models[-1]  # after a round of local training the backbone has moved (it is not frozen)
    assert not torch.equal(last["backbone.net.0.weight"], bb.state_dict()["net.0.weight"])


def test_federated_run_with_the_frozen_pretrained_backbone(weights, tmp_path):
    path, bb = weights
    models = _run(path, True, tmp_path)
    assert models and all(set(m) == set(models[0]) and all(k.startswith("head.") for k in m) for m in models)
    assert models[0]["head.hidden.0.weight"].shape == (200, bb.out_dim)  # the head reads CNN1D features


# --------------------------------------------------------------------------- the command

def test_command_writes_loadable_weights_and_reports_both_probes(tmp_path, capsys):
    from simulations.pretrain import main

    out = tmp_path / "sub" / "w.pt"
    assert main(["--out", str(out), "--epochs", "1", "--samples", "200", "--probe-labels", "100",
                 "--batch-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and "identical signals: 0" in text
    assert "pretrained backbone" in text and "random-init backbone" in text
    assert list(out.parent.iterdir()) == [out]  # atomic write: no temp file left
    m = build_model("mnist1d", (40,), 10, backbone_weights=str(out))
    assert isinstance(m.backbone, CNN1D)
    again = tmp_path / "again.pt"  # same arguments, another file name: the same bytes
    main(["--out", str(again), "--epochs", "1", "--samples", "200", "--probe-labels", "100", "--batch-size", "64"])
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args,needle", [
    (["--epochs", "-3"], "--epochs = -3"),
    (["--data-seed", "42"], "--data-seed = 42"),
    (["--batch-size", "1"], "--batch-size = 1"),
    # found only after the output's temp file exists: it must be removed again
    (["--samples", "100", "--epochs", "0", "--probe-labels", "100000"], "--probe-labels = 100000"),
])
def test_command_rejects_bad_arguments(tmp_path, capsys, args, needle):
    from simulations.pretrain import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "w.pt"), *args])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_command_rejects_an_unwritable_path(tmp_path, capsys):
    from simulations.pretrain import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = blocker / "w.pt"  # a folder that cannot exist: its parent is a file
    with pytest.raises(SystemExit) as e:
        main(["--out", str(bad), "--epochs", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(bad) in err and "cannot be written" in err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--epochs", "1"])
    assert "is a directory" in capsys.readouterr().err
