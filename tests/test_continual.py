"""Continual-AL training modes (fedal/continual.py; seeds/002 Eq. 1–6, docs/method.md, "Baselines and training modes")."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedal import continual as C
from fedal import uncertainty as U
from fedal.models import FedALModel, MLPBackbone

NUM_CLASSES = 3
DIM = 6


def make_model(seed: int = 0) -> FedALModel:
    torch.manual_seed(seed)
    return FedALModel(MLPBackbone(DIM, width=16), NUM_CLASSES)


def make_data(n: int, seed: int = 0, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g) + offset
    y = ((x[:, 0] > offset).long() + (x[:, 1] > offset).long()).clamp(max=NUM_CLASSES - 1)
    return x, y


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def params_equal(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)




@pytest.fixture(scope="module")
def client():
    """A client with 40 new labels, 60 old labels and their stored logits."""
    new_x, new_y = make_data(40, seed=1, offset=0.5)
    old_x, old_y = make_data(60, seed=2)
    old_logits = C.record_logits(make_model(9), old_x)
    return new_x, new_y, old_x, old_y, old_logits


# ---------------------------------------------------------------------------------------------
# modes, hyperparameters, schedules
# ---------------------------------------------------------------------------------------------

def test_training_modes():
    assert C.TRAINING_MODES == ("retrain", "warm-start", "cal-er", "cal-mir", "cal-der", "cal-sd",
                                "cal-sds2")
    assert set(C.SCHEDULES) == set(C.TRAINING_MODES)


def test_hyperparameter_defaults_follow_the_paper_and_resolve():
    hp = C.CALHyperParams()
    assert (hp.der_alpha, hp.der_beta, hp.sd_alpha, hp.sds2_sigma, hp.sds2_lambda) == (
        0.1, 1.0, 0.25, 0.1, 1.0)
    r = hp.resolve(batch_size=32, lr=0.01)
    assert (r.replay_size, r.mir_candidates, r.sds2_candidates, r.mir_virtual_lr) == (
        32, 64, 64, 0.01)
    assert C.CALHyperParams.from_config({"der-alpha": 0.5, "replay_size": 8}) == C.CALHyperParams(
        der_alpha=0.5, replay_size=8)
    with pytest.raises(ValueError, match="unknown CAL hyperparameter 'alpha'"):
        C.CALHyperParams.from_config({"alpha": 0.5})


@pytest.mark.parametrize("field,value", [
    ("der_alpha", -0.1), ("der_beta", float("nan")), ("sd_alpha", 1.5), ("sd_alpha", -1e-9),
    ("sds2_sigma", 0.0), ("sds2_lambda", -1.0), ("mir_virtual_lr", 0.0), ("replay_size", 0),
    ("replay_size", 2.5), ("mir_candidates", 0), ("sds2_candidates", True), ("der_alpha", "0.1"),
])
def test_hyperparameter_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        C.CALHyperParams(**{field: value})


def test_candidates_must_cover_the_replay_batch():
    with pytest.raises(ValueError, match="mir_candidates"):
        C.CALHyperParams(replay_size=16, mir_candidates=8)
    x, y = make_data(10)
    with pytest.raises(ValueError, match="sds2_candidates"):   # explicit C < resolved m' = m
        C.train_continual(make_model(), x, y, x, y, None, mode="cal-er", epochs=1, batch_size=8,
                          generator=gen(), hp=C.CALHyperParams(sds2_candidates=4))


def test_schedules():
    retrain = C.Schedule(fl_rounds=10, local_epochs=2)
    for mode in C.TRAINING_MODES:
        # nothing to warm-start from in the first AL round
        assert C.resolve_schedule(mode, retrain, al_round=0) == retrain
    assert C.resolve_schedule("retrain", retrain, al_round=3) == retrain
    for mode in C.TRAINING_MODES[1:]:
        s = C.resolve_schedule(mode, retrain, al_round=3)
        assert s == C.SCHEDULES[mode] and s.fl_rounds < retrain.fl_rounds
    # never more than retrain
    short = C.Schedule(fl_rounds=3, local_epochs=1)
    assert C.resolve_schedule("cal-sd", short, al_round=2) == short
    with pytest.raises(ValueError, match="mode"):
        C.resolve_schedule("cal-ewc", retrain, al_round=1)
    with pytest.raises(ValueError, match="fl_rounds"):
        C.Schedule(fl_rounds=0, local_epochs=1)


# ---------------------------------------------------------------------------------------------
# losses on hand-computable cases
# ---------------------------------------------------------------------------------------------

def test_er_is_cross_entropy_on_the_interleaved_batch():
    torch.manual_seed(0)
    ln, lr = torch.randn(4, 3), torch.randn(4, 3)
    yn, yr = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    loss = C.er_loss(ln, yn, lr, yr)
    assert torch.allclose(loss, F.cross_entropy(torch.cat([ln, lr]), torch.cat([yn, yr])))
    # equal batch sizes: the mean of the two batch losses
    assert torch.allclose(loss, (F.cross_entropy(ln, yn) + F.cross_entropy(lr, yr)) / 2)
    # unequal sizes m = 4, m' = 2: (m L_c + m' L_r) / (m + m')
    l2 = C.er_loss(ln, yn, lr[:2], yr[:2])
    expect = (4 * F.cross_entropy(ln, yn) + 2 * F.cross_entropy(lr[:2], yr[:2])) / 6
    assert torch.allclose(l2, expect)
    # hand value: two uniform 2-class predictions → log 2
    z = torch.zeros(1, 2)
    assert C.er_loss(z, torch.tensor([0]), z, torch.tensor([1])).item() == pytest.approx(
        math.log(2))
    # empty replay → L_c
    assert torch.allclose(C.er_loss(ln, yn, lr[:0], yr[:0]), F.cross_entropy(ln, yn))


def test_der_distillation_vanishes_when_logits_match_and_is_a_squared_norm():
    torch.manual_seed(0)
    ln, lr = torch.randn(3, 3), torch.randn(5, 3)
    yn, yr = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 1, 0, 1])
    base = F.cross_entropy(ln, yn) + 0.7 * F.cross_entropy(lr, yr)
    loss = C.der_loss(ln, yn, lr, yr, lr.clone(), alpha=0.3, beta=0.7)
    assert torch.allclose(loss, base)
    # hand value: one replay point, g − z' = (1, −2, 0) → MSE = 5/3, α = 0.3 → +0.5
    z = torch.zeros(1, 3)
    g = torch.tensor([[1.0, -2.0, 0.0]])
    zero = torch.zeros(0, 3)
    empty = torch.zeros(0, dtype=torch.long)
    assert C.der_loss(zero, empty, g, torch.tensor([0]), z, alpha=0.3, beta=0.0).item() == (
        pytest.approx(0.5))
    # two replay points: averaged over the batch, (5/3 + 0)/2
    g2, z2 = torch.cat([g, z]), torch.zeros(2, 3)
    assert C.der_loss(zero, empty, g2, torch.tensor([0, 1]), z2, alpha=1.0, beta=0.0).item() == (
        pytest.approx(5 / 6))
    # empty replay → L_c
    assert torch.allclose(C.der_loss(ln, yn, zero, empty, zero, alpha=0.1, beta=1.0),
                          F.cross_entropy(ln, yn))


def test_sd_lambda_and_reduction_to_cross_entropy_without_history():
    assert C.sd_lambda(200, 0) == 1.0
    assert C.sd_lambda(200, 600) == pytest.approx(1 / (1 + 600 / 200))
    assert C.sd_lambda(0, 600) == 0.0
    with pytest.raises(ValueError):
        C.sd_lambda(0, 0)
    torch.manual_seed(0)
    ln, yn = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    zero, empty = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    loss = C.sd_loss(ln, yn, zero, empty, zero, alpha=0.25, lam=C.sd_lambda(4, 0))
    assert torch.allclose(loss, F.cross_entropy(ln, yn))


def test_sd_replay_loss_hand_value():
    # stored z' = 0 (uniform teacher), model logits (log 3, 0): q = (3/4, 1/4)
    # KL(u ‖ q) = ½ log(½ / ¾) + ½ log(½ / ¼) = ½ log(4/3); CE(y=0) = −log ¾
    g = torch.tensor([[math.log(3.0), 0.0]])
    z = torch.zeros(1, 2)
    y = torch.tensor([0])
    alpha = 0.25
    expected = alpha * 0.5 * math.log(4 / 3) + (1 - alpha) * -math.log(0.75)
    assert C.sd_replay_loss(g, y, z, alpha=alpha).item() == pytest.approx(expected, rel=1e-6)
    # convex combination with λ_t (Eq. 4)
    ln, yn = torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    lam = C.sd_lambda(1, 3)
    full = C.sd_loss(ln, yn, g, y, z, alpha=alpha, lam=lam).item()
    assert full == pytest.approx(lam * math.log(2) + (1 - lam) * expected, rel=1e-6)
    # matching logits: the KL term vanishes
    assert C.sd_replay_loss(g, y, g.clone(), alpha=alpha).item() == pytest.approx(
        (1 - alpha) * -math.log(0.75), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# MIR
# ---------------------------------------------------------------------------------------------

def test_mir_virtual_step_leaves_the_model_untouched_and_ranks_by_loss_increase():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    before = copy.deepcopy(model.state_dict())
    x_cur, y_cur = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # the virtual step raises logit 0 (weight column 0 and bias): candidate 0 (same input, other
    # label) is hurt most, candidate 2 (other input, label 1) only through the bias, candidate 1
    # (same input, same label) gains.
    x_cand = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y_cand = torch.tensor([1, 0, 1])
    s = C.mir_scores(model, x_cur, y_cur, x_cand, y_cand, virtual_lr=0.5)
    assert params_equal(model.state_dict(), before)
    assert all(p.grad is None for p in model.parameters())
    assert s[0] > s[2] > 0 > s[1]
    assert C.mir_select(s, 2).tolist() == [0, 2]
    # literal check: a real SGD step on a copy gives the same loss increases
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    F.cross_entropy(twin(x_cur), y_cur).backward()
    opt.step()
    with torch.no_grad():
        expect = (F.cross_entropy(twin(x_cand), y_cand, reduction="none")
                  - F.cross_entropy(model(x_cand), y_cand, reduction="none"))
    assert torch.allclose(s, expect, atol=1e-6)


def test_mir_select_ties_go_to_lower_index():
    assert C.mir_select(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0]), 2).tolist() == [1, 2]
    assert C.mir_select(torch.tensor([1.0, 2.0]), 5).tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# SDS2
# ---------------------------------------------------------------------------------------------

def test_sds2_selection_is_distinct_in_range_and_its_gains_sum_to_the_objective():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(30, 4, generator=g)
    h = torch.rand(30, generator=g)
    idx, gains = C.sds2_select(emb, h, 12, sigma=1.0, lam=1.0)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert int(idx.min()) >= 0 and int(idx.max()) < 30
    w = C.sds2_similarity(emb, 1.0)
    assert float(gains.sum()) == pytest.approx(C.sds2_objective(w, h, idx.tolist(), lam=1.0))
    # each greedy pick is the best single addition at its step, and gains diminish
    for t in range(12):
        prefix = idx[:t].tolist()
        base = C.sds2_objective(w, h, prefix, lam=1.0)
        best = max(C.sds2_objective(w, h, prefix + [j], lam=1.0) - base
                   for j in range(30) if j not in prefix)
        assert gains[t].item() == pytest.approx(best)
    assert torch.all(gains[1:] <= gains[:-1] + 1e-12)
    # asking for more than the ground set returns all of it once
    all_five, _ = C.sds2_select(emb[:5], h[:5], 9, sigma=1.0, lam=1.0)
    assert sorted(all_five.tolist()) == list(range(5))


def test_sds2_trades_diversity_against_uncertainty():
    # two tight clusters; cluster A has the more uncertain points
    emb = torch.tensor([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [10.0, 10.0], [10.01, 10.0]])
    h = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.05])
    # pure facility location (λ = 0) with a cluster-scale σ: one point per cluster
    picks, _ = C.sds2_select(emb, h, 2, sigma=1.0, lam=0.0)
    assert {int(p) >= 3 for p in picks} == {True, False}
    # σ far below the point spacing: w ≈ I, the facility-location gain is 1 for everybody and
    # the uncertainty term decides (the degenerate regime documented in the module)
    picks, _ = C.sds2_select(emb, h, 2, sigma=1e-4, lam=1.0)
    assert picks.tolist() == [0, 1]


def test_entropy_matches_the_uncertainty_module():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(C.entropy_from_logits(logits).numpy(),
                               U.entropy(torch.softmax(logits, 1).numpy()), rtol=1e-6)


def test_sds2_embedding_shortcut_equals_forward():
    model = make_model()
    x, _ = make_data(7)
    with torch.no_grad():
        assert torch.allclose(model.head.classifier(model.embed(x)), model(x))


# ---------------------------------------------------------------------------------------------
# train_continual: labeled data only
# ---------------------------------------------------------------------------------------------

class Recorder(nn.Module):
    """Wraps a model and records every input row it is trained or scored on."""

    def __init__(self, inner: FedALModel):
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes
        self.head = inner.head
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)

    def embed(self, x):
        self.seen.append(x.detach().clone())
        return self.inner.embed(x)


@pytest.mark.parametrize("mode", C.TRAINING_MODES)
def test_training_sees_only_the_given_labeled_points(client, mode):
    new_x, new_y, old_x, old_y, old_logits = client
    unlabeled_x, _ = make_data(50, seed=3, offset=5.0)   # the client's U: never passed in
    model = Recorder(make_model())
    stats = C.train_continual(model, new_x, new_y, old_x, old_y, old_logits, mode=mode, epochs=2,
                              batch_size=8, generator=gen(), hp=C.CALHyperParams(replay_size=4))
    rows = torch.cat(model.seen)
    labeled = torch.cat([new_x, old_x])
    # every row the model saw is a labeled row; none is an unlabeled one
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.cdist(rows, labeled, compute_mode=exact).min(dim=1).values.max() == 0
    assert torch.cdist(rows, unlabeled_x, compute_mode=exact).min() > 0
    ri = stats["replay_indices"]
    if mode in C.CAL_MODES:
        assert len(ri) > 0 and ri.min() >= 0 and ri.max() < len(old_x)
        assert stats["replay_draws"] == stats["steps"] * 4
    else:
        assert len(ri) == 0


@pytest.mark.parametrize("bad,match", [
    (dict(new_y=torch.zeros(39, dtype=torch.long)), "new_y"),
    (dict(old_y=torch.zeros(61, dtype=torch.long)), "old_y"),
    (dict(old_x=torch.zeros(60, DIM + 1)), "feature shape"),
    (dict(new_x=torch.zeros(40)), "new_x"),
    (dict(new_y=torch.full((40,), -1)), "unlabeled sentinel"),
    (dict(old_y=torch.full((60,), 3)), r"\[0, 3\)"),
    (dict(new_y=torch.zeros(40)), "integer"),
    (dict(old_logits=None), "old_logits"),
    (dict(old_logits=torch.zeros(59, NUM_CLASSES)), "old_logits"),
    (dict(old_logits=torch.zeros(60, NUM_CLASSES + 1)), "old_logits"),
    (dict(mode="cal-ewc"), "mode"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(new_x=torch.zeros(0, DIM), new_y=torch.zeros(0, dtype=torch.long),
          old_x=torch.zeros(0, DIM), old_y=torch.zeros(0, dtype=torch.long)), "no labeled data"),
])
def test_inconsistent_inputs_raise(client, bad, match):
    new_x, new_y, old_x, old_y, old_logits = client
    args = dict(new_x=new_x, new_y=new_y, old_x=old_x, old_y=old_y, old_logits=old_logits,
                mode="cal-der", optimizer="adam")
    args.update(bad)
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        C.train_continual(model, args.pop("new_x"), args.pop("new_y"), args.pop("old_x"),
                          args.pop("old_y"), args.pop("old_logits"), epochs=1, batch_size=8,
                          generator=gen(), **args)
    assert params_equal(model.state_dict(), before)


# ---------------------------------------------------------------------------------------------
# warm start, determinism, degenerate clients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", C.TRAINING_MODES)
def test_zero_epochs_keeps_the_given_weights(client, mode):
    given = make_model(5).state_dict()
    model = make_model(0)
    model.load_state_dict(given)
    stats = C.train_continual(model, *client, mode=mode, epochs=0, batch_size=8, generator=gen())
    assert params_equal(model.state_dict(), given) and stats["steps"] == 0


def test_warm_start_resumes_from_the_given_weights_and_reduces_the_loss():
    x, y = make_data(24, seed=4)
    given = make_model(5).state_dict()
    model = make_model(0)
    model.load_state_dict(given)
    first_params = []

    def snapshot(module, inputs):
        if not first_params:
            first_params.append(copy.deepcopy(module.state_dict()))

    handle = model.register_forward_pre_hook(snapshot)
    with torch.no_grad():
        start_loss = F.cross_entropy(model(x), y).item()
    first_params.clear()
    # one full-batch gradient step (batch = the whole set) with a small step size: a descent step
    C.train_continual(model, x[:16], y[:16], x[16:], y[16:], None, mode="warm-start", epochs=1,
                      batch_size=24, generator=gen(), optimizer="sgd", lr=1e-3)
    handle.remove()
    assert params_equal(first_params[0], given)         # training started from the given weights
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < start_loss
    assert not params_equal(model.state_dict(), given)


@pytest.mark.parametrize("mode", C.TRAINING_MODES)
def test_same_generator_seed_same_result(client, mode):
    runs = []
    for seed in (7, 7, 8):
        model = make_model()
        s = C.train_continual(model, *client, mode=mode, epochs=2, batch_size=8,
                              generator=gen(seed), hp=C.CALHyperParams(replay_size=8),
                              optimizer="sgd", lr=0.05)
        runs.append((model.state_dict(), s))
    (a, sa), (b, sb), (c, _) = runs
    assert params_equal(a, b) and sa["loss_per_epoch"] == sb["loss_per_epoch"]
    np.testing.assert_array_equal(sa["replay_indices"], sb["replay_indices"])
    assert not params_equal(a, c)


@pytest.mark.parametrize("mode", C.CAL_MODES)
def test_without_history_every_cal_mode_is_fine_tuning_on_the_new_labels(client, mode):
    new_x, new_y, old_x, old_y, _ = client
    ref, model = make_model(), make_model()
    no_x, no_y = old_x[:0], old_y[:0]
    C.train_continual(ref, new_x, new_y, no_x, no_y, None, mode="warm-start", epochs=2,
                      batch_size=8, generator=gen())
    s = C.train_continual(model, new_x, new_y, no_x, no_y, None, mode=mode, epochs=2, batch_size=8,
                          generator=gen())
    assert params_equal(ref, model) and s["replay_draws"] == 0


@pytest.mark.parametrize("mode", C.CAL_MODES)
def test_client_without_new_labels_trains_on_replay_alone(client, mode):
    _, _, old_x, old_y, old_logits = client
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    s = C.train_continual(model, old_x[:0], old_y[:0], old_x, old_y, old_logits, mode=mode,
                          epochs=2, batch_size=8, generator=gen())
    assert s["steps"] == 2 * math.ceil(60 / (8 + 8))   # decision 1: ⌈|D_1:t−1| / (m + m')⌉
    assert s["replay_draws"] == s["steps"] * 8
    assert not params_equal(model.state_dict(), before)
    if mode in ("cal-sd", "cal-sds2"):
        assert s["lambda_t"] == 0.0
    s = C.train_continual(make_model(), old_x[:0], old_y[:0], old_x, old_y, old_logits, mode=mode,
                          epochs=1, batch_size=8, generator=gen(), steps_per_epoch=2)
    assert s["steps"] == 2


def test_sd_lambda_override_and_stats(client):
    s = C.train_continual(make_model(), *client, mode="cal-sd", epochs=1, batch_size=8,
                          generator=gen())
    assert s["lambda_t"] == pytest.approx(40 / 100)
    s = C.train_continual(make_model(), *client, mode="cal-sd", epochs=1, batch_size=8,
                          generator=gen(), lambda_t=0.9)
    assert s["lambda_t"] == 0.9 and s["steps"] == 5 and s["samples_trained"] == 5 * 8 + 40
    with pytest.raises(ValueError, match="lambda_t"):
        C.train_continual(make_model(), *client, mode="cal-sd", epochs=1, batch_size=8,
                          generator=gen(), lambda_t=1.5)


def test_mir_and_sds2_choose_replay_among_candidates(client):
    # With C = m' every candidate is replayed, so MIR/SDS2 reduce to uniform replay of C points;
    # with C = |history| and m' = 1 the choice is deterministic given the model.
    new_x, new_y, old_x, old_y, old_logits = client
    for mode in ("cal-mir", "cal-sds2"):
        hp = C.CALHyperParams(replay_size=4, mir_candidates=12, sds2_candidates=12)
        s = C.train_continual(make_model(), *client, mode=mode, epochs=1, batch_size=8,
                              generator=gen(), hp=hp)
        assert s["selection_samples"] > 0 and s["replay_draws"] == s["steps"] * 4


def test_record_logits_restores_mode_and_matches_forward():
    model = make_model()
    model.train()
    x, _ = make_data(9)
    z = C.record_logits(model, x, batch_size=4)
    assert model.training and z.shape == (9, NUM_CLASSES)
    with torch.no_grad():
        # batches of 4 and of 9 take different matrix kernels (MKL): equal up to float32 rounding
        assert torch.allclose(z, model(x), rtol=1e-5, atol=1e-5)
    assert C.record_logits(model, x[:0]).shape == (0, NUM_CLASSES)


def test_numpy_inputs_are_accepted_and_cast_to_the_model_dtype(client):
    new_x, new_y, old_x, old_y, old_logits = client
    a, b = make_model(), make_model()
    C.train_continual(a, new_x, new_y, old_x, old_y, old_logits, mode="cal-der", epochs=1,
                      batch_size=8, generator=gen())
    C.train_continual(b, new_x.double().numpy(), new_y.numpy().astype(np.int32),
                      old_x.double().numpy(), old_y.numpy(), old_logits.double().numpy(),
                      mode="cal-der", epochs=1, batch_size=8, generator=gen())
    assert params_equal(a, b)


# ---------------------------------------------------------------------------------------------
# CAL on the shared loop (fedal.training.local_sgd)
# ---------------------------------------------------------------------------------------------

def test_the_shared_loop_descends_the_cal_loss_term(client, monkeypatch):
    # ER's loss, scaled to 0: SGD then has nothing to descend, so the weights must not move (they
    # would if the loop trained on its default cross-entropy), and it runs once per optimizer step
    from fedal.continual_losses import er_loss

    calls = []

    def zero_er(*args):
        calls.append(1)
        return er_loss(*args) * 0.0

    monkeypatch.setattr(C, "er_loss", zero_er)
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    s = C.train_continual(model, *client, mode="cal-er", epochs=2, batch_size=8, generator=gen(),
                          optimizer="sgd", lr=0.1)
    assert params_equal(model.state_dict(), before) and len(calls) == s["steps"] == 2 * 5


def test_cal_modes_train_on_their_replay_loss_not_on_the_new_labels_alone(client):
    new_x, new_y, old_x, old_y, old_logits = client
    plain = make_model()
    C.train_continual(plain, new_x, new_y, old_x[:0], old_y[:0], None, mode="warm-start", epochs=1,
                      batch_size=8, generator=gen())
    for mode in C.CAL_MODES:
        model = make_model()
        s = C.train_continual(model, *client, mode=mode, epochs=1, batch_size=8, generator=gen())
        assert not params_equal(model, plain) and s["replay_draws"] > 0, mode
    # DER's distillation weight α reaches the update
    a, b = make_model(), make_model()
    for m, alpha in ((a, 0.1), (b, 5.0)):
        C.train_continual(m, *client, mode="cal-der", epochs=1, batch_size=8, generator=gen(),
                          hp=C.CALHyperParams(der_alpha=alpha))
    assert not params_equal(a, b)


class _TinyNet(nn.Module):
    out_dim = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.parametrize("mode", ["warm-start", "cal-der"])
def test_uint8_pixels_reach_a_pixel_input_model_as_bytes(mode):
    # PixelInput normalises uint8 pixels itself and rejects floats; train_local always passed the
    # bytes through, and so does train_continual now (it used to cast them to float32)
    from fedal.backbones import BackboneTransform, PixelInput
    from fedal.training import train_local

    torch.manual_seed(0)
    base = FedALModel(PixelInput(_TinyNet(), BackboneTransform()), NUM_CLASSES)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8))
    y = torch.arange(30) % NUM_CLASSES
    model = copy.deepcopy(base)
    z = C.record_logits(model, x[10:])
    s = C.train_continual(model, x[:10], y[:10], x[10:], y[10:], z, mode=mode, epochs=1,
                          batch_size=8, generator=gen(3))
    assert s["steps"] > 0 and not params_equal(model, base)
    if mode == "warm-start":
        ref = copy.deepcopy(base)
        train_local(ref, x.numpy(), y.numpy(), epochs=1, batch_size=8, lr=1e-3, seed=3)
        assert params_equal(model, ref)
