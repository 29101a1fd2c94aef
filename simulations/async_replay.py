"""The synchronous arm of the sync-vs-async experiment (simulations/async_labeling.py) replayed
on the asynchronous clock: the labels a synchronous run acquired, given to simulated annotators
with the same latencies, so both arms' labels are placed on one time axis."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


def replay_sync(rows: list[dict], cfg, num_clients: int) -> dict:
    """The synchronous loop's timeline on the simulated clock, with simulated annotators per site
    (the same latency model, ``annotators-per-site`` and seeding rule as the async sites). Who was
    chosen and how many labels each got come from the run's rows (round 0: the loop's own draw)."""
    from fedal.annotate.annotators import Latency, SimulatedAnnotators, SimulatedClock
    from fedal.store import PoolStore
    from strategies.async_sites import summarize

    latency = Latency.parse(cfg.annotator_latency)
    tmp = Path(tempfile.mkdtemp(prefix="fedal-sync-replay-"))
    sites: dict[int, dict] = {}
    n_points = 100_000  # which points does not matter for time; only how many

    def site(cid: int) -> dict:
        if cid not in sites:
            clock = SimulatedClock(0.0)
            store = PoolStore(tmp / f"{cid}.sqlite", "replay", str(cid), n_points, "replay", clock=clock,
                              durable=False)
            sites[cid] = {"clock": clock, "store": store, "ann": None, "granted": 0, "first": None,
                          "last": 0.0, "duty": (0.0, 0.0), "next": 0, "owed": 0.0, "duty_owed": 0.0}
        return sites[cid]

    def grant(cid: int, n: int, now: float) -> None:
        s = site(cid)
        s["clock"].sleep_until(now)
        s["granted"] += n
        s["store"].set_budget(s["granted"])
        s["store"].add_queries(np.arange(s["next"], s["next"] + n), 0, "batch")  # the round's whole batch
        s["next"] += n
        if s["first"] is None:
            s["first"] = now
        if s["ann"] is None:
            from fedal.client import derived_seed

            s["ann"] = SimulatedAnnotators(s["store"], np.zeros(n_points, dtype=np.int64),
                                           n_annotators=cfg.annotators_per_site, latency=latency,
                                           clock=s["clock"], seed=derived_seed(cfg, cid, 17), name=f"site{cid}")

    def label_all(now: float) -> float:
        """Run every site's annotators until every granted label is paid; returns that time."""
        step = max(latency.mean / 16, 0.1)
        t = now
        active = [s for s in sites.values() if s["store"].progress().labeled < s["granted"]]
        while active:
            t += step
            for s in active:
                before = s["store"].progress().labeled
                idle0 = sum(a.idle_s for a in s["ann"].stats)
                s["ann"].run_until(t)
                s["owed"] += sum(a.idle_s for a in s["ann"].stats) - idle0  # labels still owed
                if s["store"].progress().labeled > before:
                    st = s["ann"].stats
                    s["last"], s["duty"] = t, (sum(a.busy_s for a in st), sum(a.idle_s for a in st))
                    s["duty_owed"] = s["owed"]
            active = [s for s in active if s["store"].progress().labeled < s["granted"]]
        for s in sites.values():  # every annotator's clock to the round's end (idle meanwhile)
            if s["ann"] is not None:
                s["ann"].run_until(t)
        return t

    def advance(t: float) -> None:
        for s in sites.values():
            if s["ann"] is not None:
                s["ann"].run_until(t)

    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))  # the loop's round-0 draw
    init = rng.permutation(num_clients)[:cfg.init_clients]
    for cid in init:
        grant(int(cid), cfg.init_points, 0.0)
    now = label_all(0.0)
    curve = [(0.0, 0)]
    times, per_client = [], cfg.points_per_client
    from fedal.continual import Schedule, resolve_schedule

    for row in rows:
        # training: annotators idle (continual modes train fewer FL rounds after AL round 0)
        sched = resolve_schedule(cfg.training_mode, Schedule(cfg.fl_rounds, cfg.local_epochs), al_round=row["round"])
        now += sched.fl_rounds * cfg.sim_fl_round_s
        advance(now)
        times.append(now)
        if not row["chosen_clients"]:
            continue
        now += cfg.sim_select_s
        advance(now)
        chosen, left = row["chosen_clients"], int(row["acquired"])
        for k, cid in enumerate(chosen):
            n = left if k == len(chosen) - 1 else min(per_client, left)
            left -= n
            if n > 0:
                grant(int(cid), n, now)
        curve.append((now, sum(s["granted"] for s in sites.values()) - int(row["acquired"])))
        now = label_all(now)
        curve.append((now, sum(s["granted"] for s in sites.values())))
    metrics = []
    for s in sites.values():
        p = s["store"].progress()
        st = s["ann"].stats
        waits = [x for a in st for x in a.waits]
        metrics.append({"paid": p.labeled, "granted": s["granted"], "withdrawn": p.withdrawn,
                        "duty-busy-s": s["duty"][0], "duty-idle-s": s["duty"][1],
                        "duty-idle-owed-s": s["duty_owed"], "duty-idle-spent-s": s["duty"][1] - s["duty_owed"],
                        "busy-s": sum(a.busy_s for a in st), "idle-s": sum(a.idle_s for a in st),
                        "waits-n": len(waits), "waits-sum-s": float(sum(waits)),
                        "waits-max-s": float(max(waits)) if waits else 0.0,
                        "first-grant-s": s["first"], "last-label-s": s["last"]})
        s["store"].close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"row_times": times, "summary": summarize(metrics), "label_curve": curve}
