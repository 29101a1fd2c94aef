"""The run's label budget under asynchronous labeling (strategies/async_budget.py): what is left
of it, the standing share's top-ups and client selection's grants cut to what is left. The
sites' grants never add up to more than the label budget, whoever asks."""

from __future__ import annotations

from strategies.async_budget import budget_left, cap_plan, standing_top_ups


def reply(granted: int, paid: int, grantable: int = 1000) -> dict:
    """A site's last query.labeling reply, as the loop keeps it."""
    return {"granted": granted, "paid": paid, "n-grantable": grantable}


def test_what_is_left_is_the_budget_less_every_sites_grant():
    assert budget_left(100, {}) == 100
    assert budget_left(100, {"a": reply(30, 30), "b": reply(25, 0)}) == 45
    assert budget_left(50, {"a": reply(30, 2), "b": reply(20, 20)}) == 0


def test_the_standing_share_never_grants_past_the_run_budget():
    # three sites ran dry, each wants 20 more; 25 labels of the run's budget are left: the latest
    # picks (AL round 2: a, then c in the federation's order) get them, b (round 1) nothing
    enrolled = {"a": 2, "b": 1, "c": 2}
    last = {"a": reply(40, 40), "b": reply(40, 40), "c": reply(40, 40)}
    want: dict[str, int] = {}
    ups = standing_top_ups(enrolled, last, want, 25, 20, {"a": 0, "b": 1, "c": 2})
    assert ups == {"a": 20, "c": 5} and sum(ups.values()) == 25
    assert standing_top_ups(enrolled, last, want, 0, 20, {"a": 0, "b": 1, "c": 2}) == {}
    assert standing_top_ups(enrolled, last, {}, -3, 20, {}) == {}  # over-granted already: nothing more


def test_a_top_up_is_what_a_site_can_still_be_granted_and_goes_to_latest_picks_first():
    enrolled = {"a": 0, "b": 3, "c": 3, "d": 1}
    last = {"a": reply(10, 10), "b": reply(10, 10, grantable=7), "c": reply(10, 10), "d": reply(10, 10)}
    ups = standing_top_ups(enrolled, last, {}, 1000, 20, {"a": 0, "b": 1, "c": 2, "d": 3})
    assert ups == {"b": 7, "c": 20, "d": 20, "a": 20}
    assert list(ups) == ["b", "c", "d", "a"]  # latest AL round first, the federation's order on ties
    # the order among the same round's picks follows ``order``, not the names
    assert list(standing_top_ups({"x": 1, "y": 1}, {"x": reply(0, 0), "y": reply(0, 0)}, {}, 1000, 5,
                                 {"y": 0, "x": 1})) == ["y", "x"]
    # a site that can be granted nothing more gets no top-up (no key with 0)
    assert standing_top_ups({"a": 0}, {"a": reply(10, 10, grantable=0)}, {}, 1000, 20, {}) == {}


def test_want_starts_at_the_refill_and_doubles_when_a_site_ran_dry():
    enrolled, order = {"a": 1}, {"a": 0}
    want: dict[str, int] = {}
    assert standing_top_ups(enrolled, {"a": reply(10, 10)}, want, 1000, 8, order) == {"a": 8}
    assert want == {"a": 8}  # first time: the refill, not doubled
    # the top-up is not labeled yet (owed 8, not below 8): nothing more, want unchanged
    assert standing_top_ups(enrolled, {"a": reply(18, 10)}, want, 1000, 8, order) == {}
    assert want == {"a": 8}
    # owed 3 < 8: topped up by 8, still 8
    assert standing_top_ups(enrolled, {"a": reply(18, 15)}, want, 1000, 8, order) == {"a": 8}
    assert want == {"a": 8}
    # everything paid (it ran dry since the last message): want doubles, and so does the top-up
    assert standing_top_ups(enrolled, {"a": reply(26, 26)}, want, 1000, 8, order) == {"a": 16}
    assert want == {"a": 16}


def test_a_site_without_a_reply_is_passed_over():
    ups = standing_top_ups({"a": 2, "b": 1}, {"b": reply(5, 5)}, {}, 1000, 4, {"a": 0, "b": 1})
    assert ups == {"b": 4}


def test_selection_grants_are_cut_to_what_is_left_in_pick_order():
    plan = [(3, 12), (1, 12), (5, 12)]
    assert cap_plan(plan, 100) == plan
    assert cap_plan(plan, 36) == plan
    assert cap_plan(plan, 20) == [(3, 12), (1, 8)]
    assert cap_plan(plan, 12) == [(3, 12)]
    assert cap_plan(plan, 0) == [] and cap_plan(plan, -5) == []
    assert cap_plan([(2, 0), (4, 6)], 10) == [(4, 6)]  # a client granted nothing is dropped
    # one label is a grant: asked for one, or the one label left
    assert cap_plan([(2, 1), (4, 6)], 10) == [(2, 1), (4, 6)]
    assert cap_plan(plan, 13) == [(3, 12), (1, 1)]


def test_the_last_label_of_the_budget_is_granted_and_nothing_moves_once_it_is_gone():
    # one label left: it is granted (a top-up of 1 is a top-up)
    assert standing_top_ups({"a": 1, "b": 1}, {"a": reply(5, 5), "b": reply(5, 5)}, {}, 1, 4, {"a": 0, "b": 1}) == \
        {"a": 1}
    # none left: no site's want changes either (it doubles only when a site is looked at)
    want = {"a": 4, "b": 4}
    assert standing_top_ups({"a": 1, "b": 1}, {"a": reply(5, 5), "b": reply(5, 5)}, want, 0, 4, {"a": 0, "b": 1}) == {}
    assert want == {"a": 4, "b": 4}


def test_a_site_not_connected_now_ranks_first_among_its_rounds_picks():
    # "x" (a client of the checkpoint not connected yet) has no place in the federation's order
    ups = standing_top_ups({"x": 1, "y": 1}, {"x": reply(0, 0), "y": reply(0, 0)}, {}, 1000, 5, {"y": 0})
    assert list(ups) == ["x", "y"]


def test_a_grant_is_recorded_under_its_run_its_al_round_and_its_tag():
    # the keys live on in the sites' stores (fedal.store's grant notes); a resumed server sums a
    # run's grants by the prefix "<run>:" (PoolStore.granted_under)
    from fedal.async_labeling import grant_key
    from fedal.protocol import LabelingRequest

    req = LabelingRequest(run="tok", now=0.0, al_round=2, model_version=5, grant=3)
    assert grant_key(req) == "tok:2"
    assert grant_key(LabelingRequest(run="tok", now=0.0, al_round=2, model_version=5, grant=3,
                                     grant_tag="standing-5")) == "tok:2:standing-5"
