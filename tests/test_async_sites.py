"""A simulated site of asynchronous labeling (fedal/async_labeling.py, ``QuerySite`` and
``SimulatedSite``) on its own, without a federation: its model versions, grants, clock,
annotators, summary and temporary store. Each test builds a site on 40 random points in a few
milliseconds, so the mutants of these classes (``make mutate``, group "grants and the standing
share") run them in well under a second; tests/test_async_labeling.py checks the same site inside
whole asynchronous runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedal import async_labeling
from fedal.client import ClientWorker
from fedal.client_data import ClientData
from fedal.config import Config
from fedal.store.backends import MemoryPoolStore

N = 40
# constant latency: each label takes exactly 4 simulated seconds, so times are exact
RC = {"dataset": "digits", "labeling": "async", "annotator-latency": "constant:seconds=4",
      "annotators-per-site": 2, "query-pool-low": 2, "query-pool-refill": 3}


def make_site(**over) -> async_labeling.SimulatedSite:
    """A simulated site (client id "clinic-7") over ``N`` random digits-shaped points, its pools
    in memory; ``over``: run-config keys to change."""
    cfg = Config.from_run_config({**RC, **over})
    rng = np.random.default_rng(0)
    data = ClientData(cfg, 3, rng.random((N, 64), dtype=np.float32), rng.integers(0, 10, N), 10, (64,),
                      torch.device("cpu"), client_id="clinic-7")
    return async_labeling.SimulatedSite(ClientWorker(data, MemoryPoolStore()), "a-run-token")


@pytest.fixture
def site():
    s = make_site()
    yield s
    s.close()


# ---------------------------------------------------------------------------------- set_model
def test_the_first_model_is_taken_whatever_its_version_and_only_a_new_version_replaces_it():
    """``QuerySite.set_model``. Kills: ``or`` made ``and`` (the first model, version 0 like the
    site's start, would be refused, and the site would refill at random forever); ``!=`` made
    ``==`` (a resent message's model of the same version would replace the one held and throw
    away its scores); ``state_dict is None`` made ``is not None`` (the first model refused)."""
    site = async_labeling.QuerySite(SimpleNamespace(cfg=None), store=None)
    initial, again, later, later_again = object(), object(), object(), object()
    site.set_model(initial, 0)
    assert site.state_dict is initial and site.version == 0
    site._probs = probs = np.zeros((2, 2))  # the scores _probs_of_model caches for this model
    site.set_model(again, 0)  # the same version resent: nothing changes, the scores are kept
    assert site.state_dict is initial and site._probs is probs
    site.set_model(later, 5)
    assert site.state_dict is later and site.version == 5 and site._probs is None
    site._probs = probs
    site.set_model(later_again, 5)
    assert site.state_dict is later and site._probs is probs


# ---------------------------------------------------------------------------------- a fresh site
def test_a_site_granted_nothing_reports_no_time_and_no_refill(site):
    """What a site that was never granted anything puts into the run's summary at the end.
    Kills the mutants of ``SimulatedSite.__init__`` that start ``last_label`` at 1.0, ``duty``
    at (1, 0) or (0, 1), or ``duty_split`` at (1, 0) or (0, 1): each would report annotator time
    (or a last label) for a site where nobody labeled anything."""
    s = site.summary()
    assert {k: s[k] for k in ("busy-s", "idle-s", "duty-busy-s", "duty-idle-s", "duty-idle-owed-s",
                              "duty-idle-spent-s", "last-label-s", "refills", "waits-n")} == dict.fromkeys(
        ("busy-s", "idle-s", "duty-busy-s", "duty-idle-s", "duty-idle-owed-s", "duty-idle-spent-s",
         "last-label-s", "refills", "waits-n"), 0)
    assert np.isnan(s["first-grant-s"]) and s["paid-by-strategy"] == [0] * len(async_labeling.STRATEGY_TAGS)


def test_each_refill_is_counted(site):
    """Kills ``self.refills += 1`` made ``self.refills = 1`` (``_next_refill``): the summary's
    refill count would stay at 1, and every random refill would draw with the seed of the first."""
    assert site.grant("k", 12) == 12
    assert [site.refill() for _ in range(4)] == [3, 3, 3, 3]
    assert site.refills == 4 and site.summary()["refills"] == 4
    assert len({q.index for q in site.store.queries()}) == 12  # four refills, twelve distinct points


# ---------------------------------------------------------------------------------- grant_at
def test_no_grant_grants_nothing_and_puts_nobody_to_work(site):
    """Kills ``return 0`` made ``return 1`` for a message without a grant (``grant_at``): the
    reply's granted-now would claim a label the site was never given."""
    assert site.grant_at("run:1", 0, 10.0) == 0
    assert site.grant_at("run:2", -3, 10.0) == 0
    assert site.granted == 0 and site.annotators is None and site.first_grant is None
    assert not site.store.queries()


def test_a_grant_to_a_site_with_every_point_granted_grants_nothing(site):
    """Kills the second ``return 0`` made ``return 1`` in ``grant_at`` (the site's store grants
    nothing more once every point is covered by a grant): the reply's granted-now would claim
    a label the site was never given, and the server would count it against the run's budget."""
    assert site.grant_at("run:0", N, 0.0) == N
    assert site.grant_at("run:1", 3, 5.0) == 0 and site.granted == N


def test_a_grant_of_one_label_is_granted_filled_and_labeled(site):
    """A site granted a single label (a top-up of the standing share may be that small). Kills
    ``n <= 0`` made ``n <= 1`` (the label refused: 0 returned, nothing granted) and ``n == 0``
    made ``n == 1`` (the label granted in the store but 0 returned, the pool not filled and no
    annotator started: the label never paid)."""
    assert site.grant_at("run:0", 1, 0.0) == 1
    assert site.granted == 1 and site.annotators is not None
    assert site.store.progress().open == 3  # one refill: query-pool-refill queries
    site.advance(10.0)
    assert site.store.progress().labeled == 1


def test_the_first_grant_is_the_time_of_the_first_grant_that_granted_labels(site):
    """``first_grant`` (the summary's first-grant-s): the server's time of the site's first
    grant, kept through later grants. Kills ``first_grant is None`` made ``is not None`` (never
    set) and ``first_grant = now`` made ``= None``."""
    site.grant_at("run:0", 0, 3.0)  # no grant: not the first one
    site.grant_at("run:1", 4, 12.5)
    site.advance(30.0)
    site.grant_at("run:2", 4, 30.0)
    assert site.first_grant == 12.5 and site.summary()["first-grant-s"] == 12.5


def test_the_sites_annotators_are_as_many_as_configured_and_named_after_the_site(site):
    """Kills the ``grant_at`` mutants that leave out ``n_annotators`` (one annotator instead of
    annotators-per-site = 2: half the labeling speed) or pass ``name=None`` (the labels' record
    of who paid them would name annotators "None-0", not the site's)."""
    site.grant_at("run:0", 6, 0.0)
    assert len(site.annotators.workers) == 2
    # 4 s a label: both pay one at t = 4; A takes the last open query, B finds the pool low and
    # takes a query of the refill at its next look (t = 5): by t = 9 four labels, one annotator two
    site.advance(9.0)
    paid = [q for q in site.store.queries() if q.state == "labeled"]
    assert sorted(q.closed_at for q in paid) == [4.0, 4.0, 8.0, 9.0]
    assert {q.closed_by for q in paid} == {"siteclinic-7-0", "siteclinic-7-1"}


def test_a_site_with_label_noise_can_be_granted_and_its_flipped_labels_are_classes():
    """Kills ``num_classes=None`` in ``grant_at``: with label-noise > 0 the annotators need the
    number of classes to flip an answer to another class, and refuse to start without it."""
    site = make_site(**{"label-noise": 0.5})
    try:
        assert site.grant_at("run:0", 20, 0.0) == 20
        site.advance(60.0)
        idx, labels = site.store.labeled_arrays()
        assert len(idx) == 20 and site.summary()["flipped"] > 0
        assert labels.min() >= 0 and labels.max() < 10
    finally:
        site.close()


# ---------------------------------------------------------------------------------- the clock
def test_the_sites_store_stamps_queries_and_labels_on_the_servers_clock_from_zero(site):
    """The site's store keeps time on the site's simulated clock, which starts at 0 with the
    server's. Kills ``SimulatedClock(0.0)`` made ``SimulatedClock(1.0)`` (round 0's queries
    stamped 1 s after the grant at 0) and leaving ``clock=self.clock`` out of the store (the
    store stamps with the wall clock: seconds since 1970)."""
    site.grant_at("run:0", 2, 0.0)
    assert {q.created_at for q in site.store.queries()} == {0.0}
    site.advance(10.0)
    paid = [q for q in site.store.queries() if q.state == "labeled"]
    assert sorted(q.closed_at for q in paid) == [4.0, 4.0]  # both annotators' first labels, at 4 s


# ---------------------------------------------------------------------------------- the idle split
def test_the_idle_time_up_to_the_last_label_is_split_into_owed_and_spent():
    """``advance`` splits the annotators' idle seconds into those while labels were still owed
    (the pool ran dry) and those while the budget was spent (waiting for a grant), and keeps
    both as they were at the last paid label. With one query per refill two annotators run the
    pool dry (idle while owed); between the grants they wait with the budget spent. Kills
    ``idle_split`` starting at [1, 0] or [0, 1] (``SimulatedSite.__init__``): the two parts
    would add up to a second more than the idle time they split."""
    site = make_site(**{"query-pool-low": 1, "query-pool-refill": 1})
    try:
        site.grant_at("run:0", 2, 0.0)
        site.advance(20.0)
        site.grant_at("run:1", 1, 20.0)
        site.advance(40.0)
        s = site.summary()
        assert site.store.progress().labeled == 3
        assert s["duty-idle-owed-s"] > 0 and s["duty-idle-spent-s"] > 0
        assert s["duty-idle-owed-s"] + s["duty-idle-spent-s"] == pytest.approx(s["duty-idle-s"], abs=1e-9)
    finally:
        site.close()


# ---------------------------------------------------------------------------------- close
def test_closing_removes_the_temporary_store_and_a_second_close_does_nothing():
    """Kills ``shutil.rmtree(self.dir, ...)`` made ``rmtree(None, ...)`` (the folder is left
    behind: ignore_errors hides the TypeError) and ``ignore_errors=True`` made ``None``, ``False``
    or left out (a site closed twice, as a kept site closed by a test's teardown after the run
    closed it, raises FileNotFoundError)."""
    site = make_site()
    folder = site.dir
    assert (folder / "pool.sqlite").is_file()
    site.close()
    assert not folder.exists()
    site.close()
