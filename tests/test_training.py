import copy

import numpy as np
import pytest
import torch

from fedal.training import (build_model, epoch_batches, evaluate, local_sgd, predict, pseudo_param_names,
                            pseudo_update, recorded_rounds, train_local)




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


# ---------------------------------------------------------------------------------------------
# the one local-training loop (fedal.training.local_sgd)
# ---------------------------------------------------------------------------------------------

def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_loop_takes_one_seeded_permutation_per_epoch_in_batch_size_chunks():
    # the batch order every committed retrain/warm-start result was produced with: per epoch one
    # torch.randperm(n) from a generator seeded once, cut into chunks (the last one smaller)
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy(n=50)
    seen = []

    def spy(xb, yb):
        seen.append(yb.clone())
        return m(xb).pow(2).mean(), len(yb)

    local_sgd(m, x, np.arange(50), epochs=3, batch_size=16, lr=1e-3, loss_term=spy,
              generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    want = [c for _ in range(3) for c in torch.randperm(50, generator=g).split(16)]
    assert [len(b) for b in seen] == [16, 16, 16, 2] * 3
    assert all(torch.equal(a, b) for a, b in zip(seen, want)) and len(seen) == len(want)
    g = torch.Generator().manual_seed(11)
    assert all(torch.equal(a, b) for a, b in zip(epoch_batches(50, 16, g), want[:4]))


def test_retrain_and_warm_start_take_identical_batches_given_the_same_seed():
    """Retrain (train_local) and warm start (train_continual) run the same loop: given the same
    rows, seed and start they give the same weights bit for bit — they differ only in the start.
    (The client hands warm start its new labels first: ``fedal.client.ClientWorker._train_continual``.)"""
    from fedal.continual import train_continual

    x, y = _toy(n=70)
    base = build_model("mnist1d", (40,), 3, seed=2)
    a, b, c = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    la = train_local(a, x, y, epochs=2, batch_size=16, lr=3e-3, seed=4)
    sb = train_continual(b, x[:30], y[:30], x[30:], y[30:], None, mode="warm-start", epochs=2,
                         batch_size=16, lr=3e-3, generator=torch.Generator().manual_seed(4))
    train_continual(c, x[:30], y[:30], x[30:], y[30:], None, mode="retrain", epochs=2,
                    batch_size=16, lr=3e-3, generator=torch.Generator().manual_seed(4))
    assert _states_equal(a, b) and _states_equal(a, c) and not _states_equal(a, base)
    assert la == sb["loss_per_epoch"][-1] and sb["steps"] == 2 * 5


def test_the_adam_pseudo_update_is_the_loop_on_pseudo_labels():
    m = build_model("mnist1d", (40,), 3, seed=0)
    x, _ = _toy()
    got = pseudo_update(copy.deepcopy(m), x, optimizer="adam", epochs=2, batch_size=32, lr=1e-3,
                        seed=5, scope="all")
    ref = copy.deepcopy(m)
    y_hat = predict(m, x)[0].argmax(1)
    train_local(ref, x, y_hat, epochs=2, batch_size=32, lr=1e-3, seed=5)
    d = torch.cat([(p - q).detach().flatten() for p, q in zip(ref.parameters(), m.parameters())])
    assert np.array_equal(got, (d / d.norm()).numpy())


@pytest.mark.parametrize("steps_per_epoch, per_epoch", [(None, 4), (7, 7)])
def test_one_optimizer_step_per_batch(steps_per_epoch, per_epoch):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    m = build_model("mnist1d", (40,), 3, seed=0)
    x, y = _toy(n=50)
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        stats = local_sgd(m, x, y, epochs=3, batch_size=16, lr=1e-3, steps_per_epoch=steps_per_epoch,
                          generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(steps) == stats.steps == 3 * per_epoch
    assert stats.samples == (3 * 50 if steps_per_epoch is None else 3 * 7 * 16)
    assert len(stats.loss_per_epoch) == 3 and all(np.isfinite(stats.loss_per_epoch))


def test_the_loss_term_is_what_the_optimizer_descends():
    # loss = Σ bias of the classifier: with SGD every step moves exactly that bias by −lr, nothing else
    m = build_model("mnist1d", (40,), 3, seed=0)
    before = copy.deepcopy(m)
    x, y = _toy(n=40)
    bias = m.head.classifier.bias
    stats = local_sgd(m, x, y, epochs=2, batch_size=16, lr=0.5, optimizer="sgd",
                      loss_term=lambda xb, yb: (bias.sum(), len(yb)),
                      generator=torch.Generator().manual_seed(0))
    assert stats.steps == 6
    assert torch.allclose(bias.detach(), before.head.classifier.bias.detach() - 0.5 * 6, atol=1e-5)
    moved = [k for k, v in m.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert moved == ["head.classifier.bias"]


def test_a_diverging_loop_stops_before_a_non_finite_loss_reaches_the_weights():
    m = build_model("mnist1d", (40,), 3, seed=0)
    m.eval()
    x, y = _toy(n=40)
    calls = []

    def term(xb, yb):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(m(xb), yb)
        return (loss * float("nan") if len(calls) == 2 else loss), len(yb)

    one_step = copy.deepcopy(m)
    local_sgd(one_step, x[:16], y[:16], epochs=1, batch_size=16, lr=1e-2,
              generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="diverged: loss nan at epoch 2, step 2"):
        local_sgd(m, x[:16], y[:16], epochs=2, batch_size=16, lr=1e-2, loss_term=term,
                  generator=torch.Generator().manual_seed(0))
    assert _states_equal(m, one_step) and not m.training   # the first step only; mode restored
