"""The labeling policy of asynchronous labeling (labeling = "async"; docs/method.md, "Asynchronous
labeling"; SPEC §6; seeds/000, AAL): ``AsyncLabeling``, whose hooks the AL loop
(strategies/active_learning.py) calls; its clock, grants, standing share and checkpoint state are
its fields.

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
way; the rule: strategies/async_budget.py).

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

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from fedal.checkpoint import CheckpointError
from fedal.protocol import LabelingReply, LabelingRequest
from strategies.async_budget import budget_left, cap_plan, standing_top_ups
from strategies.async_sites import check_stores, summarize
from strategies.federation import ALState, ClientFailure
from strategies.labeling import LabelingPolicy

MAX_TAIL_ROUNDS = 100  # a guard: tail rounds after the last grant, waiting for labels to come in
MAX_SEED_STEPS = 10_000  # a guard: clock steps of sim-fl-round-s waiting for the seed set's labels
PEOPLE_POLL_S = 1.0  # people: wall seconds between two asks whether the seed set is labeled
PEOPLE_TAIL_IDLE_S = 5.0  # people: wall seconds of rest after a tail round in which nothing was paid


@dataclass
class RunClock:
    """The run's clock: simulated seconds (``tick`` advances it by what a step takes) or, with
    people, the wall clock since the run started; ``version`` counts the global models sent."""

    people: bool
    now: float = 0.0
    version: int = 0
    _t0: float = field(init=False)

    def __post_init__(self):
        self._t0 = time.monotonic() - self.now  # resumed: the clock goes on from the checkpoint's time

    def tick(self, simulated_s: float) -> None:
        """Advance the run's clock: by ``simulated_s``, or with people to the wall clock."""
        self.now = time.monotonic() - self._t0 if self.people else self.now + simulated_s


class AsyncLabeling(LabelingPolicy):
    """``labeling = "async"`` (module docstring). Its state, all of it in the checkpoint's
    ``extra`` (``checkpoint_extra``): the run token, the clock, each client's last labeling reply,
    the labels granted and not paid, the class counts each client reported and the standing
    share (``enrolled``, ``want``, ``granted_by``)."""

    records_q = False
    unlabeled_key = "n-grantable"  # |U| as selection sees it: points not granted yet (granted ones wait for annotators)

    def __init__(self, cfg):
        self.cfg = cfg
        self.people = cfg.annotators == "people"
        self.standing = cfg.async_budget == "standing"
        self.checkpoints = self.people  # simulated annotators live in the clients' memory: no resume
        self.state: ALState | None = None
        self.ck = self.ck_path = None
        self.token = ""  # names this run's sites on the clients and keys its grants in their stores
        self.clock = RunClock(self.people)
        self.last: dict[str, dict] = {}  # each client's last labeling reply (its counts)
        self.before: dict[str, dict] = {}  # resumed: the checkpoint's last replies (check_stores)
        self.pending_labels: dict[str, int] = {}  # granted and not paid, by client id
        self.reported: dict[str, np.ndarray] = {}  # each client's share of labeled_per_class
        # resumed: the clients that replied since; a client's first reply after the resume (the
        # first message, or its first after it returns) recounts its classes (the replies after
        # the checkpoint were lost) and shows what this run's token granted it (check_stores)
        self.checked: set[str] = set()
        # async-budget = "standing": each enrolled site's AL round of its latest selection grant,
        # its top-up, and the labels granted each way
        self.enrolled: dict[str, int] = {}
        self.want: dict[str, int] = {}
        self.granted_by = {"selection": 0, "standing": 0}
        self.tail_start: float | None = None  # the run's clock after the last AL round's grants
        self.sim_start = 0.0  # this AL round's start on the run's clock
        self.standing_now = 0  # the standing share's grants during this AL round
        self.granted = 0  # client selection's grants of this AL round
        self.done = False  # every granted label paid (or withdrawn) and no top-up left to give

    # ------------------------------------------------------------------ start and resume
    def load(self, loop, ck_path):
        if not self.people:
            raise CheckpointError(
                "resume = true is not supported with labeling = async and annotators = simulated: the sites' "
                "simulated annotators and query pools live in the clients' memory and are not checkpointed; "
                "rerun from the start (resume = false)")
        ck = loop.load_checkpoint(ck_path)
        if not isinstance(ck.extra, dict) or "token" not in ck.extra:
            raise CheckpointError(f"the checkpoint {ck_path} holds no asynchronous run's state (no run token): it "
                                  "was not written by an asynchronous run with people; set resume = false to "
                                  "start the run afresh")
        self.ck_path = ck_path
        return ck

    def start(self, loop, state: ALState, ck) -> None:
        cfg = self.cfg
        if self.people and ck is None:
            held = {c: s.n_labeled for c, s in state.clients.items() if s.n_labeled > 0}
            if held:
                raise CheckpointError(
                    f"annotators = people: client(s) {', '.join(f'{c} ({n})' for c, n in sorted(held.items()))} "
                    f"already hold paid labels of experiment {cfg.experiment!r} from an earlier run; a new "
                    "asynchronous run cannot continue one: resume = true (with that run's run directory) "
                    "continues it, or set a new experiment-id (or seed) to start afresh")
        if ck is None:  # resumed: the clients hold this run's labels already
            cfg.check_against_clients({p: (c.n_labeled, c.n_unlabeled) for p, c in state.clients.items()})
        who = ("people on each site's labeling page (fedal-annotate), wall clock" if self.people else
               f"{cfg.annotators_per_site} simulated annotator(s) per site ({cfg.annotator_latency})")
        loop.log(f"fedal: asynchronous labeling, {len(state.clients)} clients, {who}, workers "
                 f"{', '.join(cfg.worker_measures)}")
        # a resumed run reuses the token: a repeated round's grants are not granted twice
        ex = ck.extra if ck is not None else {}
        self.state, self.ck = state, ck
        self.token = ex["token"] if ck is not None else uuid.uuid4().hex
        self.clock = RunClock(self.people, float(ex.get("now", 0.0)), int(ex.get("version", 0)))
        # a client that does not answer still counts with what it was granted
        self.last = {c: dict(m) for c, m in ex.get("last", {}).items()}
        self.before = ex.get("last", {})
        self.reported = {c: np.asarray(v, dtype=np.int64) for c, v in ex.get("reported", {}).items()}
        self.enrolled = {c: int(v) for c, v in ex.get("enrolled", {}).items()}
        self.want = {c: int(v) for c, v in ex.get("want", {}).items()}
        self.granted_by = {k: int(v) for k, v in ex.get("granted_by", {"selection": 0, "standing": 0}).items()}
        self.tail_start = ex.get("tail_start")

    def round_zero(self, loop, state, plan, order) -> None:
        """Round 0 grants ``init-points`` to ``init-clients`` random clients (drawn as the
        synchronous loop draws them), and the first training waits for this seed set."""
        cfg, clock = self.cfg, self.clock
        got0 = self.send(loop, dict(plan), None, 0)
        for cid, rep in got0.items():
            if int(rep["granted-now"]) > 0:
                self.enrolled[cid] = 0
                self.granted_by["selection"] += int(rep["granted-now"])
        if self.people and not got0:
            # e.g. nodes without a state dir: nothing could be labeled, and the run would only spin
            _nobody_answered(loop, "annotators = people")
        if self.people:
            stale = {c: int(r["granted"]) - int(r["granted-now"]) for c, r in got0.items()}
            stale = {c: n for c, n in stale.items() if n > 0}
            if stale:
                raise CheckpointError(
                    f"annotators = people: the stores of client(s) {', '.join(sorted(stale))} already held a label "
                    f"budget of experiment {cfg.experiment!r} from an earlier run; a new asynchronous run "
                    "cannot continue one: resume = true (with that run's run directory) continues it, or "
                    "set a new experiment-id (or seed) to start afresh")
        if cfg.al_rounds == 0:
            self.tail_start = clock.now  # round 0's grants are the last
        # The seed set is labeled before the first training, as in the synchronous loop and in AAL
        # (seeds/000 starts from a labeled L0): there is no model for anyone to wait on yet, and a
        # first model trained on a trickle of labels is a worse start for every later selection
        # (measured: 4.5 points below sync at 1,000 labels when round 0 trained while they came in).
        # (The standing share's top-ups go on meanwhile: the seed set is the seed grants.)
        seed = {c: int(r["granted-now"]) for c, r in got0.items()}
        steps = 0
        while any(int(self.last[c]["paid"]) < n for c, n in seed.items() if c in self.last) and steps < MAX_SEED_STEPS:
            if self.people:
                if cfg.labeling_deadline_s > 0 and clock.now >= cfg.labeling_deadline_s:
                    loop.log(f"fedal: labeling-deadline-s = {cfg.labeling_deadline_s:g} s passed before the seed set "
                             "was labeled; training starts with what is labeled")
                    break
                time.sleep(PEOPLE_POLL_S)  # people label in their own time: ask again in a while
            clock.tick(cfg.sim_fl_round_s)
            ups = self.top_ups()
            got = self.send(loop, ups, None, 0, tag=f"seed-{steps}")
            self.granted_by["standing"] += sum(int(got[c]["granted-now"]) for c in ups if c in got)
            steps += 1
        if steps:
            loop.log(f"fedal: the seed set ({sum(int(m['paid']) for m in self.last.values())} labels) was labeled "
                     f"after {clock.now:.0f}s; training starts")

    def resume(self, loop, state, ck, recorder) -> None:
        self.pending_labels.update({c: int(v) for c, v in ck.extra.get("pending", {}).items()})
        # the first message: no grant, no model; each site recounts its classes and says what this
        # run's token granted it, checked against the checkpoint (send, check_stores)
        if not self.send(loop, {}, None, ck.al_round + 1):
            _nobody_answered(loop, "resume")
        loop.log(f"fedal: resuming {recorder.dir} after AL round {ck.al_round} (run token {self.token[:8]}…, "
                 f"run clock {self.clock.now:.0f}s); {sum(int(m['paid']) for m in self.last.values())} labels "
                 "paid so far")

    # ------------------------------------------------------------------ messages and budget
    def send(self, loop, grants: dict[str, int], arrays, al_round: int, finish: bool = False,
             tag: str = "") -> dict[str, dict]:
        """One ``query.labeling`` to every connected client (``grants``: labels granted now, by
        client id; ``tag``: the grants' key within the AL round); returns the replies' counts by
        client id, and keeps each client's last counts, pending labels and class counts."""
        state = self.state
        self.clock.tick(0.0)
        recount = {cid for cid in state.clients if self.ck is not None and cid not in self.checked}
        jobs = [(cid, LabelingRequest(self.token, self.clock.now, al_round, self.clock.version,
                                      int(grants.get(cid, 0)), finish, tag if tag and grants.get(cid) else "",
                                      cid in recount))
                for cid, c in state.clients.items() if c.node_id is not None]
        got = {cid: LabelingReply.from_record(r.content).counts
               for cid, r in loop.exchange(state, jobs, arrays, require_any=False).items()}
        if recount & set(got):
            check_stores(self.cfg, self.ck_path, self.token, self.before, {c: got[c] for c in got if c in recount})
            self.checked.update(got)
        for cid, m in got.items():
            if "acquired-per-class" in m:
                if cid in recount:  # the reply counts all of the client's labels: drop what it reported before
                    loop.labeled_per_class = loop.labeled_per_class - self.reported.pop(cid, 0)
                self.reported[cid] = self.reported.get(cid, 0) + np.asarray(m["acquired-per-class"], dtype=np.int64)
        loop.labeled_per_class = loop.labeled_per_class + self.take_counts(loop, state, got)
        for cid, m in got.items():
            self.last[cid] = m
            # the probe sees a client as it will be once its granted labels are in (ClientWorker.probe)
            self.pending_labels[cid] = max(0, int(m["granted"]) - int(m["paid"]))
        return got

    def remaining(self) -> int:
        """The run's label budget not granted yet."""
        return budget_left(self.cfg.label_budget, self.last)

    def top_ups(self) -> dict[str, int]:
        """The standing share's grants at this message (strategies/async_budget.py)."""
        if not self.standing:
            return {}
        return standing_top_ups(self.enrolled, self.last, self.want, self.remaining(), self.cfg.query_pool_refill,
                                {c: i for i, c in enumerate(self.state.clients)})

    def can_top_up(self) -> bool:
        return self.standing and self.remaining() > 0 and any(
            int(self.last[c]["n-grantable"]) > 0 for c in self.enrolled if c in self.last)

    # ------------------------------------------------------------------ the AL round
    def runs_round(self, r: int, al_rounds: int) -> bool:
        return True  # the tail goes on until the granted labels are paid (end_tail, tail_done)

    def begin_round(self, loop, r: int, times: dict) -> None:
        self.sim_start = self.clock.now
        self.standing_now = self.granted_by["standing"] if r == 0 else 0  # round 0's include the seed set's wait
        self.granted = 0

    def before_fl_round(self, loop, state, al_round: int, arrays) -> None:
        # the latest global model goes to every client (its workers refill with it); the
        # annotators label up to now; then this FL round's training takes sim-fl-round-s
        self.clock.version += 1
        ups = self.top_ups()
        got = self.send(loop, ups, arrays, al_round, tag=f"standing-{self.clock.version}")
        n = sum(int(got[c]["granted-now"]) for c in ups if c in got)
        self.granted_by["standing"] += n
        self.standing_now += n
        self.clock.tick(self.cfg.sim_fl_round_s)

    def pending(self, cid: str) -> int:
        return self.pending_labels.get(cid, 0)

    def cap(self, plan):
        # the standing share has spent part of the budget, or (people) a resumed run repeats a
        # round some of whose grants were sent before the crash: grant what is left
        return cap_plan(plan, self.remaining()) if self.standing or self.people else plan

    def acquire(self, loop, state, plan, arrays, al_round, order) -> list[str]:
        """Client selection's grants: the chosen clients' workers fill their query pools with
        the latest model, to be labeled while the server trains on."""
        self.clock.tick(self.cfg.sim_select_s)
        self.clock.version += 1
        got = self.send(loop, dict(plan), arrays, al_round)
        chosen = [c for c, _ in plan if c in got]
        self.granted = sum(int(got[c]["granted-now"]) for c in chosen)
        self.granted_by["selection"] += self.granted
        self.enrolled.update({c: al_round for c in chosen if int(got[c]["granted-now"]) > 0})
        return chosen

    def acquired_fields(self) -> dict:
        return {"acquired": self.granted}

    def round_fields(self, loop, r: int, selecting: bool) -> dict:
        self.clock.tick(0.0)
        if selecting and r + 1 == self.cfg.al_rounds:
            self.tail_start = self.clock.now
        self.done = all(int(m.get("done", 1)) for m in self.last.values()) and not self.can_top_up()
        ms = self.last.values()
        fields = {"sim_time_s": round(self.clock.now, 3), "sim_round_start_s": round(self.sim_start, 3),
                  "paid": sum(int(m["paid"]) for m in ms), "granted": sum(int(m["granted"]) for m in ms),
                  "open_queries": sum(int(m["open"]) for m in ms), "tail": not selecting}
        if self.standing:
            fields["standing_granted"] = self.standing_now
        return fields

    def checkpoint_extra(self) -> dict:
        """What a resume needs to continue after this round (fedal/checkpoint.py)."""
        return {"token": self.token, "now": self.clock.now, "version": self.clock.version,
                "tail_start": self.tail_start, "last": self.last,
                "pending": {c: int(v) for c, v in self.pending_labels.items()},
                "reported": {c: [int(x) for x in v] for c, v in self.reported.items()},
                "enrolled": self.enrolled, "want": self.want, "granted_by": self.granted_by}

    def round_line(self, r: int, row: dict, times: dict) -> str:
        return (f"[AL round {r:2d}/{self.cfg.al_rounds}{' tail' if row['tail'] else ''}] t {self.clock.now:8.0f}s "
                f"labels {row['labels']:6d}  acc {row['accuracy']:.4f}  open {row['open_queries']}"
                + (f"  → clients {row['chosen_clients']}" if row["chosen_clients"] else ""))

    def tail_done(self) -> bool:
        return self.done

    def may_stop(self, recorder) -> bool:
        # a staged people run: the sites keep their grants, queries and reserve (people may go on
        # labeling); resume = true continues from this round's checkpoint
        return self.people and recorder is not None

    def end_tail(self, loop, r: int, row: dict, rows: list[dict]) -> bool:
        cfg, now = self.cfg, self.clock.now
        if self.tail_start is not None and cfg.labeling_deadline_s > 0 and now - self.tail_start >= cfg.labeling_deadline_s:
            loop.log(f"fedal: labeling-deadline-s = {cfg.labeling_deadline_s:g} s after the last grants passed "
                     f"with {row['open_queries']} queries open and {row['granted'] - row['paid']} granted labels "
                     "unpaid; withdrawing the open queries")
            return True
        if self.people and row["tail"] and len(rows) > 1 and row["paid"] == rows[-2]["paid"]:
            # nothing paid since the last tail round: training again on the same labels gains
            # nothing; wait a while (the next round's model still refills the pools)
            time.sleep(max(0.0, min(PEOPLE_TAIL_IDLE_S, self.tail_start + cfg.labeling_deadline_s - now)))
        if not self.people and r - cfg.al_rounds >= MAX_TAIL_ROUNDS:  # people: the deadline bounds the tail
            loop.log(f"fedal: {MAX_TAIL_ROUNDS} tail rounds and labels still open; stopping")
            return True
        return False

    # ------------------------------------------------------------------ the end
    def finish(self, loop, state, r: int) -> dict:
        """Every open query is withdrawn (never paid); the sites report their annotators."""
        got = self.send(loop, {}, None, r, finish=True)
        return {**summarize(list(got.values())), "granted_by_selection": self.granted_by["selection"],
                "granted_standing": self.granted_by["standing"]}

    def summary_tail(self) -> dict:
        return {"sim_time_s": self.clock.now}

    def report(self, loop, summary: dict, rows: list[dict], wall: float) -> None:
        if self.people:
            loop.log(f"fedal: async labeling (people): paid {summary['paid']} of {summary['granted']} granted, "
                     f"{summary['withdrawn']} queries withdrawn unpaid")
        else:
            loop.log(f"fedal: async labeling: paid {summary['paid']} of {summary['granted']} granted, idle fraction "
                     f"{summary['idle_fraction']:.3f}, query latency {summary['mean_query_latency_s']:.1f}s, "
                     f"{summary['labels_per_hour']:.0f} labels/h")


def _nobody_answered(loop, what: str) -> None:
    """Stop the run: no client took its first labeling message (the first failures say why)."""
    why = "; ".join(f"client {f['client']}: {f['reason']}" for f in loop.failures[:3])
    raise ClientFailure(f"{what}: no client took its first labeling message ({why})")
