"""The AL loop with asynchronous labeling (labeling = "async"; docs/method.md, "Asynchronous
labeling"; SPEC §6; seeds/000, AAL).

The server never waits for labels. One clock, the *run's clock*, kept here and sent to the
clients in every ``query.labeling`` message. With ``annotators = "simulated"`` it is simulated:
each FL round of training advances it by ``sim-fl-round-s`` and the probe and client selection of
an AL round by ``sim-select-s``, and between two messages every site's simulated annotators label
up to it (fedal.async_labeling); deterministic under the seed. With ``annotators = "people"`` it
is the wall clock, seconds since the run started (the ``sim-*`` increments are not applied): people
label on each site's labeling page (docs/labeling.md) whenever they like. Either way an FL round
trains on whatever is labeled when it starts, and the rows' ``sim_time_s`` and
``sim_round_start_s`` are seconds on the run's clock, simulated or real.

An AL round here is what it is in the synchronous loop — T FL rounds, evaluation, probe, client
selection (any client strategy, diffusion included) — except that the chosen clients are not
asked for labels: they are *granted* budget (``points-per-client`` each) and their workers fill
their query pools with the latest global model, to be labeled while the server trains on. Round
0 grants ``init-points`` to ``init-clients`` random clients, drawn as the synchronous loop draws
them, and their pools start with random queries (no model exists yet); the first training waits
until this seed set is labeled, as the synchronous loop's does (the clock runs on meanwhile; with
people the server asks every ``PEOPLE_POLL_S`` seconds, and stops waiting at
``labeling-deadline-s`` when that is set). After the last AL round's grants the server keeps
training ("tail" rounds, no selection) until every granted label is paid, then withdraws whatever
is still open. The tail also ends at ``labeling-deadline-s`` seconds on the run's clock after the
last AL round's grants (when > 0; simulated annotators without it: after ``MAX_TAIL_ROUNDS`` tail
rounds; people, who may stop labeling at any time, must have it, and their tail is bounded by it
alone, resting ``PEOPLE_TAIL_IDLE_S`` after a tail round in which nothing was paid): the open
queries are withdrawn, unpaid. Budgets are exact:
each site's store pays a query once and never beyond the site's granted budget, so the
federation pays exactly what was granted: the run's label budget (``Config.label_budget``),
unless clients run out of points or the deadline came first.

Who gets budget (``async-budget``): with ``"selection"`` (the default, the paper's rule) only
client selection grants it, ``points-per-client`` to each chosen client, so a site that has
labeled its grant waits until selection picks it again. With ``"standing"`` a site once granted
budget (a seed-set site or a chosen one) keeps a standing share: before every FL round each such
site owed fewer granted labels than its top-up (``query-pool-refill`` at first, doubled each time
the site is found to have run dry) is topped up by that many (latest picks first) from the run's
budget not granted yet, also while the seed set is labeled, and client
selection grants what is left, in its pick order. The total stays the run's label budget; what
changes is who spends it: selection decides which sites label, their annotators' pace how much
(the rows' ``standing_granted`` and the summary's ``granted_standing`` say how much went that
way).

Resume (people only; docs/method.md, "Asynchronous labeling"): with a run directory the server
checkpoints after every AL round and tail round (fedal/checkpoint.py, its ``extra``: run token,
run clock and model-version counter, ``tail_start``, last replies, pending labels, standing
share). ``resume = true`` restores it, skips round 0 and the seed set, asks every site once
without a grant what this token granted it (refusing stores of another token or that lost this
run's grants) and to recount its classes, restarts the clock at the checkpoint's seconds and goes
on with the next AL round. The token is reused, so a repeated round's grants carry the keys they
had before the crash and are not granted twice; client selection's grants are capped by the
budget not granted yet, as the sites report it, so the federation never pays beyond the label
budget. Simulated annotators live in the clients' memory: their runs refuse ``resume = true``.
"""

from __future__ import annotations

import time
import uuid

import numpy as np

from fedal import checkpoint
from fedal.checkpoint import CheckpointError
from fedal.async_labeling import STRATEGY_TAGS
from fedal.results import CHECKPOINT_FILE
from strategies.async_budget import budget_left, cap_plan, standing_top_ups
from strategies.client_selection import allocate_budget, plan_round

MAX_TAIL_ROUNDS = 100  # a guard: tail rounds after the last grant, waiting for labels to come in
MAX_SEED_STEPS = 10_000  # a guard: clock steps of sim-fl-round-s waiting for the seed set's labels
PEOPLE_POLL_S = 1.0  # people: wall seconds between two asks whether the seed set is labeled
PEOPLE_TAIL_IDLE_S = 5.0  # people: wall seconds of rest after a tail round in which nothing was paid


def run_async(loop, recorder=None) -> list[dict]:
    from flwr.app import ArrayRecord

    cfg = loop.cfg
    people = cfg.annotators == "people"
    ck = None
    ck_path = None if recorder is None else recorder.dir / CHECKPOINT_FILE
    if cfg.resume:
        if not people:
            raise CheckpointError(
                "resume = true is not supported with labeling = async and annotators = simulated: the sites' "
                "simulated annotators and query pools live in the clients' memory and are not checkpointed; "
                "rerun from the start (resume = false)")
        if ck_path is None:
            raise CheckpointError("resume = true needs the run directory (a recorder) that holds the checkpoint")
        ck = checkpoint.load(ck_path, cfg.config_hash(), cfg.seed)
        if not isinstance(ck.extra, dict) or "token" not in ck.extra:
            raise CheckpointError(f"the checkpoint {ck_path} holds no asynchronous run's state (no run token): it "
                                  "was not written by an asynchronous run with people; set resume = false to "
                                  "start the run afresh")
    t_run = time.perf_counter()
    state = loop.discover()
    if people and ck is None:
        held = {c: s.n_labeled for c, s in state.clients.items() if s.n_labeled > 0}
        if held:
            raise CheckpointError(
                f"annotators = people: client(s) {', '.join(f'{c} ({n})' for c, n in sorted(held.items()))} "
                f"already hold paid labels of experiment {cfg.experiment!r} from an earlier run; a new "
                "asynchronous run cannot continue one: resume = true (with that run's run directory) "
                "continues it, or set a new experiment-id (or seed) to start afresh")
    if ck is None:  # resumed: the clients hold this run's labels already
        cfg.check_against_clients({p: (c.n_labeled, c.n_unlabeled) for p, c in state.clients.items()})
    who = ("people on each site's labeling page (fedal-annotate), wall clock" if people else
           f"{cfg.annotators_per_site} simulated annotator(s) per site ({cfg.annotator_latency})")
    loop.log(f"fedal: asynchronous labeling, {len(state.clients)} clients, {who}, workers "
             f"{', '.join(cfg.worker_measures)}")
    # the run token names this run's sites on the clients and keys its grants in their stores; no
    # effect on what is computed. A resumed run reuses it: a repeated round's grants are not granted twice
    ex = ck.extra if ck is not None else {}
    token = ex["token"] if ck is not None else uuid.uuid4().hex
    clock = {"now": float(ex.get("now", 0.0)), "version": int(ex.get("version", 0))}
    t_clock = time.monotonic() - clock["now"]  # resumed: the clock goes on from the checkpoint's time

    def tick(simulated_s: float) -> None:
        """Advance the run's clock: by ``simulated_s``, or with people to the wall clock."""
        clock["now"] = time.monotonic() - t_clock if people else clock["now"] + simulated_s

    # each client's last labeling reply (a resumed run starts from the checkpoint's: a client
    # that does not answer still counts with what it was granted)
    last: dict[str, dict] = {c: dict(m) for c, m in ex.get("last", {}).items()}
    labeled_per_class = np.zeros(loop.num_classes, dtype=np.int64)
    # each client's share of labeled_per_class (what its replies reported), for a resume's recount
    reported = {c: np.asarray(v, dtype=np.int64) for c, v in ex.get("reported", {}).items()}
    # resumed: the clients that replied since; a client's first reply after the resume (the first
    # message, or its first after it returns) recounts its classes (the replies after the
    # checkpoint were lost) and shows what this run's token granted it (_check_stores)
    checked: set[str] = set()

    def labeling(grants: dict[str, int], arrays, al_round: int, finish: bool = False, tag: str = "") -> dict:
        nonlocal labeled_per_class
        tick(0.0)
        recount = {cid for cid in state.clients if ck is not None and cid not in checked}
        jobs = [(cid, {"run": token, "now": clock["now"], "al-round": al_round, "model-version": clock["version"],
                       "grant": int(grants.get(cid, 0)), "finish": finish,
                       **({"grant-tag": tag} if tag and grants.get(cid) else {}),
                       **({"recount": True} if cid in recount else {})})
                for cid, c in state.clients.items() if c.node_id is not None]
        got = loop._exchange(state, "query.labeling", jobs, arrays, require_any=False)
        if recount & set(got):
            _check_stores(cfg, ck_path, token, ex.get("last", {}),
                          {c: got[c].content["metrics"] for c in got if c in recount})
            checked.update(got)
        for cid, r in got.items():
            m = r.content["metrics"]
            if "acquired-per-class" in m:
                if cid in recount:  # the reply counts all of the client's labels: drop what it reported before
                    labeled_per_class = labeled_per_class - reported.pop(cid, 0)
                reported[cid] = reported.get(cid, 0) + np.asarray(m["acquired-per-class"], dtype=np.int64)
        # |U| as selection sees it: points not granted yet (granted ones wait for annotators)
        labeled_per_class = labeled_per_class + loop.take_counts(state, got, "n-grantable")
        for cid, r in got.items():
            m = r.content["metrics"]
            last[cid] = {k: (list(v) if isinstance(v, list) else v) for k, v in m.items()}
            # the probe sees a client as it will be once its granted labels are in (see probe)
            loop.pending_labels[cid] = max(0, int(m["granted"]) - int(m["paid"]))
        return got

    # async-budget = "standing": a site once granted budget keeps a standing share (module
    # docstring; its rule: strategies/async_budget.py); ``enrolled`` holds the AL round of each
    # such site's latest selection grant
    standing = cfg.async_budget == "standing"
    enrolled: dict[str, int] = {c: int(v) for c, v in ex.get("enrolled", {}).items()}
    want: dict[str, int] = {c: int(v) for c, v in ex.get("want", {}).items()}  # each enrolled site's top-up
    granted_by = {k: int(v) for k, v in ex.get("granted_by", {"selection": 0, "standing": 0}).items()}

    def remaining() -> int:
        return budget_left(cfg.label_budget, last)

    def top_ups() -> dict[str, int]:
        if not standing:
            return {}
        return standing_top_ups(enrolled, last, want, remaining(), cfg.query_pool_refill,
                                {c: i for i, c in enumerate(state.clients)})

    def can_top_up() -> bool:
        return standing and remaining() > 0 and any(int(last[c]["n-grantable"]) > 0 for c in enrolled if c in last)

    tail_start: float | None = ex.get("tail_start")  # the run's clock after the last AL round's grants
    if ck is None:
        # round 0: init-clients random clients, init-points each, drawn as the synchronous loop draws them
        pids = list(state.clients)
        n_u = np.array([state.clients[p].n_unlabeled for p in pids])
        order_idx = loop.rng.permutation(np.flatnonzero(n_u > 0))
        plan0 = allocate_budget(order_idx, n_u, cfg.init_points, cfg.init_clients)
        got0 = labeling({pids[z]: n for z, n in plan0}, None, 0)
        for cid, rep in got0.items():
            if int(rep.content["metrics"]["granted-now"]) > 0:
                enrolled[cid] = 0
                granted_by["selection"] += int(rep.content["metrics"]["granted-now"])
        if people and not got0:
            # e.g. nodes without a state dir: nothing could be labeled, and the run would only spin
            _nobody_answered(loop, "annotators = people")
        if people:
            stale = {c: int(r.content["metrics"]["granted"]) - int(r.content["metrics"]["granted-now"])
                     for c, r in got0.items()}
            stale = {c: n for c, n in stale.items() if n > 0}
            if stale:
                raise CheckpointError(
                    f"annotators = people: the stores of client(s) {', '.join(sorted(stale))} already held a label "
                    f"budget of experiment {cfg.experiment!r} from an earlier run; a new asynchronous run "
                    "cannot continue one: resume = true (with that run's run directory) continues it, or "
                    "set a new experiment-id (or seed) to start afresh")
        if cfg.al_rounds == 0:
            tail_start = clock["now"]  # round 0's grants are the last
        # The seed set is labeled before the first training, as in the synchronous loop and in AAL
        # (seeds/000 starts from a labeled L0): there is no model for anyone to wait on yet, and a
        # first model trained on a trickle of labels is a worse start for every later selection
        # (measured: 4.5 points below sync at 1,000 labels when round 0 trained while they came in).
        # (The standing share's top-ups go on meanwhile: the seed set is the seed grants.)
        seed = {c: int(r.content["metrics"]["granted-now"]) for c, r in got0.items()}
        steps = 0
        while any(int(last[c]["paid"]) < n for c, n in seed.items() if c in last) and steps < MAX_SEED_STEPS:
            if people:
                if cfg.labeling_deadline_s > 0 and clock["now"] >= cfg.labeling_deadline_s:
                    loop.log(f"fedal: labeling-deadline-s = {cfg.labeling_deadline_s:g} s passed before the seed set "
                             "was labeled; training starts with what is labeled")
                    break
                time.sleep(PEOPLE_POLL_S)  # people label in their own time: ask again in a while
            tick(cfg.sim_fl_round_s)
            ups = top_ups()
            got = labeling(ups, None, 0, tag=f"seed-{steps}")
            granted_by["standing"] += sum(int(got[c].content["metrics"]["granted-now"]) for c in ups if c in got)
            steps += 1
        if steps:
            loop.log(f"fedal: the seed set ({sum(int(m['paid']) for m in last.values())} labels) was labeled "
                     f"after {clock['now']:.0f}s; training starts")
        initial = ArrayRecord(loop.model_fn().state_dict())
        arrays = initial
        rows: list[dict] = []
        r = 0
    else:
        initial = ArrayRecord(loop.model_fn().state_dict())
        arrays, rows, r = _resume(loop, state, ck, recorder)
        labeled_per_class = np.asarray(ck.labeled_per_class, dtype=np.int64)
        loop.pending_labels.update({c: int(v) for c, v in ex.get("pending", {}).items()})
        # the first message: no grant, no model; each site recounts its classes and says what this
        # run's token granted it, checked against the checkpoint (labeling(), _check_stores)
        got = labeling({}, None, r)
        if not got:
            _nobody_answered(loop, "resume")
        loop.log(f"fedal: resuming {recorder.dir} after AL round {ck.al_round} (run token {token[:8]}…, "
                 f"run clock {clock['now']:.0f}s); {sum(int(m['paid']) for m in last.values())} labels paid so far")
    while True:
        selecting = r < cfg.al_rounds
        loop.failures = []
        if r > 0:
            loop.refresh(state)
        pids = list(state.clients)
        times = {"train": 0.0, "evaluate": 0.0, "probe": 0.0, "select": 0.0, "acquire": 0.0}
        sim_start = clock["now"]
        # the standing share's grants during this AL round (round 0's include the seed set's wait)
        standing_now = [granted_by["standing"] if r == 0 else 0]

        def before(fl_round, current, r=r):
            # the latest global model goes to every client (its workers refill with it); the
            # annotators label up to now; then this FL round's training takes sim-fl-round-s
            clock["version"] += 1
            ups = top_ups()
            got = labeling(ups, current, r, tag=f"standing-{clock['version']}")
            n = sum(int(got[c].content["metrics"]["granted-now"]) for c in ups if c in got)
            granted_by["standing"] += n
            standing_now[0] += n
            tick(cfg.sim_fl_round_s)

        state.labeled_per_class = labeled_per_class
        arrays, probes, acc, loss = loop.train_and_evaluate(
            state, arrays if loop.mode.warm_start else initial, r, r + 1 if selecting else None, times, before)
        n_labels = sum(c.n_labeled for c in state.clients.values())
        chosen: list[str] = []
        granted = 0
        diagnostics: dict = {}
        if selecting:
            stats = loop.client_stats(state, probes)
            t = time.perf_counter()
            plan = plan_round(cfg.client_strategy, stats, loop.rng, loop.diffusion,
                              cfg.points_per_client, cfg.clients_per_round, diagnostics)
            if standing or people:
                # the standing share has spent part of the budget, or (people) a resumed run repeats a
                # round some of whose grants were sent before the crash: grant what is left
                plan = cap_plan(plan, remaining())
            times["select"] = time.perf_counter() - t
            tick(cfg.sim_select_s)
            clock["version"] += 1
            t = time.perf_counter()
            got = labeling({pids[z]: n for z, n in plan}, arrays, r + 1)
            times["acquire"] = time.perf_counter() - t
            chosen = [pids[z] for z, _ in plan if pids[z] in got]
            granted = sum(int(got[c].content["metrics"]["granted-now"]) for c in chosen)
            granted_by["selection"] += granted
            enrolled.update({c: r + 1 for c in chosen if int(got[c].content["metrics"]["granted-now"]) > 0})
        tick(0.0)
        if selecting and r + 1 == cfg.al_rounds:
            tail_start = clock["now"]
        # done: every granted label paid (or withdrawn), and (standing) no top-up left to give
        done = all(int(m.get("done", 1)) for m in last.values()) and not can_top_up()
        row = {"round": r, "labels": n_labels, "accuracy": acc, "loss": loss,
               "chosen_clients": [state.public_id(c) for c in chosen], "acquired": granted,
               "labeled_per_class": labeled_per_class.tolist(),
               "clients_with_labels": sum(c.n_labeled > 0 for c in state.clients.values()),
               "time_s": {k: round(v, 4) for k, v in times.items()},
               "sim_time_s": round(clock["now"], 3), "sim_round_start_s": round(sim_start, 3),
               "paid": sum(int(m["paid"]) for m in last.values()),
               "granted": sum(int(m["granted"]) for m in last.values()),
               "open_queries": sum(int(m["open"]) for m in last.values()), "tail": not selecting}
        if standing:
            row["standing_granted"] = standing_now[0]
        diagnostics.pop("q", None)
        diagnostics.pop("q_clients", None)
        if diagnostics:
            row["graph"] = {**diagnostics, "probes": len(probes)}
        if loop.failures:
            row["failures"] = list(loop.failures)
        rows.append(row)
        if recorder is not None:
            recorder.add_round(row)
            if people:  # what a resume needs to continue after this round (fedal/checkpoint.py)
                loop._save_checkpoint(ck_path, state, r, arrays, labeled_per_class, rows, extra={
                    "token": token, "now": clock["now"], "version": clock["version"], "tail_start": tail_start,
                    "last": last, "pending": {c: int(v) for c, v in loop.pending_labels.items()},
                    "reported": {c: [int(x) for x in v] for c, v in reported.items()},
                    "enrolled": enrolled, "want": want, "granted_by": granted_by})
        loop.log(f"[AL round {r:2d}/{cfg.al_rounds}{' tail' if not selecting else ''}] t {clock['now']:8.0f}s "
                 f"labels {n_labels:6d}  acc {acc:.4f}  open {row['open_queries']}"
                 + (f"  → clients {row['chosen_clients']}" if chosen else ""))
        if not selecting and done:
            break
        if people and recorder is not None and r == cfg.stop_after_round and selecting:
            # a staged run: the sites keep their grants, queries and reserve (people may go on
            # labeling); resume = true continues from this round's checkpoint
            loop.log(f"fedal: stopping after AL round {r} (stop-after-round); resume = true continues")
            return rows
        if tail_start is not None and cfg.labeling_deadline_s > 0 and \
                clock["now"] - tail_start >= cfg.labeling_deadline_s:
            loop.log(f"fedal: labeling-deadline-s = {cfg.labeling_deadline_s:g} s after the last grants passed "
                     f"with {row['open_queries']} queries open and {row['granted'] - row['paid']} granted labels "
                     "unpaid; withdrawing the open queries")
            break
        if people and not selecting and len(rows) > 1 and row["paid"] == rows[-2]["paid"]:
            # nothing paid since the last tail round: training again on the same labels gains
            # nothing; wait a while (the next round's model still refills the pools)
            time.sleep(max(0.0, min(PEOPLE_TAIL_IDLE_S, tail_start + cfg.labeling_deadline_s - clock["now"])))
        if not people and r - cfg.al_rounds >= MAX_TAIL_ROUNDS:  # people: the deadline bounds the tail
            loop.log(f"fedal: {MAX_TAIL_ROUNDS} tail rounds and labels still open; stopping")
            break
        r += 1

    # the end: every open query is withdrawn (never paid); the sites report their annotators
    got = labeling({}, None, r, finish=True)
    summary = summarize([got[c].content["metrics"] for c in got])
    summary.update({"granted_by_selection": granted_by["selection"], "granted_standing": granted_by["standing"],
                    "final_accuracy": rows[-1]["accuracy"], "labels": rows[-1]["labels"],
                    "wall_time_s": round(time.perf_counter() - t_run, 2), "sim_time_s": clock["now"]})
    loop.async_summary = summary
    if recorder is not None:
        recorder.finish(summary)
    if people:
        loop.log(f"fedal: async labeling (people): paid {summary['paid']} of {summary['granted']} granted, "
                 f"{summary['withdrawn']} queries withdrawn unpaid")
    else:
        loop.log(f"fedal: async labeling: paid {summary['paid']} of {summary['granted']} granted, idle fraction "
                 f"{summary['idle_fraction']:.3f}, query latency {summary['mean_query_latency_s']:.1f}s, "
                 f"{summary['labels_per_hour']:.0f} labels/h")
    return rows


def _nobody_answered(loop, what: str) -> None:
    """Stop the run: no client took its first labeling message (the first failures say why)."""
    from strategies.active_learning import ClientFailure

    why = "; ".join(f"client {f['client']}: {f['reason']}" for f in loop.failures[:3])
    raise ClientFailure(f"{what}: no client took its first labeling message ({why})")


def _resume(loop, state, ck, recorder):
    """Restore the server's state from the checkpoint ``ck``; returns (weights, rows, the next AL
    round). Clients of the checkpoint not connected now are kept (not connected) until they return."""
    from flwr.app import Array, ArrayRecord

    from strategies.active_learning import ClientInfo

    loop.rng.bit_generator.state = ck.rng_state
    state.prev_entropy = dict(ck.prev_entropy)
    for cid, (n_l, n_u) in ck.clients.items():
        if cid not in state.clients:
            state.add(ClientInfo(None, cid, n_l, n_u))
    rows = [dict(row) for row in ck.rows]
    recorder.resume_from(rows)
    return ArrayRecord({k: Array(v) for k, v in ck.weights.items()}), rows, ck.al_round + 1


def _check_stores(cfg, ck_path, token: str, before: dict, now: dict) -> None:
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
            f"resume: the stores of client(s) "
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
