"""A site's query pool and budget (fedal/async_labeling.py: ``QuerySite``, ``SimulatedSite``,
``grant_key`` and ``handle``) pinned in unit tests, without a federation: grants, refills by the
workers' measures, the counts of a ``query.labeling`` reply, the simulated annotators' time and
the reply to each kind of message. Each test builds a site on 40 random points
(tests/test_async_sites.py, ``make_site``) and runs in milliseconds, so that ``make mutate``
(group "grants and the standing share") kills a mutant of these functions with a fast test
instead of a whole asynchronous federation (tests/test_async_labeling.py).

Where a test names mutants it kills, those of ``grant_key``, ``QuerySite.grant``,
``refill_if_low`` and ``QuerySite.__init__``, and a sample of the others (see the commit
messages), were applied by hand to fedal/async_labeling.py and the test failed with each; the
rest are what the test is written to catch, and ``make mutate`` has the last word. The mutants
judged equivalent are listed at the end of this file; each is entered, with its reason, in
reports/mutation/equivalent.toml."""

from __future__ import annotations

import numpy as np
import pytest

from fedal import acquisition, async_labeling
from fedal.async_labeling import STRATEGY_TAGS, QuerySite, grant_key, handle
from fedal.pools import Pools
from fedal.protocol import LabelingRequest
from tests.test_async_sites import RC, N, make_site

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


# ---------------------------------------------------------------------------------- _probs_of_model
def uniform_model(worker) -> dict:
    """A state dict of the site's model whose classifier is zeroed: every point gets 1/C for each
    class, unlike the untrained model ``worker.model()`` returns."""
    sd = worker.model().state_dict()
    sd["head.classifier.weight"].zero_()
    sd["head.classifier.bias"].zero_()
    return sd


def test_the_model_sent_scores_the_sites_points_once_per_model(site):
    """``QuerySite._probs_of_model``: the probabilities of the model the site holds on its
    points, computed once per model. Kills ``is None`` made ``is not None`` (nothing computed:
    None), the model or the points left out, and ``worker.model(None)`` (the untrained model,
    not the one sent, ranks the points)."""
    site.set_model(uniform_model(site.worker), 2)
    probs = site._probs_of_model()
    assert probs.shape == (N, 10)
    np.testing.assert_allclose(probs, 0.1, rtol=1e-5)
    assert site._probs_of_model() is probs


def test_a_model_set_without_set_model_ranks_the_first_refill(site):
    """The people handler sets ``state_dict`` straight on a fresh site (``_handle_people``), so
    a site must start with no cached scores. Kills ``_probs = ""`` (``QuerySite.__init__``):
    the refill would index a string. With the uniform model every point ties: the first three
    points, one per worker."""
    site.state_dict = uniform_model(site.worker)
    site.grant("r:0", 5)
    assert site.refill() == 3
    assert sorted((q.index, q.strategy) for q in site.store.queries()) == [
        (0, "least-confidence"), (1, "margin"), (2, "entropy")]


# ---------------------------------------------------------------------------------- metrics
def metrics(site, **over):
    base = {"n-labeled": 0, "n-unlabeled": N, "n-grantable": N, "granted": 0, "paid": 0, "open": 0,
            "withdrawn": 0, "done": 1}
    return {**base, **over}


def test_the_reply_counts_of_a_site_from_its_first_grant_to_a_spent_budget(site):
    """``QuerySite.metrics``, every key, at each stage: never granted (done: nothing to do);
    granted with the pool not yet filled or with queries open (not done); the budget spent,
    what was open withdrawn (done), before and after the paid labels move into the pools.
    Kills: a key renamed; ``granted`` from ``budget and 0`` or ``or 1``; n-grantable's ``-``
    made ``+``; each change of ``done``'s ``and``/``or``, ``not len(...)``, ``== 0`` (made
    ``!= 0``/``== 1``) and ``int(bool(None))``."""
    assert site.metrics() == metrics(site)
    site.grant("r:0", 2)
    assert site.metrics() == metrics(site, granted=2, **{"n-grantable": N - 2}, done=0)
    site.refill()
    assert site.metrics() == metrics(site, granted=2, **{"n-grantable": N - 2}, open=3, done=0)
    pay(site, 1)
    assert site.metrics() == metrics(site, granted=2, **{"n-grantable": N - 2}, paid=1, open=2, done=0)
    pay(site, 1)
    assert site.metrics() == metrics(site, granted=2, **{"n-grantable": N - 2}, paid=2, withdrawn=1)
    site.move_labels(0)
    assert site.metrics() == metrics(site, granted=2, **{"n-grantable": N - 2, "n-labeled": 2,
                                                         "n-unlabeled": N - 2}, paid=2, withdrawn=1)


def test_the_reply_counts_the_pools_passed_and_grants_no_point_already_labeled(site):
    """``metrics(pools)`` (the people handler passes the pools it read): their counts, and
    n-grantable less the labels in them when they exceed the grants (labels paid before this
    run). Kills ``pools`` always read from the worker (``or True``, ``is not None``)."""
    site.grant("r:0", 3)
    pools = Pools(size=N, labeled=list(range(10)), labels=[1] * 10, acquired_round=[0] * 10)
    assert site.metrics(pools) == metrics(site, granted=3, **{"n-labeled": 10, "n-unlabeled": N - 10,
                                                              "n-grantable": N - 10}, done=0)


# ---------------------------------------------------------------------------------- paid_by_strategy
def test_labels_paid_are_counted_by_the_strategy_that_chose_them(site):
    """``QuerySite.paid_by_strategy``: paid queries only (not open, not withdrawn), in
    ``STRATEGY_TAGS`` order; a query of a strategy this version does not know (a store written
    by another tool) is paid but not reported, and breaks nothing. Kills: counts starting at 1;
    all queries counted (``queries(None)``), a misspelt state (the store refuses it); ``+ 1``
    made ``- 1`` or ``+ 2``; ``by.get(None, 0)`` (every count 1); ``by.get(q.strategy, None)``
    and ``by.get(q.strategy)`` (the unknown strategy: None + 1)."""
    assert STRATEGY_TAGS == ("random", "entropy", "least-confidence", "margin")
    site.grant("r:0", 7)
    store = site.store
    for points, tag in (([0, 1], "random"), ([2, 3], "entropy"), ([4], "margin"), ([5], "an-older-tool"),
                        ([6, 7], "entropy"), ([8], "least-confidence")):
        store.add_queries(points, 0, tag)
    assert pay(site, 6) == [0, 1, 2, 3, 4, 5]
    store.withdraw_open(older_than=1)  # 6, 7 (entropy) and 8 withdrawn, unpaid
    store.add_queries([9], 0, "margin")  # open
    assert site.paid_by_strategy() == [2, 2, 0, 1]


# ---------------------------------------------------------------------------------- advance and summary
def test_a_site_never_granted_reports_zeros_and_its_clock_follows_the_server(site):
    """``SimulatedSite.summary`` of a site without annotators, every key; ``advance`` before
    any grant moves the site's clock and pays nothing. Kills: ``s``/``st`` read from absent
    annotators (``is None`` for ``is not None``, ``or True``); "wasted"/"flipped" defaulting to
    None (int(None)) or 1; waits-max 1.0 without waits; a key renamed; ``advance`` with
    ``annotators is not None`` (stepping annotators that do not exist)."""
    site.advance(7.5)
    assert site.clock.now() == 7.5 and site.store.progress().labeled == 0
    s = site.summary()
    nan = s.pop("first-grant-s")
    assert np.isnan(nan)
    assert s == {"busy-s": 0.0, "idle-s": 0.0, "duty-busy-s": 0.0, "duty-idle-s": 0.0, "duty-idle-owed-s": 0.0,
                 "duty-idle-spent-s": 0.0, "waits-n": 0, "waits-sum-s": 0.0, "waits-max-s": 0.0, "wasted": 0,
                 "flipped": 0, "last-label-s": 0.0, "refills": 0, "paid-by-strategy": [0, 0, 0, 0]}


def test_the_annotators_label_up_to_the_servers_time_refilling_the_pool_when_low():
    """``SimulatedSite.advance`` and ``summary`` over three grants, one query at a time
    (query-pool-low 1, query-pool-refill 1), two annotators, 4 s a label, the site stepping
    every 1 s (a quarter of the mean latency). By hand: annotator 0 labels at 4, 9, 14 (the
    refill at each step end after a label, taken at its next look a second later), the budget
    of 3 is spent from 14 to the grant at 20, the label at 25 spends it again until the grant at
    30, then 35; at 38 a label is under way, paid at 40 and not before. Annotator 1 never gets
    a query (one is open at a time). Idle while owed: 28 s, while spent: (20 - 14 + 30 - 25) x 2
    = 22 s, both up to the last label (35 s). Kills, in ``advance``: the step changed
    (``mean * 4``, ``/ 5``, ``1.25``); ``p.spent or all(...)`` (the site stops when the
    annotators wait for a refill); ``idle_split`` accumulated with ``=``; ``>=`` for ``>``
    (last-label-s the step's time, not the label's); the
    refill's ``not p.spent and`` changed or ``<=`` for ``<``; ``t <= now`` (the loop never
    ends); ``annotators is not None`` (returns before labeling). In ``summary``: each key
    and the duty's index."""
    site = make_site(**{"query-pool-low": 1, "query-pool-refill": 1})
    try:
        site.grant_at("r:0", 3, 0.0)
        site.advance(20.0)
        site.grant_at("r:1", 1, 20.0)
        site.advance(30.0)
        site.grant_at("r:2", 2, 30.0)
        site.advance(38.0)
        assert [(q.created_at, q.closed_at) for q in site.store.queries()] == [
            (0.0, 4.0), (4.0, 9.0), (9.0, 14.0), (20.0, 25.0), (30.0, 35.0), (35.0, None)]
        assert site.summary() == {
            "busy-s": 22.0, "idle-s": 54.0, "duty-busy-s": 20.0, "duty-idle-s": 50.0, "duty-idle-owed-s": 28.0,
            "duty-idle-spent-s": 22.0, "waits-n": 5, "waits-sum-s": 16.0, "waits-max-s": 7.0, "wasted": 0,
            "flipped": 0, "first-grant-s": 0.0, "last-label-s": 35.0, "refills": 6, "paid-by-strategy": [5, 0, 0, 0]}
        site.advance(39.9)
        assert site.store.progress().labeled == 5  # nothing paid after the server's time
        site.advance(40.0)
        assert site.store.progress().labeled == 6 and site.summary()["last-label-s"] == 40.0
    finally:
        site.close()


def test_a_label_answered_after_the_budget_is_spent_is_wasted_and_a_flipped_label_counted():
    """Two annotators each hold a query when the one label granted is paid: the second answer
    is wasted; with label-noise 1 the paid label is flipped. Kills ``summary`` dropping the
    annotators' own summary (``and False``: wasted and flipped 0) and "wasted"/"flipped" read
    under another key."""
    site = make_site(**{"label-noise": 1.0})
    try:
        site.grant_at("r:0", 1, 0.0)
        site.advance(10.0)
        s = site.summary()
        assert (s["wasted"], s["flipped"], s["busy-s"], s["idle-s"], s["last-label-s"]) == (1, 1, 8.0, 12.0, 4.0)
        idx, labels = site.store.labeled_arrays()
        assert labels[0] != site.worker.data.y[idx[0]]
    finally:
        site.close()


def test_idle_while_an_annotator_finishes_a_query_after_the_budget_is_spent_counts_as_spent():
    """Uniform latency (1-9 s), two annotators, one label granted twice: the faster annotator
    pays the label and the budget is spent while the other still holds a query (withdrawn, its
    answer wasted). The first one's wait meanwhile is idle on a spent budget, not idle while
    labels were owed: the pool never runs dry (3 queries for 2 annotators), so owed idle can
    only leak in the one step (1.25 s) in which each budget ran out, at most 2 x 2 x 1.25 s.
    Kills ``advance`` 37 (``idle_split[1 if p.spent and False else 0]``: about 8.7 s owed)."""
    site = make_site(**{"annotator-latency": "uniform:low=1,high=9"})
    try:
        site.grant_at("r:0", 1, 0.0)
        site.advance(40.0)
        site.grant_at("r:1", 1, 40.0)
        site.advance(80.0)
        s = site.summary()
        assert s["wasted"] == 2  # each time, an annotator held a query when the label was paid
        assert s["duty-idle-owed-s"] <= 2 * 2 * 1.25
        assert s["duty-idle-owed-s"] + s["duty-idle-spent-s"] == pytest.approx(s["duty-idle-s"])
    finally:
        site.close()


def test_the_annotators_draw_from_the_clients_seed_stream_17():
    """Annotator k of a site draws from ``default_rng([worker.seed(17), k])``: latency and
    label noise reproduce under the run's seed, apart from the random refills' stream 99.
    Kills ``grant_at``'s ``seed`` left out, ``seed(None)`` and ``seed(18)``."""
    site = make_site()
    try:
        site.grant_at("r:0", 4, 0.0)
        assert [list(w.rng.bit_generator.seed_seq.entropy) for w in site.annotators.workers] == [
            [site.worker.seed(17), 0], [site.worker.seed(17), 1]]
    finally:
        site.close()


# ---------------------------------------------------------------------------------- handle
def request(run="run-a", **over) -> LabelingRequest:
    return LabelingRequest(**{"run": run, "now": 0.0, "al_round": 0, "model_version": 0, **over})


@pytest.fixture
def worker():
    s = make_site()  # only its worker: handle builds the run's sites itself (async_labeling._SITES)
    s.close()
    before = set(async_labeling._SITES)
    yield s.worker
    for key in set(async_labeling._SITES) - before:
        async_labeling._SITES.pop(key).close()


def test_a_simulated_sites_reply_from_its_first_grant_to_the_runs_end(worker):
    """``handle`` for simulated annotators: round 0 grants and fills the pool; a later message
    first labels up to the server's time, moves the paid labels into the pools under its AL
    round and reports them per class; ``finish`` withdraws what is open ("run-end"), reports
    the annotators and closes the site. Kills: the people branch taken (``!= "people"``);
    the site keyed without the run token; the grant's key, count or time lost
    (``grant_key(None)``, ``None``); ``advance(None)``; granted-now None; ``move_labels(None)``;
    any key renamed or emptied; the histogram as floats (``astype(None)``); the site kept open
    after the run (``if KEEP_SITES``, ``pop(None, None)``)."""
    cid = worker.data.client_id
    out = handle(worker, request(grant=5), None)
    assert out == {"partition-id": 3, "n-labeled": 0, "n-unlabeled": N, "n-grantable": N - 5, "granted": 5,
                   "paid": 0, "open": 3, "withdrawn": 0, "done": 0, "granted-now": 5, "acquired-per-class": [0] * 10}
    site = async_labeling._SITES[("run-a", cid)]
    out = handle(worker, request(now=9.0, al_round=1), None)  # 2 annotators, 4 s a label: 4 paid by 9 s
    paid = site.store.labeled_arrays()
    assert out["paid"] == out["n-labeled"] == 4 and out["granted-now"] == 0
    assert out["acquired-per-class"] == np.bincount(paid[1], minlength=10).tolist()
    assert all(type(c) is int for c in out["acquired-per-class"])
    assert worker.pools().acquired_round == [1] * 4
    out = handle(worker, request(now=9.5, al_round=1, finish=True), None)
    assert out["withdrawn-at-end"] == 2 and out["withdrawn"] == 2 and out["paid"] == 4  # both in hand
    assert out["refills"] == 2 and out["paid-by-strategy"] == [4, 0, 0, 0] and out["busy-s"] > 0
    assert ("run-a", cid) not in async_labeling._SITES and not site.dir.exists()


def test_the_queries_open_at_the_runs_end_are_withdrawn_as_run_end(worker, monkeypatch):
    """``finish`` retires what is still open with the reason "run-end", which the store keeps
    (``closed_by``) and the labeling page shows. Kills ``withdraw_open(reason=None)``, "XXrun-endXX"
    and "RUN-END" in ``handle`` (a site kept after the run: ``KEEP_SITES``)."""
    monkeypatch.setattr(async_labeling, "KEEP_SITES", True)
    handle(worker, request(grant=5), None)
    site = async_labeling._SITES[("run-a", worker.data.client_id)]
    out = handle(worker, request(now=9.5, al_round=1, finish=True), None)
    withdrawn = site.store.queries("withdrawn")
    assert out["withdrawn-at-end"] == len(withdrawn) == 2
    assert [q.closed_by for q in withdrawn] == ["run-end"] * 2 and [q.closed_at for q in withdrawn] == [9.5] * 2


def test_each_run_and_each_al_round_gets_its_own_grant_and_a_model_sent_ranks_the_refill(worker):
    """Two runs (tokens) keep two sites; a second AL round's grant adds to the first; a model
    sent with a message is taken with its version. Kills: ``site_for(None, ...)`` and a
    ``None`` token (both runs on one site: run b's grant would add to run a's); the grant keyed
    ``None`` (round 1's grant taken for a resent round 0); ``state_dict is None`` for ``is not
    None`` and ``set_model(None, ...)`` (the model ignored: random queries)."""
    assert handle(worker, request("run-a", grant=2), None)["granted"] == 2
    assert handle(worker, request("run-b", grant=3), None)["granted"] == 3
    sd = uniform_model(worker)
    out = handle(worker, request("run-a", al_round=1, model_version=6, grant=4), sd)
    assert out["granted-now"] == 4 and out["granted"] == 6
    site = async_labeling._SITES[("run-a", worker.data.client_id)]
    assert site.version == 6 and site.state_dict is sd


def test_a_people_site_needs_the_clients_durable_store(worker):
    """``handle`` sends annotators = "people" to the people handler, which refuses a node
    without a state directory. Kills the mutants of the dispatch (``== "XXpeopleXX"``,
    ``"PEOPLE"``: the simulated handler would run) and of its arguments (``None`` for the
    worker or the request)."""
    worker.cfg = worker.cfg.__class__.from_run_config({**RC, "annotators": "people", "labeling-deadline-s": 60})
    with pytest.raises(async_labeling.PeopleModeError, match="state-dir"):
        handle(worker, request(grant=2), None)


# ---------------------------------------------------------------------------------- equivalent mutants
# Mutants of these functions no test can kill, and why (numbers as mutmut names them; each has its
# entry in reports/mutation/equivalent.toml):
# - QuerySite._choose 20 (``continue`` made ``break`` for a worker with nothing to take): the
#   shares never grow along the workers (n // k, plus 1 for the first n % k), so after a 0 every
#   share is 0. 40 (kind="STABLE"): numpy reads the sort kind case-insensitively. 41
#   (``free[top] = None``): None stored in a boolean array is False.
# - QuerySite.refill 21, 23 (``free`` made of floats, dtype None or left out): np.where reads 1.0
#   as True and the 0.0 that False becomes as False.
# - QuerySite.paid_by_strategy 12 (``by.get(q.strategy, 1)``): the default is only read for a
#   strategy outside STRATEGY_TAGS, whose count is never reported.
# - handle 55 (``_SITES.pop(key)`` without a default): site_for has just put the key there.
# - site_for 7 (``SimulatedSite(worker, None)``): the token only names the temporary store's
#   experiment id; the _SITES key that tells runs apart keeps it.
# - SimulatedSite.move_labels 10, 12 (``np.asarray(pools.labeled)`` without dtype int64): the
#   pool's indices are ints, and an empty list's float64 matches nothing either way.
# - SimulatedSite.advance 27 (``break`` made ``return``): nothing follows the loop. 21 (the
#   jump to ``now`` when all annotators hold a query, not when none does, with the budget spent):
#   a spent budget pays nothing more and refills nothing, so stepping there instead of jumping
#   adds the same idle time to the same ``idle_split[1]``.
