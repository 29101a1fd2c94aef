"""A site's query pool and budget (fedal/async_labeling.py: ``QuerySite``, ``SimulatedSite``,
``grant_key`` and ``handle``) pinned in unit tests, without a federation: grants, refills by the
workers' measures, the counts of a ``query.labeling`` reply, the simulated annotators' time and
the reply to each kind of message. Each test builds a site on 40 random points
(tests/test_async_sites.py, ``make_site``) and runs in milliseconds, so that ``make mutate``
(group "grants and the standing share") kills a mutant of these functions with a fast test
instead of a whole asynchronous federation (tests/test_async_labeling.py).

Where a test names mutants it kills, they were applied by hand to fedal/async_labeling.py and
the test failed with each. The mutants judged equivalent are listed at the end of this file."""

from __future__ import annotations

import numpy as np
import pytest

from fedal import acquisition, async_labeling
from fedal.async_labeling import STRATEGY_TAGS, QuerySite, grant_key, handle
from fedal.pools import Pools
from fedal.protocol import LabelingRequest
from tests.test_async_sites import N, make_site

MEASURES = ("entropy", "least-confidence", "margin")


@pytest.fixture
def site():
    s = make_site()  # query-pool-low 2, query-pool-refill 3, constant latency 4 s, 2 annotators
    yield s
    s.close()


def pay(site, k: int, label: int = 1) -> list[int]:
    """Pay the next ``k`` open queries in the store's order (as one annotator would); returns
    their points."""
    paid = []
    for _ in range(k):
        q = site.store.next_query("tester")
        site.store.submit_label(q.id, label, "tester")
        paid.append(q.index)
    return paid


def opened(site) -> list[int]:
    return [q.index for q in site.store.queries("open")]


# ---------------------------------------------------------------------------------- grant_key
def test_a_grant_is_keyed_by_run_and_al_round_and_by_its_tag_when_it_has_one():
    """``grant_key``. Kills ``+`` made ``-`` (TypeError), the tag ignored (``and False``), a
    colon added without a tag (``or True``: "tok:3:") and "" made "XXXX"."""
    req = LabelingRequest(run="tok", now=0.0, al_round=3, model_version=0)
    assert grant_key(req) == "tok:3"
    assert grant_key(LabelingRequest(run="tok", now=0.0, al_round=3, model_version=7, grant_tag="7")) == "tok:3:7"


# ---------------------------------------------------------------------------------- grant
def test_a_grant_grants_at_most_what_is_asked_and_what_the_site_has_left_once_per_key(site):
    """``QuerySite.grant``. Kills: never granting (``and False``); granting for n <= 0
    (``or True``: the store refuses -2, and records the key of an empty grant); the key left out
    (``grant(None, n)``: every grant after the first returns the first's); ``n > 0`` made
    ``>= 0`` (the key of an empty grant recorded: the real grant under it later grants 0) or
    ``> 1`` (a grant of one label refused); ``else 0`` made ``else 1``."""
    assert site.grant("r:0", 0) == 0 and site.grant("r:0", -2) == 0
    assert site.granted == 0 and site.store.budget is None
    assert site.grant("r:0", 5) == 5  # the empty grants recorded nothing under "r:0"
    assert site.grant("r:0", 5) == 5 and site.granted == 5  # resent: the first grant's labels, once
    assert site.grant("r:1", 1) == 1 and site.granted == 6
    assert site.grant("r:2", 100) == N - 6 and site.granted == N  # at most one label per point
    assert site.grant("r:3", 3) == 0 and site.granted == N
    assert not site.store.queries()  # the caller fills the pool


# ---------------------------------------------------------------------------------- refill_if_low
def test_the_pool_is_refilled_exactly_when_fewer_than_query_pool_low_queries_are_open(site):
    """``QuerySite.refill_if_low`` (query-pool-low 2, query-pool-refill 3). Kills: refilling
    without a budget (``or`` for the first ``and``, ``budget is None``); never refilling a
    granted site (``budget is None``); ``<`` made ``<=`` (a refill with exactly 2 open); the
    return of 0 made 1."""
    assert site.refill_if_low() == 0 and not site.store.queries()  # nothing granted: nothing asked
    site.grant("r:0", 10)
    assert site.refill_if_low() == 3 and len(opened(site)) == 3
    assert site.refill_if_low() == 0 and len(opened(site)) == 3
    pay(site, 1)
    assert site.refill_if_low() == 0 and len(opened(site)) == 2  # 2 open is not fewer than 2
    pay(site, 1)
    assert site.refill_if_low() == 3 and len(opened(site)) == 4


def test_a_site_whose_budget_is_spent_asks_nothing_more(site):
    """Kills ``refill_if_low`` refilling a spent site (``or`` for either ``and``, ``p.spent``
    for ``not p.spent``): queries nobody may pay would be opened."""
    site.grant("r:0", 2)
    assert site.refill_if_low() == 3
    pay(site, 2)
    p = site.store.progress()
    assert p.spent and p.open == 0 and p.withdrawn == 1  # the store withdrew the third, unpaid
    assert site.refill_if_low() == 0 and len(site.store.queries()) == 3


# ---------------------------------------------------------------------------------- refill
def test_before_a_model_a_refill_is_random_seeded_by_the_refill_number_and_tagged_version_0(site):
    """``QuerySite.refill`` before the site holds a model: ``query-pool-refill`` points drawn
    from the client's seed stream 99 numbered by the refill (runs reproduce their queries),
    tagged "random" and model version 0 (``QuerySite.__init__``). Kills: ``if not len(cand)``
    made ``if len(cand)`` (nothing added); refills numbered None; ``state_dict is None`` made
    ``is not None`` (the untrained model ranks, tags are measures); the seed changed
    (``default_rng(None)``, ``seed(None, r)``, ``seed(99, None)``, ``seed(r)``, ``seed(99)``,
    ``seed(100, r)``); ``added`` starting at 1; ``version`` starting at None or 1."""
    site.grant("r:0", 12)
    expect = []
    for r in (1, 2):
        cand = site.store.candidates()
        expect += np.random.default_rng(site.worker.seed(99, r)).choice(cand, 3, replace=False).tolist()
        assert site.refill() == 3
    qs = site.store.queries()
    assert [q.index for q in qs] == expect and len(set(expect)) == 6
    assert {q.strategy for q in qs} == {"random"} and {q.model_version for q in qs} == {0}
    assert all(q.guess is None for q in qs)  # no model: no guess shown to the annotator


def test_a_refill_never_asks_for_a_point_paid_or_open_and_adds_nothing_when_none_is_left(site):
    """Kills ``return 0`` made ``return 1`` when no candidate is left (``refill``), and any
    refill re-asking a point: every point is asked once."""
    site.grant("r:0", N)
    added = 0
    while (n := site.refill()) > 0:
        added += n
        pay(site, 2)  # one paid, one left open: neither may be asked again
    assert added == N
    indices = [q.index for q in site.store.queries()]
    assert sorted(indices) == list(range(N))
    assert site.refill() == 0 and len(site.store.queries()) == N


# ---------------------------------------------------------------------------------- _choose
# five candidates (points 10..14 of 15; points 0..9 are maximally uncertain, so a mix-up of
# positions in ``cand`` with points shows), three classes, scored by hand:
#            entropy  least-confidence  margin (-(p1 - p2))
# 10 .98 .01 .01  0.11   0.02              -0.97
# 11 .50 .50 .00  0.69   0.50               0.00   <- margin's first
# 12 .34 .33 .33  1.10   0.66              -0.01   <- entropy's and least-confidence's first
# 13 .40 .35 .25  1.08   0.60              -0.05
# 14 .60 .20 .20  0.95   0.40              -0.40
PROBS = np.vstack([np.full((10, 3), 1 / 3), [[.98, .01, .01], [.5, .5, 0], [.34, .33, .33], [.4, .35, .25],
                                              [.6, .2, .2]]])
CAND = np.arange(10, 15)


def choose(site, refills: int, n: int, scores: dict | None = None):
    free = np.ones(len(CAND), dtype=bool)
    picks = site._choose(PROBS, CAND, free, refills, n, {} if scores is None else scores)
    return [(m, top.tolist()) for m, top in picks], free.tolist()


def test_each_worker_takes_the_most_uncertain_free_candidates_by_its_measure_in_turn(site):
    """``QuerySite._choose`` with async-workers entropy, least-confidence, margin: worker
    ``refills mod 3`` goes first, each takes the best of what the workers before it left.
    Kills: ``k`` not a rotation (``/``), the lists subtracted; a taken point left free
    (``free[top] = True``, ``+np.inf`` for taken points): the next worker takes it again; the
    ranking reversed (``+score``) or lost (``np.where(None, ...)``: every candidate at -inf, the
    first ones taken); ``picks.append(None)``; ``m == 0`` made ``m != 0`` or ``m == 1``."""
    assert choose(site, 0, 3) == ([("entropy", [2]), ("least-confidence", [3]), ("margin", [1])],
                                  [True, False, False, False, True])
    assert choose(site, 1, 3)[0] == [("least-confidence", [2]), ("margin", [1]), ("entropy", [3])]
    assert choose(site, 5, 3)[0] == [("margin", [1]), ("entropy", [2]), ("least-confidence", [3])]


def test_a_refill_is_split_among_the_workers_the_first_ones_taking_the_remainder(site):
    """n = 4 over three workers: 2, 1, 1; n = 1: the first worker only. Kills the share's
    ``+`` made ``-`` (0, 1, 1), ``i < n % k`` made ``<=`` or ``n / k`` (2, 2, 1), and ``m == 0``
    made ``m != 0`` (the workers with nothing to take are the only ones that run)."""
    assert choose(site, 0, 4)[0] == [("entropy", [2, 3]), ("least-confidence", [1]), ("margin", [4])]
    assert choose(site, 2, 1) == ([("margin", [1])], [True, False, True, True, True])
    assert choose(site, 2, 0) == ([], [True] * 5)


def test_a_measure_scores_the_candidates_once_and_later_calls_reuse_the_scores(site):
    """``scores`` caches each measure's scores of ``cand`` (``PeopleSite.write_reserve`` ranks
    several refills with one model). Kills ``measure not in scores`` made ``in scores`` (a
    cached score recomputed, one never computed looked up: KeyError)."""
    scores = {"entropy": np.array([0.0, 0.0, 0.0, 0.0, 9.0])}  # an earlier call's scores, say
    assert choose(site, 0, 3, scores)[0] == [("entropy", [4]), ("least-confidence", [2]), ("margin", [1])]
    assert set(scores) == set(MEASURES)
    np.testing.assert_allclose(scores["margin"], acquisition.get("margin").score(PROBS[CAND]))


def test_candidates_equally_uncertain_are_taken_in_point_order():
    """Ties (e.g. an untrained model's equal scores) go to the lower point, on every platform.
    Kills ``kind="stable"`` changed to numpy's default quicksort (``kind=None`` or left out),
    which orders ties of more than 16 candidates arbitrarily."""
    s = make_site(**{"async-workers": "entropy"})
    try:
        rows = np.array([[.9, .05, .05], [.5, .3, .2], [.4, .3, .3]])
        kind = np.random.default_rng(1).integers(0, 3, 40)
        probs, cand = rows[kind], np.arange(40)
        free = np.ones(40, dtype=bool)
        (measure, top), = s._choose(probs, cand, free, 1, 30, {})
        expect = sorted(range(40), key=lambda i: (-int(kind[i]), i))[:30]  # most uncertain row first
        assert measure == "entropy" and top.tolist() == expect
    finally:
        s.close()


# ---------------------------------------------------------------------------------- refill with a model
def test_with_a_model_each_worker_adds_its_picks_tagged_with_its_measure_the_version_and_the_guess(site):
    """``QuerySite.refill`` with a model (its probabilities as ``_probs_of_model`` caches them):
    the three workers' picks become queries tagged with the worker's measure and the model's
    version, with the model's guess and confidence; the refill returns all it added. Kills
    ``added =`` for ``added +=`` (only the last worker's count) and ``-=``, and the refills'
    arguments to ``_choose`` mixed up."""
    probs = np.random.default_rng(3).dirichlet(np.full(10, 0.3), N)  # sharp, varied rows
    site.set_model(object(), 4)
    site._probs = probs
    site.grant("r:0", 20)
    expect = choose_on(site, probs, 1, 3)  # refill 1: least-confidence, margin, entropy, one each
    assert site.refill() == 3  # query-pool-refill
    qs = site.store.queries()
    assert [(q.strategy, q.index) for q in qs] == expect
    assert {q.model_version for q in qs} == {4}
    for q in qs:
        assert q.guess == int(probs[q.index].argmax()) and q.confidence == pytest.approx(probs[q.index].max())
    assert site.refill() == 3 and len({q.index for q in site.store.queries()}) == 6


def choose_on(site, probs, refills, n):
    """The picks of refill ``refills`` of one point per worker, recomputed from the measures'
    scores: (measure, point) in turn order."""
    measures = list(MEASURES[refills % 3:] + MEASURES[:refills % 3])
    cand, taken, out = site.store.candidates(), set(), []
    for m in measures[:n]:
        s = acquisition.get(m).score(probs[cand])
        best = max((i for i in range(len(cand)) if i not in taken), key=lambda i: (s[i], -i))
        taken.add(best)
        out.append((m, int(cand[best])))
    return out
