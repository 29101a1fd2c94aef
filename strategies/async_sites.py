"""What the sites of an asynchronous run report, read on the server (strategies/async_policy.py):
a resumed run's check that the sites' stores are this run's (``check_stores``), and the
federation's totals of the sites' final labeling replies (``summarize``; also used by
simulations/async_labeling.py for the synchronous loop's replay)."""

from __future__ import annotations

import numpy as np

from fedal.async_labeling import STRATEGY_TAGS
from fedal.checkpoint import CheckpointError


def check_stores(cfg, ck_path, token: str, before: dict, now: dict) -> None:
    """A resumed run continues only on the sites' stores of its own run: refused when a store
    holds a budget or labels that another run (token) granted, or fewer of this run's grants than
    the checkpoint counts (the store was lost or replaced)."""
    old = [c for c, m in now.items() if "granted-run" not in m]
    if old:
        raise CheckpointError(f"resume: client(s) {', '.join(sorted(old))} do not report what this run granted "
                              "them (granted-run): their fedal is older than the server's; update them")
    foreign = {c: m for c, m in now.items()
               if int(m["granted"]) > int(m["granted-run"]) or int(m["n-labeled"]) > int(m["granted-run"])}
    if foreign:
        raise CheckpointError(
            "resume: the stores of client(s) "
            + ", ".join(f"{c} (budget {int(m['granted'])}, {int(m['n-labeled'])} labels, "
                        f"{int(m['granted-run'])} granted by this run)" for c, m in sorted(foreign.items()))
            + f" hold a label budget or labels of experiment {cfg.experiment!r} that another run granted, not "
            f"the run of the checkpoint {ck_path} (run token {token[:8]}…): they are not this run's stores; "
            "resume with the state directories this run used, or set resume = false with a new experiment-id")
    lost = {c: (int(m["granted-run"]), int(before[c]["granted"])) for c, m in now.items()
            if c in before and int(m["granted-run"]) < int(before[c]["granted"])}
    if lost:
        raise CheckpointError(
            "resume: the stores of client(s) "
            + ", ".join(f"{c} ({a} labels granted by this run, the checkpoint counts {b})"
                        for c, (a, b) in sorted(lost.items()))
            + f" lack grants the checkpoint {ck_path} counts: their stores were lost or replaced; resume with "
            "the state directories this run used, or set resume = false with a new experiment-id")


def summarize(metrics: list) -> dict:
    """Federation totals of the sites' final labeling replies (also used for the synchronous
    loop's replay in simulations.async_labeling). Annotator time (idle fractions, query latency,
    labels per hour) is measured for simulated annotators only; sites whose people label report
    no such keys, and then these totals are NaN."""
    ms = [{k: (list(v) if isinstance(v, list) else v) for k, v in m.items()} for m in metrics]
    tot = lambda k: float(sum(float(m.get(k, 0)) for m in ms))  # noqa: E731
    nan = float("nan")
    timed = bool(ms) and all("duty-busy-s" in m for m in ms)
    busy, idle = tot("duty-busy-s"), tot("duty-idle-s")
    firsts = [float(m["first-grant-s"]) for m in ms if np.isfinite(float(m.get("first-grant-s", np.nan)))]
    span = max(float(m["last-label-s"]) for m in ms) - min(firsts) if firsts and timed else 0.0
    paid = int(tot("paid"))
    by = np.sum([m.get("paid-by-strategy", [0] * len(STRATEGY_TAGS)) for m in ms] or
                [[0] * len(STRATEGY_TAGS)], axis=0)
    out = {"paid": paid, "granted": int(tot("granted")), "withdrawn": int(tot("withdrawn")),
           "wasted_answers": int(tot("wasted")), "flipped_labels": int(tot("flipped")),
           "idle_fraction": idle / (busy + idle) if busy + idle > 0 else 0.0,
           "idle_fraction_whole_run": tot("idle-s") / max(tot("idle-s") + tot("busy-s"), 1e-9),
           # the idle fraction split by cause: the pool ran dry while labels were owed / the site's
           # budget was spent and it waited for its next grant (NaN where not measured)
           "idle_fraction_labels_owed": tot("duty-idle-owed-s") / (busy + idle) if busy + idle > 0 and
           all("duty-idle-owed-s" in m for m in ms) else nan,
           "idle_fraction_waiting_for_grant": tot("duty-idle-spent-s") / (busy + idle) if busy + idle > 0 and
           all("duty-idle-spent-s" in m for m in ms) else nan,
           "mean_query_latency_s": tot("waits-sum-s") / max(tot("waits-n"), 1),
           "max_query_latency_s": max((float(m.get("waits-max-s", 0)) for m in ms), default=0.0),
           "labels_per_hour": paid / span * 3600 if span > 0 else 0.0, "labeling_span_s": span,
           "paid_by_strategy": dict(zip(STRATEGY_TAGS, (int(v) for v in by)))}
    if not timed:  # people: nobody measured their time
        for k in ("wasted_answers", "flipped_labels"):
            out.pop(k)
        out.update({k: nan for k in ("idle_fraction", "idle_fraction_whole_run", "idle_fraction_labels_owed",
                                     "idle_fraction_waiting_for_grant", "mean_query_latency_s",
                                     "max_query_latency_s", "labels_per_hour", "labeling_span_s")})
    return out
