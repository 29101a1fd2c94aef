"""Annotators (fedal/annotate/annotators.py): the desk, latency distributions, simulated
annotators on a simulated and a real clock, label noise, exact budgets."""

import math
import time

import numpy as np
import pytest

from fedal.annotate.annotators import (AnnotationDesk, Latency, RealClock, SimulatedAnnotators,
                                       SimulatedClock)
from fedal.store import PoolStore, StoreError

N = 3000


def make_store(tmp_path, clock=None, n=N, name="p.sqlite"):
    kw = {} if clock is None else {"clock": clock}
    # durable=False: no fsync per label (a simulation's store; ~20 ms per commit on a busy disk)
    return PoolStore(tmp_path / name, "exp", "site", n, "fp", durable=False, **kw)


def test_latency_distributions_parse_and_sample():
    rng = np.random.default_rng(0)
    assert Latency.parse("constant:seconds=2.5").sample(rng) == 2.5
    exp = Latency.parse("exponential: mean=4")
    assert abs(np.mean([exp.sample(rng) for _ in range(20000)]) - 4) < 0.15
    ln = Latency.parse("lognormal:median=6,sigma=0.5")
    xs = np.array([ln.sample(rng) for _ in range(20000)])
    assert abs(np.median(xs) - 6) < 0.2 and abs(xs.mean() - ln.mean) < 0.2
    assert ln.mean == pytest.approx(6 * math.exp(0.125))
    u = Latency.parse("uniform:low=1,high=3")
    assert all(1 <= u.sample(rng) <= 3 for _ in range(100))
    assert str(Latency.parse("lognormal:sigma=0.5,median=6")) == "lognormal:median=6,sigma=0.5"
    for bad, msg in [("gamma:k=1", "not one of"), ("lognormal:median=6", "takes median, sigma"),
                     ("exponential:mean=-1", ">= 0"), ("exponential:mean=0", "mean > 0"),
                     ("uniform:low=3,high=1", "low <= high"), ("constant:seconds", "key=value")]:
        with pytest.raises(ValueError, match=msg):
            Latency.parse(bad)


def test_the_desk_writes_through_the_store_and_checks_class_ids(tmp_path):
    with make_store(tmp_path) as s:
        s.add_queries([3, 4], 0, "entropy")
        desk = AnnotationDesk(s, "page/abc", num_classes=10)
        q = desk.next()
        with pytest.raises(StoreError, match=r"not a class id of this site \(0\.\.9\)"):
            desk.submit(q.id, 10)
        assert desk.submit(q.id, 9).paid_now and desk.progress().by_annotator == 1
        assert desk.undo().id == q.id and desk.next().id == q.id
        desk.skip(q.id)
        assert desk.next().index == 4 and s.n_labeled == 0


def test_simulated_annotators_on_a_simulated_clock_follow_the_latency(tmp_path):
    clock = SimulatedClock(100.0)
    with make_store(tmp_path, clock) as s:
        y = np.arange(N) % 10
        s.add_queries(list(range(10)), 0, "entropy")
        team = SimulatedAnnotators(s, y, n_annotators=3, latency="constant:seconds=2", clock=clock)
        team.run_until(107)  # answers at 102, 104, 106: 9 labels, the 10th in someone's hands
        assert s.n_labeled == 9 and clock.now() == 107
        assert s.progress().claimed == 1
        team.run_until(110)
        idx, lab = s.labeled_arrays()
        assert s.n_labeled == 10 and (lab == y[idx]).all()
        sm = team.summary()
        # 30 annotator-seconds: 20 busy; idle: two annotators from 106, one from 108, to 110
        assert sm["labels"] == 10 and sm["idle_fraction"] == pytest.approx(10 / 30)
        assert sum(st.busy_s for st in team.stats) == pytest.approx(20)
        # the pool is refilled: idle annotators pick the new queries up at their next look
        s.add_queries([20, 21], 1, "margin")
        team.run_until(113)
        assert s.n_labeled == 12
        waits = sorted(w for st in team.stats for w in st.waits)
        # 7 answers found the next query waiting; two annotators waited for the refill, added at
        # 110 and seen at their next look at 111: the one done at 108 waited 3 s, one done at 106 5 s
        assert waits == [0] * 7 + [3, 5]


def test_label_noise_flips_the_given_fraction_to_other_classes(tmp_path):
    clock = SimulatedClock()
    with make_store(tmp_path, clock) as s:
        y = np.arange(N) % 4
        s.add_queries(list(range(600)), 0, "random")
        team = SimulatedAnnotators(s, y, n_annotators=4, latency="exponential:mean=3", clock=clock,
                                   flip_prob=0.3, num_classes=4, seed=1)
        team.run_until(1e9, stop_when_done=True)
        idx, lab = s.labeled_arrays()
        assert len(idx) == 600
        wrong = lab != y[idx]
        assert abs(wrong.mean() - 0.3) < 0.06 and team.summary()["flipped"] == wrong.sum()
        assert set(lab.tolist()) == {0, 1, 2, 3}
        # the same seed gives the same labels and times
    clock2 = SimulatedClock()
    with make_store(tmp_path, clock2, name="q.sqlite") as s2:
        s2.add_queries(list(range(600)), 0, "random")
        SimulatedAnnotators(s2, y, n_annotators=4, latency="exponential:mean=3", clock=clock2, flip_prob=0.3,
                            num_classes=4, seed=1).run_until(1e9, stop_when_done=True)
        assert s2.labeled_arrays()[1].tolist() == lab.tolist() and clock2.now() == clock.now()
    with pytest.raises(ValueError, match="needs num_classes"):
        SimulatedAnnotators(s2, y, flip_prob=0.1)


def test_simulated_annotators_pay_exactly_the_budget(tmp_path):
    clock = SimulatedClock()
    with make_store(tmp_path, clock) as s:
        s.set_budget(7)
        s.add_queries(list(range(20)), 0, "entropy")
        team = SimulatedAnnotators(s, np.zeros(N, int), n_annotators=5, latency="lognormal:median=4,sigma=0.8",
                                   clock=clock, seed=3)
        team.run_until(1000, stop_when_done=True)
        sm = team.summary()
        p = s.progress()
        assert p.labeled == 7 and sm["labels"] == 7 and p.open == 0 and p.withdrawn == 13
        assert sm["wasted"] == 4  # the other four were mid-label when the seventh was paid


def test_simulated_annotators_on_the_real_clock(tmp_path):
    with make_store(tmp_path) as s:
        s.add_queries(list(range(12)), 0, "entropy")
        team = SimulatedAnnotators(s, np.arange(N) % 3, n_annotators=2, latency="constant:seconds=0.02",
                                   clock=RealClock(), poll_s=0.05)
        t0 = time.time()
        team.run_until(t0 + 10, stop_when_done=True)
        assert s.n_labeled == 12 and 0.1 < time.time() - t0 < 5
