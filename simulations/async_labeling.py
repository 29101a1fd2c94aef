"""Synchronous versus asynchronous labeling (issue #14; SPEC §6; docs/method.md, "Asynchronous
labeling"), on the in-process engine.

    python -m simulations.async_labeling --seeds 0 1            # run (resumable per run) + report
    python -m simulations.async_labeling --report-only          # the report from saved runs

Per seed, runs with the same client strategy (diffusion) and the same budgets:
- ``sync``: the paper's loop (labeling = sync, point-strategy = entropy): the server trains T FL
  rounds, probes and selects, then waits while the chosen clients' annotators label their batch.
  Its timeline is replayed on the same simulated clock (``replay_sync``): training and selection
  advance the clock by ``sim-fl-round-s`` per FL round and ``sim-select-s`` per AL round while the
  annotators idle; then each chosen site's simulated annotators (same latency model, same number
  per site) label its batch, and the next AL round starts when the last site is done.
- ``async``: labeling = async (strategies/async_policy.py) with one query measure, entropy, the
  sync arm's point strategy: the comparison changes only when labels arrive.
- ``async-mix``: as ``async`` with AAL's three workers per site (entropy, least confidence,
  margin: the default of ``async-workers``).

The goals of the issue are read on ``async`` against ``sync``. Because the async server trains
all the time, "equal labels" is not "equal training": the report also compares accuracy at equal
FL rounds trained.

Results go to results/async-labeling/<mode>-s<seed>.json (a finished run is not rerun; a file
whose run config differs from the one asked for is refused); the report (summary.md,
report.json, figures) to reports/async-labeling/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from simulations.async_replay import replay_sync

ROOT = Path(__file__).resolve().parents[1]
BASE = {"dataset": "mnist1d", "partition": "dirichlet", "dirichlet-alpha": 0.1, "client-strategy": "diffusion",
        "training-mode": "warm-start"}
MODES = {"sync": {"labeling": "sync", "point-strategy": "entropy"},
         "async": {"labeling": "async", "point-strategy": "entropy", "async-workers": "entropy"},
         "async-mix": {"labeling": "async", "point-strategy": "entropy"},
         "async-standing": {"labeling": "async", "point-strategy": "entropy", "async-workers": "entropy",
                            "async-budget": "standing"}}
ASYNC_ARMS = ("async", "async-mix", "async-standing")
TIMING = {"annotators-per-site": 2, "annotator-latency": "lognormal:median=6,sigma=0.5",
          "sim-fl-round-s": 30.0, "sim-select-s": 20.0, "query-pool-low": 10, "query-pool-refill": 30}


def run_config(mode: str, seed: int, extra: dict | None = None) -> dict:
    rc = {**BASE, **MODES[mode], "seed": seed, **(extra or {})}
    if mode != "sync":
        rc.update({k: v for k, v in TIMING.items() if k not in (extra or {})})
    return rc


def fl_rounds_trained(rows: list[dict], cfg) -> list[int]:
    """Cumulative FL rounds trained at each row (each row is one AL round: its schedule's FL
    rounds, the first one's the retrain schedule; the async loop's tail rounds count the same)."""
    from fedal.continual import Schedule, resolve_schedule

    total, out = 0, []
    for row in rows:
        total += resolve_schedule(cfg.training_mode, Schedule(cfg.fl_rounds, cfg.local_epochs),
                                  al_round=int(row["round"])).fl_rounds
        out.append(total)
    return out


# ---------------------------------------------------------------------------------- runs
def run_one(mode: str, seed: int, num_clients: int, extra: dict, out: Path, log) -> dict:
    from fedal.config import Config
    from simulations.inprocess import run_inprocess

    path = out / f"{mode}-s{seed}.json"
    rc = run_config(mode, seed, extra)
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("run_config") != rc or done.get("mode") != mode:
            raise SystemExit(f"{path} holds a run of another configuration ({done.get('mode')!r}, "
                             f"{done.get('run_config')}); asked for {rc}. Move it away to rerun.")
        return done
    cfg = Config.from_run_config({**rc, **{k: v for k, v in TIMING.items()}})
    t0 = time.perf_counter()
    if mode != "sync":
        rows, grid = run_inprocess(rc, num_clients, log=log)
        result = {"rows": rows, "summary": grid.loop.summary,
                  "row_times": [r["sim_time_s"] for r in rows],
                  "label_curve": [(r["sim_time_s"], r["labels"]) for r in rows]}
    else:
        rows, _ = run_inprocess(rc, num_clients, log=log)
        result = {"rows": rows, **replay_sync(rows, cfg, num_clients)}
    result.update({"mode": mode, "seed": seed, "run_config": rc, "timing": TIMING, "num_clients": num_clients,
                   "config_hash": cfg.config_hash(), "wall_s": round(time.perf_counter() - t0, 1)})
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(path)
    return result


# ---------------------------------------------------------------------------------- report
def acc_at_x(xs: list, ys: list, x: float) -> float:
    """A curve's value at ``x``, linearly interpolated between its points (NaN outside)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if not len(xs) or x < xs[0] or x > xs[-1]:
        return math.nan
    return float(np.interp(x, xs, ys))


def ci95(diffs: list) -> tuple[float, float]:
    """The 95% confidence interval of the mean of per-seed differences (Student t, paired by
    seed); NaN with fewer than two seeds."""
    from scipy import stats

    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    if len(d) < 2:
        return (math.nan, math.nan)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return (float(d.mean() - half), float(d.mean() + half))


SUMMARY_KEYS = ("idle_fraction", "idle_fraction_labels_owed", "idle_fraction_waiting_for_grant",
                "idle_fraction_whole_run", "mean_query_latency_s", "max_query_latency_s", "labels_per_hour",
                "labeling_span_s", "paid", "granted", "withdrawn", "wasted_answers", "granted_standing")


def report(out: Path, rep: Path, goals=(0.05, 0.01)) -> dict:
    """Compare every async arm found in ``out`` with sync, seed by seed (only seeds that have
    both); the goals of the issue are read on the ``async`` arm (same query measure as sync)."""
    from fedal.config import Config

    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))]
    for r in runs:
        cfg = Config.from_run_config({**r["run_config"], **r["timing"]})
        if r["mode"] == "sync":  # the sync timeline is replayed from the rows each time (deterministic, seconds)
            r.update(replay_sync(r["rows"], cfg, r["num_clients"]))
        r["fl_rounds"] = fl_rounds_trained(r["rows"], cfg)
    by = {(r["mode"], r["seed"]): r for r in runs}
    arms = [m for m in ASYNC_ARMS if any(k[0] == m and ("sync", k[1]) in by for k in by)]
    if not arms:
        raise SystemExit(f"no seed with a sync run and an async run in {out}")
    rep.mkdir(parents=True, exist_ok=True)
    def mean(xs) -> float:
        v = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
        return float(np.mean(v)) if v else math.nan
    result = {"arms": {}, "num_clients": None}
    for arm in arms:
        seeds = sorted(s for m, s in by if m == arm and ("sync", s) in by)
        per_seed, by_labels, by_rounds = {}, [], []
        for s in seeds:
            sy, asy = by["sync", s], by[arm, s]
            ax_l = [x["labels"] for x in asy["rows"]]
            ax_a = [x["accuracy"] for x in asy["rows"]]
            cmp_l, cmp_r = [], []
            for row, fr in zip(sy["rows"], sy["fl_rounds"]):
                a = acc_at_x(ax_l, ax_a, row["labels"])
                cmp_l.append({"labels": row["labels"], "sync": row["accuracy"], "async": a,
                              "diff_points": 100 * (a - row["accuracy"]) if not math.isnan(a) else math.nan})
                b = acc_at_x(asy["fl_rounds"], ax_a, fr)
                cmp_r.append({"fl_rounds": fr, "labels_sync": row["labels"], "sync": row["accuracy"], "async": b,
                              "labels_async": acc_at_x(asy["fl_rounds"], ax_l, fr),
                              "diff_points": 100 * (b - row["accuracy"]) if not math.isnan(b) else math.nan})
            by_labels.append(cmp_l)
            by_rounds.append(cmp_r)
            per_seed[s] = {"sync": sy["summary"], "async": asy["summary"],
                           "sim_time_end_s": {"sync": sy["row_times"][-1], "async": asy["row_times"][-1]},
                           "fl_rounds_total": {"sync": sy["fl_rounds"][-1], "async": asy["fl_rounds"][-1]},
                           "accuracy_at_labels": cmp_l, "accuracy_at_fl_rounds": cmp_r,
                           "wall_s": {"sync": sy["wall_s"], "async": asy["wall_s"]}}
        agg = {m: {k: mean([per_seed[s][m].get(k, math.nan) for s in seeds]) for k in SUMMARY_KEYS}
               for m in ("sync", "async")}
        n = min(len(t) for t in by_labels)
        diffs = [mean([t[j]["diff_points"] for t in by_labels]) for j in range(n)]
        diffs_r = [mean([t[j]["diff_points"] for t in by_rounds]) for j in range(n)]
        ci = [ci95([t[j]["diff_points"] for t in by_labels]) for j in range(n)]
        worst = float(np.nanmin(diffs)) if diffs else math.nan
        ratio = agg["async"]["idle_fraction"] / agg["sync"]["idle_fraction"] if agg["sync"]["idle_fraction"] else math.nan
        result["arms"][arm] = {
            "seeds": seeds, "per_seed": per_seed, "mean": agg, "accuracy_diff_points_by_row": diffs,
            "accuracy_diff_ci95_by_row": ci,
            "accuracy_diff_points_at_equal_fl_rounds": diffs_r, "idle_ratio_async_over_sync": ratio,
            "worst_accuracy_diff_points": worst,
            "goals_met": {"idle_async_le_5pct_of_sync": bool(ratio <= goals[0]),
                          "accuracy_within_1_point_at_equal_labels": bool(worst >= -100 * goals[1])},
            "run_config": {"sync": by["sync", seeds[0]]["run_config"], "async": by[arm, seeds[0]]["run_config"]}}
        result.update({"timing": by["sync", seeds[0]]["timing"], "num_clients": by["sync", seeds[0]]["num_clients"],
                       "al_rounds": len(by["sync", seeds[0]]["rows"]) - 1})
    main_arm = "async" if "async" in result["arms"] else arms[0]
    result["goals_arm"] = main_arm
    result["goals_met"] = result["arms"][main_arm]["goals_met"]
    (rep / "report.json").write_text(json.dumps(result, indent=1, default=float))
    _plots(by, arms, rep)
    _markdown(result, rep)
    return result


COLORS = {"sync": "black", "async": "tab:blue", "async-mix": "tab:orange", "async-standing": "tab:green"}


def _plots(by: dict, arms: list[str], rep: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    modes = ["sync", *arms]
    seeds = sorted({s for m, s in by if m in modes})
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
    for (m, s), r in sorted(by.items()):
        if m not in modes:
            continue
        ls = "-" if s == seeds[0] else "--"
        acc = [x["accuracy"] for x in r["rows"]]
        kw = dict(marker=".", color=COLORS[m], label=f"{m} s{s}")
        ax[0].plot([x["labels"] for x in r["rows"]], acc, ls, **kw)
        ax[1].plot(r["fl_rounds"], acc, ls, **kw)
        ax[2].plot(np.asarray(r["row_times"]) / 3600, acc, ls, **kw)
    ax[0].set(xlabel="labels paid (trained on)", ylabel="test accuracy", title="accuracy vs labels")
    ax[1].set(xlabel="FL rounds trained", ylabel="test accuracy", title="accuracy vs training (FL rounds)")
    ax[2].set(xlabel="simulated wall clock (h)", ylabel="test accuracy", title="accuracy vs simulated time")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(rep / "accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for i, (key, title) in enumerate((("idle_fraction", "annotator idle fraction"),
                                      ("mean_query_latency_s", "mean query latency (s)"),
                                      ("labels_per_hour", "labels per hour (federation)"))):
        for j, m in enumerate(modes):
            vals = [by[m, s]["summary"][key] for s in seeds if (m, s) in by]
            ax[i].bar(j, np.mean(vals), color=COLORS[m], alpha=0.8)
            ax[i].scatter([j] * len(vals), vals, color="red", zorder=3, s=12)
        ax[i].set_xticks(range(len(modes)), modes)
        ax[i].set_title(title)
        ax[i].grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(rep / "labeling.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (m, s), r in sorted(by.items()):
        if m not in modes:
            continue
        t, n = zip(*r["label_curve"])
        ax.plot(np.asarray(t) / 3600, n, "-" if s == seeds[0] else "--", color=COLORS[m], label=f"{m} s{s}",
                drawstyle="steps-post" if m == "sync" else "default")
    ax.set(xlabel="simulated wall clock (h)", ylabel="labels", title="labels vs simulated time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(rep / "labels_vs_time.png", dpi=120)
    plt.close(fig)


def _markdown(res: dict, rep: Path) -> None:
    t = res["timing"]
    arms = list(res["arms"])
    first = res["arms"][arms[0]]
    rc = first["run_config"]["sync"]
    seeds_all = sorted({s for a in arms for s in res["arms"][a]["seeds"]})
    lines = [
        "# Synchronous vs asynchronous labeling (issue #14, SPEC §6)", "",
        f"MNIST-1D, Dirichlet α = 0.1, {res['num_clients']} clients, client strategy diffusion, warm start; "
        f"seeds {', '.join(map(str, seeds_all))}; {res['al_rounds']} AL rounds. "
        f"Budgets: {rc.get('init-clients', 5)} initial clients × {rc.get('init-points', 200)}, then "
        f"{rc.get('clients-per-round', 5)} clients × {rc.get('points-per-client', 200)} per AL round. "
        "Engine: in-process (`simulations/inprocess.py`).", "",
        "**Arms**: `sync` (the paper's loop, points by entropy); `async` (labeling = async, one query "
        "measure, entropy: only the timing of labels differs from sync); `async-mix` (AAL's three "
        "workers per site: entropy, least confidence, margin); `async-standing` (as `async`, with "
        "async-budget = standing: a site once granted budget keeps a standing share, topped up from the "
        "run's remaining budget whenever it runs low, so its annotators do not wait for selection to pick "
        "it again; selection grants what is left). The goals are read on `async` (the paper's budget "
        "rule: every label granted by client selection) and on `async-standing`.", "",
        "**Clock**: simulated and deterministic. One FL round of training advances it by "
        f"{t['sim-fl-round-s']:g} s, the probe + client selection of an AL round by {t['sim-select-s']:g} s; "
        f"{t['annotators-per-site']} simulated annotators per site label on the same clock, "
        f"{t['annotator-latency']} seconds per label. Why simulated: the machine is shared (measured "
        "durations would vary run to run), and a label takes seconds of a person's time, which only a "
        "simulated clock can run through in minutes. Sync: the annotators idle while the server trains "
        "and selects, and the server waits for the round's last label. Async: both proceed "
        f"(query pool refilled below {t['query-pool-low']} open queries with {t['query-pool-refill']} new ones). "
        "Label noise 0 in every arm (the sync loop's oracle is exact).", "",
        "Command: `python -m simulations.async_labeling --seeds " + " ".join(map(str, seeds_all))
        + f" --clients {res['num_clients']} --al-rounds {res['al_rounds']}`"
        " (runs in `results/async-labeling/`, one JSON per arm and seed; a finished run is not rerun)"
        + "".join(f"; `{a}`: `python -m simulations.async_labeling --seeds "
                  + " ".join(map(str, res["arms"][a]["seeds"])) + f" --modes {a}`" for a in arms if a != "async")
        + ".", "",
        "**Idle fraction**: annotator seconds without a query in hand / annotator seconds, counted per "
        "site from its first grant of budget to its last paid label (an annotator of a site that is never "
        "chosen, or whose labeling is over, is not counted as idle). Query latency: from a label submitted "
        "to the next query in hand. Labels per hour: paid labels / (last label − first grant).", ""]
    cols = ["sync", *arms]
    means = {"sync": first["mean"]["sync"], **{a: res["arms"][a]["mean"]["async"] for a in arms}}
    f4 = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    n_seeds = {"sync": len(first["seeds"]), **{a: len(res["arms"][a]["seeds"]) for a in arms}}
    lines += ["| measure (mean over seeds) | " + " | ".join(f"{c} ({n_seeds[c]} seeds)" for c in cols) + " |",
              "|---|" + "---:|" * len(cols)]
    for key, name, fmt in (("idle_fraction", "annotator idle fraction", f4),
                           ("idle_fraction_labels_owed", "… of which the pool was empty while labels were owed", f4),
                           ("idle_fraction_waiting_for_grant", "… of which the site's budget was spent, waiting for its next grant", f4),
                           ("idle_fraction_whole_run", "idle fraction, whole run, all annotators of granted sites", f4),
                           ("mean_query_latency_s", "mean query latency (s)", lambda v: f"{v:.1f}"),
                           ("max_query_latency_s", "max query latency (s)", lambda v: f"{v:.0f}"),
                           ("labels_per_hour", "labels per hour", lambda v: f"{v:.0f}"),
                           ("labeling_span_s", "labeling span (h)", lambda v: f"{v / 3600:.2f}"),
                           ("paid", "labels paid", lambda v: f"{v:.0f}"),
                           ("granted_standing", "… of which granted by the standing share, not by selection",
                            lambda v: "0" if math.isnan(v) else f"{v:.0f}"),
                           ("withdrawn", "queries withdrawn unpaid", lambda v: f"{v:.0f}")):
        lines.append(f"| {name} | " + " | ".join(fmt(means[c].get(key, math.nan)) for c in cols) + " |")
    lines.append("")
    for arm in arms:
        a = res["arms"][arm]
        seeds = a["seeds"]
        ps = a["per_seed"].__getitem__  # by seed (ints: the result is written to JSON after)
        lines += [f"## `{arm}` vs `sync`", "",
                  f"Accuracy at the sync rows' label counts (`{arm}` interpolated between its rows; "
                  "points = 100 × difference):", "",
                  "| labels | " + " | ".join(f"sync s{x} | {arm} s{x}" for x in seeds)
                  + " | mean diff (points) | 95% CI (paired t) |",
                  "|---:|" + "---:|" * (2 * len(seeds) + 2)]
        for j, d in enumerate(a["accuracy_diff_points_by_row"]):
            cells = []
            for x in seeds:
                c = ps(x)["accuracy_at_labels"][j]
                cells += [f"{c['sync']:.4f}", f4(c["async"])]
            lo, hi = a["accuracy_diff_ci95_by_row"][j]
            band = "—" if math.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]"
            lines.append(f"| {ps(seeds[0])['accuracy_at_labels'][j]['labels']} | " + " | ".join(cells)
                         + f" | {d:+.2f} | {band} |")
        lines += ["", f"Accuracy at equal training: at the sync rows' cumulative FL rounds (labels the `{arm}` "
                  "model had then, mean over seeds, in brackets):", "",
                  "| FL rounds | sync labels | " + " | ".join(f"sync s{x} | {arm} s{x}" for x in seeds)
                  + " | mean diff (points) |", "|---:|---:|" + "---:|" * (2 * len(seeds) + 1)]
        for j, d in enumerate(a["accuracy_diff_points_at_equal_fl_rounds"]):
            cells = []
            for x in seeds:
                c = ps(x)["accuracy_at_fl_rounds"][j]
                cells += [f"{c['sync']:.4f}", f4(c["async"])]
            c0 = ps(seeds[0])["accuracy_at_fl_rounds"][j]
            la = np.nanmean([ps(x)["accuracy_at_fl_rounds"][j]["labels_async"] for x in seeds])
            lines.append(f"| {c0['fl_rounds']} | {c0['labels_sync']} ({la:.0f}) | " + " | ".join(cells) + f" | {d:+.2f} |")
        tot = {m: np.mean([ps(x)["fl_rounds_total"][m] for x in seeds]) for m in ("sync", "async")}
        lines += ["", f"FL rounds trained in the whole run (mean): sync {tot['sync']:.0f}, {arm} {tot['async']:.0f}.", ""]
    lines += ["## Goals", "", "| arm | idle ratio (arm / sync) | ≤ 0.05? | worst mean accuracy difference at equal "
              "labels (points) | within 1 point? |", "|---|---:|---|---:|---|"]
    for arm in [x for x in ("async", "async-standing") if x in res["arms"]] or [res["goals_arm"]]:
        a = res["arms"][arm]
        g = a["goals_met"]
        lines.append(f"| `{arm}` | {a['idle_ratio_async_over_sync']:.3f} | "
                     f"{'met' if g['idle_async_le_5pct_of_sync'] else 'NOT met'} | "
                     f"{a['worst_accuracy_diff_points']:+.2f} | "
                     f"{'met' if g['accuracy_within_1_point_at_equal_labels'] else 'NOT met'} |")
    lines += ["",
              "Figures: `accuracy.png` (accuracy vs labels, vs FL rounds trained and vs simulated time), "
              "`labeling.png` (idle fraction, query latency, labels per hour), `labels_vs_time.png`. Raw: "
              "`report.json`, `results/async-labeling/*.json`. What was run, the goals and why: `notes.md`."]
    (rep / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--al-rounds", type=int, default=11)
    ap.add_argument("--modes", nargs="+", default=["sync", "async"], choices=list(MODES),
                    help="arms to run (default: sync, async; async-mix is AAL's three workers)")
    ap.add_argument("--out", default=str(ROOT / "results" / "async-labeling"))
    ap.add_argument("--report-dir", default=str(ROOT / "reports" / "async-labeling"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra run-config keys")
    args = ap.parse_args(argv)
    out, rep = Path(args.out), Path(args.report_dir)
    extra = {"al-rounds": args.al_rounds}
    for kv in args.set:
        k, _, v = kv.partition("=")
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" else v
    if not args.report_only:
        from fedal.client import configure_threads

        configure_threads()
        for seed in args.seeds:
            for mode in args.modes:
                t0 = time.perf_counter()
                r = run_one(mode, seed, args.clients, extra, out, log=lambda m: print(m, flush=True))
                print(f"== {mode} seed {seed}: final acc {r['rows'][-1]['accuracy']:.4f}, "
                      f"idle {r['summary']['idle_fraction']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    res = report(out, rep)
    print(json.dumps({arm: {"mean": a["mean"], "goals_met": a["goals_met"],
                            "worst_accuracy_diff_points": a["worst_accuracy_diff_points"]}
                      for arm, a in res["arms"].items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
