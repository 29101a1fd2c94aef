"""The store's guards that mutation testing (make mutate, issue #22) found untested: an acquisition
paid once when another process finishes it first, what the budget's withdrawals record, and the
folders a fresh state directory needs."""

import threading

import numpy as np
import pytest

from fedal.store import BudgetSpent, PoolStore, site_store_path

ID = dict(experiment_id="exp-1", client_id="site-a", n_points=50, data_fingerprint="fp-abc")


def open_store(path, **over):
    return PoolStore(path, **{**ID, **over})


def oracle(indices):
    return np.asarray(indices) % 7


def must_not_be_called(*_):
    raise AssertionError("a round another process committed must not choose or label again")


def test_a_round_another_process_commits_while_this_one_waits_for_the_lock_is_not_asked_again(tmp_path):
    # the second process checked before the first committed (its fast path found nothing), then
    # waited for the acquisition lock: it must re-read the round under the lock, not choose again
    path = tmp_path / "pools.sqlite"
    with open_store(path) as first, open_store(path, lock_timeout=10) as second:
        past_fast_path = threading.Event()
        second_read = second.acquisition

        def acquisition(r):
            found = second_read(r)
            past_fast_path.set()
            return found

        second.acquisition = acquisition
        got = {}

        def second_acquires():
            try:
                got["acquisition"] = second.acquire(3, must_not_be_called, must_not_be_called)
            except BaseException as e:  # noqa: BLE001 (reported by the main thread)
                got["error"] = e

        waiter = threading.Thread(target=second_acquires)

        def oracle_while_the_second_waits(ids):  # the first holds the lock here, round 3 is pending
            waiter.start()
            assert past_fast_path.wait(10)
            return oracle(ids)

        paid = first.acquire(3, lambda p: [5, 6, 7], oracle_while_the_second_waits)
        waiter.join(20)
        assert "error" not in got, got.get("error")
        again = got["acquisition"]
        assert (paid.al_round, paid.paid_now, paid.indices.tolist(), paid.labels.tolist()) == (3, True, [5, 6, 7],
                                                                                              [5, 6, 0])
        assert (again.al_round, again.paid_now, again.indices.tolist(), again.labels.tolist()) == (3, False,
                                                                                                  [5, 6, 7], [5, 6, 0])
        assert first.n_labeled == 3


def test_an_acquisition_that_spends_the_budget_records_when_and_why_each_open_query_closed(tmp_path):
    now = [100.0]
    with open_store(tmp_path / "pools.sqlite", clock=lambda: now[0]) as s:
        s.set_budget(4)
        s.add_queries([10, 11, 12], 0, "entropy")
        now[0] = 200.0
        a = s.acquire(0, lambda p: [10, 1, 2, 3], oracle)  # the fourth label: the budget is spent
        assert a.paid_now and s.n_labeled == 4
        closed = [(q.index, q.state, q.closed_by, q.closed_at, q.claimed_by) for q in s.queries()]
        assert closed == [(10, "withdrawn", "acquisition", 200.0, None), (11, "withdrawn", "budget", 200.0, None),
                          (12, "withdrawn", "budget", 200.0, None)]
        with pytest.raises(BudgetSpent, match=r"^AL round 1: 1 more labels would exceed the budget of 4 \(4 paid\)$"):
            s.acquire(1, lambda p: [20], must_not_be_called)


def test_a_fresh_state_directory_gets_the_stores_folders_made(tmp_path):
    # <state-dir>/pools/<experiment>/<client>.sqlite: on a site's first start none of the folders exist
    path = site_store_path(tmp_path / "state", "exp-1", "site-a")
    with open_store(path) as s:
        s.acquire(0, lambda p: [1], oracle)
    assert path == tmp_path / "state" / "pools" / "exp-1" / "site-a.sqlite"
    with open_store(path) as s:
        assert s.labeled_arrays()[0].tolist() == [1]
