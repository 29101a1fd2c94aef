"""The run's label budget under asynchronous labeling (strategies/async_policy.py; docs/method.md,
"Asynchronous labeling"): what is left of it, the standing share's top-ups (``async-budget =
"standing"``) and client selection's grants cut to what is left. Pure functions of the sites'
last ``query.labeling`` replies (by client id: ``granted``, ``paid``, ``n-grantable``), so that
the rule the federation pays by is tested apart from the loop (tests/test_async_budget.py): the
sites' grants never add up to more than the run's label budget."""

from __future__ import annotations


def budget_left(label_budget: int, last: dict[str, dict]) -> int:
    """The run's label budget not granted yet: ``label_budget`` less what the sites' last
    replies (``last``, by client id) say they were granted."""
    return label_budget - sum(int(m["granted"]) for m in last.values())


def standing_top_ups(enrolled: dict[str, int], last: dict[str, dict], want: dict[str, int], left: int,
                     refill: int, order: dict[str, int]) -> dict[str, int]:
    """The standing share's grants at one message (strategies/async_policy.py), by client id: latest picks
    first (``enrolled``: each site's AL round of its latest selection grant; ties in ``order``),
    while ``left`` (the run's budget not granted yet) lasts, an enrolled site owed fewer labels
    than its ``want`` is granted ``want`` more, or what it can still be granted or what is left
    when that is less. ``want`` (updated in place) starts at ``refill`` (query-pool-refill) and
    doubles whenever a site is found with nothing owed (its annotators ran dry since the last
    message), so it adapts to the pace of each site's annotators, simulated or people, without
    the server knowing it. A site without a reply in ``last`` is passed over."""
    ups: dict[str, int] = {}
    for cid in sorted(enrolled, key=lambda c: (-enrolled[c], order.get(c, 0))):
        m = last.get(cid)
        if left <= 0:
            break
        if m is None:
            continue
        owed = int(m["granted"]) - int(m["paid"])
        if owed == 0 and cid in want:
            want[cid] *= 2
        w = want.setdefault(cid, refill)
        n = min(w, left, int(m["n-grantable"])) if owed < w else 0
        if n > 0:
            ups[cid], left = n, left - n
    return ups


def cap_plan(plan: list[tuple[int, int]], left: int) -> list[tuple[int, int]]:
    """Client selection's (client index, labels) plan, cut to the ``left`` labels of the run's
    budget not granted yet, in pick order; clients left with nothing are dropped."""
    capped = []
    for z, n in plan:
        if min(n, left) > 0:
            capped.append((z, min(n, left)))
            left -= min(n, left)
    return capped
