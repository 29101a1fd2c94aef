import copy

import numpy as np
import pytest
import torch

from fedal.training import (build_model, evaluate, predict, pseudo_param_names, pseudo_update,
                            recorded_rounds, train_local)




def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 40)) + y[:, None] * 1.5).astype(np.float32)
    return x, y


def test_recorded_rounds_are_the_last_quarter_of_the_fl_rounds():
    assert recorded_rounds(4) == [4]
    assert recorded_rounds(5) == [4, 5]
    assert recorded_rounds(1) == [1]
    assert recorded_rounds(15) == [12, 13, 14, 15]
    with pytest.raises(ValueError, match="fl-rounds"):
        recorded_rounds(0)


def test_same_seed_same_initial_model_and_training():
    a, b = build_model("mnist1d", (40,), 3, seed=5), build_model("mnist1d", (40,), 3, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x, y = _toy()
    la = train_local(a, x, y, epochs=2, batch_size=16, lr=3e-3, seed=1)
    lb = train_local(b, x, y, epochs=2, batch_size=16, lr=3e-3, seed=1)
    assert la == lb
    # the trained models themselves, not only their losses, and training did move them
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    init = build_model("mnist1d", (40,), 3, seed=5)
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), init.state_dict().values()))
    c = build_model("mnist1d", (40,), 3, seed=5)
    train_local(c, x, y, epochs=2, batch_size=16, lr=3e-3, seed=2)  # another batch order
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_training_learns_a_separable_toy_problem():
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, y = _toy()
    before, _ = evaluate(m, x, y)
    train_local(m, x, y, epochs=15, batch_size=16, lr=3e-3, seed=0)
    after, _ = evaluate(m, x, y)
    assert after > max(before, 0.8)
    probs, emb = predict(m, x)
    assert probs.shape == (120, 3) and emb.shape == (120, 200)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def _head_vector(model):
    return torch.cat([p.detach().flatten() for p in model.head.parameters()])


def test_one_gd_step_is_the_normalised_negative_gradient_of_the_summed_pseudo_label_loss():
    """Eq. 3-4: m = −∇J̃/‖∇J̃‖ over the head, J̃ the *summed* cross-entropy against ŷ = argmax f(x).
    Computed here with plain autograd through the whole model; pseudo_update runs the backbone
    without autograd for this case and chunks the sum, and must agree."""
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy()
    ref = copy.deepcopy(m)
    xt = torch.from_numpy(x)
    logits = ref(xt)
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum")
    grads = torch.autograd.grad(loss, list(ref.head.parameters()))
    want = -torch.cat([g.flatten() for g in grads])
    want = (want / want.norm()).numpy()
    got = pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=1, lr=1e-3, seed=0, scope="head", chunk=50)
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-5)
    # the full update over all parameters, and its head part points the same way
    full = pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=1, lr=1e-3, seed=0, scope="all")
    assert full.shape == (sum(p.numel() for p in m.parameters()),)
    head_part = full[-len(got):]
    assert np.allclose(head_part / np.linalg.norm(head_part), got, atol=1e-5)


def test_gd_takes_several_steps_with_its_step_size():
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy()
    one = pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=1, lr=1e-3, seed=0)
    three = pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=3, lr=1e-3, seed=0)
    big = pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=3, lr=1e-2, seed=0)
    assert not np.allclose(one, three) and not np.allclose(three, big)
    # by hand: three full-batch steps of w ← w − η∇J̃ on every parameter
    ref = copy.deepcopy(m)
    w0 = _head_vector(ref)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        y_hat = ref(xt).argmax(1)
    for _ in range(3):
        ref.zero_grad()
        torch.nn.functional.cross_entropy(ref(xt), y_hat, reduction="sum").backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 1e-3 * p.grad
    d = (_head_vector(ref) - w0).numpy()
    assert np.allclose(three, d / np.linalg.norm(d), atol=1e-4)


def test_adam_pseudo_updates_are_seeded_unit_directions():
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy()
    out = pseudo_update(copy.deepcopy(m), x, optimizer="adam", epochs=2, batch_size=32, lr=1e-3, seed=0)
    n_head = sum(m.state_dict()[k].numel() for k in pseudo_param_names(m, "head"))
    assert out.shape == (n_head,) and abs(np.linalg.norm(out) - 1) < 1e-5
    again = pseudo_update(copy.deepcopy(m), x, optimizer="adam", epochs=2, batch_size=32, lr=1e-3, seed=0)
    assert np.array_equal(out, again)
    other = pseudo_update(copy.deepcopy(m), x, optimizer="adam", epochs=2, batch_size=32, lr=1e-3, seed=1)
    assert not np.array_equal(out, other)
    assert not pseudo_update(copy.deepcopy(m), x[:0], optimizer="adam", epochs=2, lr=1e-3, seed=0).any()
    with pytest.raises(ValueError, match="pseudo-optimizer = 'sgd'.*gd, adam"):
        pseudo_update(copy.deepcopy(m), x, optimizer="sgd", epochs=1, lr=1e-3, seed=0)


def test_a_diverging_gd_pseudo_update_is_a_clear_error_not_a_nan_direction():
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy()
    with pytest.raises(FloatingPointError, match="lower pseudo-lr or use pseudo-epochs = 1"):
        pseudo_update(copy.deepcopy(m), x, optimizer="gd", epochs=6, lr=1e3, seed=0)
