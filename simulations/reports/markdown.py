"""Rendering a report: summary.md (tables and the command that regenerates it), the figures and
report.json in the output directory."""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from simulations.reports.load import ReportError, Run, _ordered_groups, filter_runs, group_runs, load_results, require_group
from simulations.reports.stats import (Table, accuracy_table, budgets, count_significance, duplicate_seeds,
                                        has_train_times, imbalance_ratios, improvement, improvement_over,
                                        matched_speedups, mixed_config_keys, phase_totals, significance_table,
                                        speedups, training_times)
from simulations.reports.plots import group_colors, plot_accuracy, plot_imbalance


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f}"


def _mean_std_pct(mean: float, std: float) -> str:
    return _pct(mean) if math.isnan(std) else f"{_pct(mean)} ± {_pct(std)}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(x: float) -> str:
    if math.isnan(x):
        return "—"
    return "inf" if math.isinf(x) else f"{x:.2f}"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _fmt_secs(s: float) -> str:
    if math.isnan(s):
        return "—"
    return f"{s:.0f} s" if s >= 100 else f"{s:.1f} s" if s >= 1 else f"{s:.3f} s"


def _counts(better: int, worse: int) -> str:
    """Table 1's "better / -worse" cell: "11 / 0", "1 / -5"."""
    return f"{better} / {-worse}"


_SIGN = {"better": "+", "worse": "−", "tie": "·", "n/a": "n/a"}


def _shell_command() -> str:
    """The command line that ran this process, with a `cd` when not run from the repository root
    (relative paths in it are relative to the working directory)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    cmd = shlex.join(argv)
    cwd = Path.cwd()
    if cwd != Path(__file__).resolve().parents[2]:  # simulations/reports/markdown.py -> repository root
        cmd = f"cd {shlex.quote(str(cwd))} && {cmd}"
    return cmd


def _alignment_section(runs: Sequence[Run], group_by: str, groups: Sequence[str], baseline: str | None,
                       out: Path, data: dict) -> list[str]:
    """The "Client-geometry alignment" section (and alignment.png, data["alignment"]) when some
    run recorded its client graph distances (q.npz, diffusion client selection); else nothing."""
    from simulations import alignment as A

    if not any(A.has_q(r) for r in runs):
        return []
    try:
        table = A.alignment_table(runs, group_by)
    except ValueError as e:
        raise ReportError(f"client-geometry alignment: {e}") from e
    A.plot_alignment(table, out / "alignment.png", group_colors(groups, baseline))
    data["alignment"] = A.table_json(table)
    return A.report_markdown(table, groups, group_by)


def _diagnostics_section(runs: Sequence[Run], group_by: str, groups: Sequence[str], out: Path,
                         data: dict, baseline: str | None = None) -> list[str]:
    """The "Selection diagnostics" section and client_graph.png when the runs are simulations
    whose partitions the simulator can rebuild (their config names dataset and partition) and
    some run chose clients; else nothing (simulations/selection_diagnostics.py)."""
    from simulations import selection_diagnostics as D

    sims = [r for r in runs if "dataset" in r.config and "partition" in r.config
            and any(x.chosen_clients for x in r.rounds)]
    if not sims:
        return []
    cache: dict = {}
    try:
        per = D.collect(sims, group_by, cache)
        D.write_graph_figure(sims, group_by, groups, out, cache=cache)
    except (ValueError, OSError) as e:
        raise ReportError(f"selection diagnostics: {e}") from e
    data["selection_diagnostics"] = D.table_json(per)
    data["first_selection"] = D.first_selection_json(per, baseline)
    return D.report_markdown(per, [g for g in groups if g in per], baseline) + [
        "![Client graph of the first selection, per method](client_graph.png)", ""]


def _environment_lines(runs: Sequence[Run], group_by: str, data: dict) -> list[str]:
    """Which numerics the runs computed on (fedal/numerics.py's golden hash): runs of one seed
    agree to the bit only on one golden, so a reader should know when a table spans several."""
    from simulations.run_index import NOT_RECORDED  # the key compare's check uses too

    envs: dict[str, dict] = {}
    # One golden can be computed on several CPU models (that is what portable numerics is for):
    # name them all (sorted), not just the first run's.
    cpus: dict[str, set[str]] = defaultdict(set)
    per_group: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in runs:
        key = str(r.environment.get("golden", NOT_RECORDED))
        envs.setdefault(key, dict(r.environment))
        cpus[key].add(str(r.environment.get("cpu", "?")))
        per_group[r.group(group_by)][key] += 1
    data["environments"] = {k: {**e, "cpus": sorted(cpus[k]) if e else [],
                                "runs": sum(g.get(k, 0) for g in per_group.values())} for k, e in envs.items()}

    def name(k: str) -> str:
        e = envs[k]
        return (f"golden `{k}` ({', '.join(data['environments'][k]['cpus'])}, {e.get('cpu_capability', '?')} kernels, numerics = "
                f"{e.get('numerics', '?')})" if e else "numerics not recorded (runs made before fedal recorded them)")

    if len(envs) == 1:
        return [f"Numerics: every run here, {name(next(iter(envs)))}.", ""]
    lines = [f"Numerics: these runs span {len(envs)} environments; a seed gives the same bits only within one:"]
    for g, counts in per_group.items():
        lines.append(f"- {g}: " + "; ".join(f"{n} on {name(k)}" for k, n in counts.items()))
    return lines + [""]


NULL_MIN_SEEDS = 6  # three against three at least; with 5, a 2-against-3 split says little


def _null_section(sig_table: Table, baseline: str, alpha: float, data: dict) -> list[str]:
    """"<baseline> against itself" (simulations/reports/null.py) when the baseline has enough seeds."""
    from simulations.reports.null import baseline_against_itself, common_seeds, null_json, null_markdown

    if len(common_seeds(sig_table, baseline)) < NULL_MIN_SEEDS:
        return []
    nc = baseline_against_itself(sig_table, baseline, alpha=alpha)
    data["baseline_against_itself"] = null_json(nc)
    return null_markdown(nc, baseline, alpha)


def write_report(
    root: str | Path,
    out: str | Path,
    *,
    baseline: str | None = "Rand",
    group_by: str = "method",
    title: str | None = None,
    alpha: float = 0.05,
    filters: Mapping[str, str] | None = None,
    speedup_baseline: str | None = None,
    timing: bool | None = None,
    exclude_initial: bool = False,
    command: str | None = None,
) -> Path:
    """Write summary.md, accuracy.png, imbalance.png (when labeled_per_class is present) and
    report.json into `out`; returns the path of summary.md.

    baseline None disables the improvement and significance sections. exclude_initial drops
    round 0 from the significance counts only (tables and plots keep it). timing None: the timing
    section is written when every round has time_s.train or a speedup baseline is given.
    """
    results = load_results(root)
    runs = filter_runs(results.runs, filters)
    if not runs:
        what = f" matching {dict(filters)}" if filters else ""
        raise ReportError(
            f"results root {results.root} has no completed runs{what} "
            f"({len(results.runs)} completed, {len(results.skipped)} incomplete skipped)"
        )
    table = accuracy_table(runs, group_by)
    if baseline is not None:
        require_group(table, baseline, "baseline", group_by)
    if speedup_baseline is not None:
        require_group(table, speedup_baseline, "speedup baseline", group_by)
    if timing is None:
        timing = speedup_baseline is not None or has_train_times(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Results: {results.root.name}"
    groups = _ordered_groups(table, baseline)
    bs = budgets(table)
    data: dict[str, object] = {"title": title, "group_by": group_by, "baseline": baseline, "alpha": alpha}

    md = [f"# {title}", ""]
    md += ["Regenerate with:", "", "```", command or _shell_command(), "```", ""]
    # Runs per group, skipped incomplete runs.
    by_group = group_runs(runs, group_by)
    skipped_by: dict[str, int] = defaultdict(int)
    for s in results.skipped:
        skipped_by[s.method or "?"] += 1
    md += ["## Runs", ""]
    if filters:
        md += ["Filter: " + ", ".join(f"`{k}={v}`" if isinstance(v, str) else f"`{k}` one of " + ", ".join(
            f"`{x}`" for x in v) for k, v in filters.items()), ""]
    md.append(
        _md_table(
            [group_by, "completed runs", "seeds"],
            [[g, len(by_group[g]), ", ".join(str(s) for s in sorted({r.seed for r in by_group[g]}))] for g in groups],
        )
    )
    md.append("")
    if results.skipped:
        detail = ", ".join(f"{m}: {n}" for m, n in sorted(skipped_by.items()))
        md += [f"Skipped {len(results.skipped)} incomplete run(s) (no completed summary.json) — by method: {detail}.", ""]
    else:
        md += ["Skipped 0 incomplete runs.", ""]
    mixed = mixed_config_keys(runs, group_by)
    for g, keys in mixed.items():
        md.append(f"- Note: group **{g}** pools runs that differ in {', '.join(f'`{k}`' for k in keys)}; "
                  "use `--filter KEY=VALUE` to separate them.")
    for g, seeds in duplicate_seeds(runs, group_by).items():
        md.append(f"- Note: group **{g}** has several runs with seed(s) {seeds}; all are used as samples, "
                  "and its seeds are treated as unpaired.")
    if mixed or duplicate_seeds(runs, group_by):
        md.append("")
    md += _environment_lines(runs, group_by, data)

    # Accuracy.
    imps = improvement_over(table, baseline) if baseline is not None else None
    plot_accuracy(table, imps, baseline, out / "accuracy.png", title)
    md += ["## Accuracy", "", "![Accuracy and improvement over the baseline](accuracy.png)", ""]
    md += [
        f"Test accuracy (%) by number of labels: mean ± sample std (ddof=1) over seeds; best mean per budget "
        f"in **bold**; (n=k) marks a cell with fewer runs than its group.",
        "",
    ]
    best = {b: max((table[g][b].mean for g in groups if b in table[g]), default=math.nan) for b in bs}
    rows = []
    for g in groups:
        row = [g]
        for b in bs:
            c = table[g].get(b)
            if c is None:
                row.append("—")
                continue
            s = _mean_std_pct(c.mean, c.std)
            if c.mean == best[b]:
                s = f"**{s}**"
            if c.n < len(by_group[g]):
                s += f" (n={c.n})"
            row.append(s)
        rows.append(row)
    md += [_md_table([group_by, *map(str, bs)], rows), ""]
    data["accuracy"] = {g: {b: asdict(c) | {"mean": c.mean, "std": c.std} for b, c in cells.items()} for g, cells in table.items()}

    if baseline is not None:
        md += [f"### Improvement over {baseline} (% points)", ""]
        md += [
            "Mean of (group − baseline) accuracy. ± is the sample std over seeds of the per-seed difference "
            "where seeds pair up (same seeds in both groups); cells marked † have unpaired seeds and show "
            "√(s²_group + s²_baseline) instead.",
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline:
                continue
            row = [g]
            for b in bs:
                i = imps[g].get(b)
                row.append("—" if i is None else _mean_std_pct(i.mean, i.std) + ("" if i.paired else " †"))
            rows.append(row)
        md += [_md_table([group_by, *map(str, bs)], rows), ""]
        data["improvement"] = {g: {b: asdict(i) for b, i in v.items()} for g, v in imps.items()}

        # Significance (Table 1).
        sig_table = accuracy_table(runs, group_by, from_round=1) if exclude_initial else table
        # A group with nothing beyond round 0 simply has no row (the baseline too: empty table).
        sig = significance_table(sig_table, baseline, alpha) if baseline in sig_table else {}
        counts = {g: count_significance(c) for g, c in sig.items()}
        md += [f"## Significance vs {baseline}", ""]
        md += [
            f"Number of label budgets at which each {group_by} is significantly **better** (+) / **worse** (−) "
            f"than {baseline}: Student's two-sample t-test over seeds (`scipy.stats.ttest_ind`, equal variances, "
            f"two-sided, α = {alpha:g}; direction from the mean difference) — the test of the paper's Table 1. "
            f"Budgets where either side has fewer than 2 seeds are counted as n/a, not as ties. "
            f"The last column is an extra paired t-test (`scipy.stats.ttest_rel`), run only at budgets where "
            f"the seeds pair up. "
            + ("Where one side ran more seeds than the other, it pairs the seeds both ran (their number follows "
               "the count). " if any(c.paired_partial for c in counts.values()) else "")
            + ("The initial budget (round 0, random labels before any selection) is excluded."
               if exclude_initial else "Every budget counts, including round 0 (the initial random labels)."),
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline or g not in sig:
                continue
            c = counts[g]
            paired = f"{_counts(c.paired_better, c.paired_worse)} (of {c.paired_tested})" if c.paired_tested else "seeds not paired"
            if c.paired_partial:
                paired += f", {'–'.join(map(str, c.paired_seeds))} common seeds"
            rows.append([g, _counts(c.better, c.worse), c.ties, c.na, c.tested + c.na, paired])
        md += [
            _md_table(
                [group_by, "Student t: better / worse", "ties", "n/a", "budgets", "paired t (ttest_rel): better / worse"],
                rows,
            ),
            "",
        ]
        md += [
            f"Per budget (Student's t-test): + better, − worse, · not significant, n/a untestable; p-value in brackets.",
            "",
        ]
        rows = []
        for g in groups:
            if g == baseline or g not in sig:
                continue
            rows.append([g] + [
                "—" if b not in sig[g] else
                (_SIGN[sig[g][b].verdict] + ("" if sig[g][b].verdict == "n/a" else f" ({_p(sig[g][b].p)})"))
                for b in budgets(sig_table)
            ])
        md += [_md_table([group_by, *map(str, budgets(sig_table))], rows), ""]
        md += _null_section(sig_table, baseline, alpha, data)
        data["significance"] = {
            g: {"counts": asdict(counts[g]), "per_budget": {b: asdict(c) for b, c in sig[g].items()}} for g in sig
        }

    # Class imbalance.
    imb = imbalance_ratios(runs, group_by)
    if imb:
        plot_imbalance(imb, baseline, out / "imbalance.png", f"Class imbalance of the labeled set — {title}")
        sizes = sorted({b for cells in imb.values() for b in cells})
        md += ["## Class imbalance of the labeled set", "", "![Class-imbalance ratio](imbalance.png)", ""]
        md += [
            "Imbalance ratio = labels of the most labeled class / labels of the least labeled class "
            "(cumulative `labeled_per_class` after each round's acquisition; columns are the labeled-set size), "
            "mean over seeds. `inf` when some class has no label in at least one seed; then [z] is the mean "
            "number of classes with zero labels.",
            "",
        ]
        rows = []
        for g in _ordered_groups(imb, baseline):
            row = [g]
            for b in sizes:
                c = imb[g].get(b)
                if c is None:
                    row.append("—")
                elif math.isinf(c.mean):
                    row.append(f"inf [{c.mean_zero_classes:g}]")
                else:
                    row.append(_ratio(c.mean) if math.isnan(c.std) else f"{_ratio(c.mean)} ± {c.std:.2f}")
            rows.append(row)
        md += [_md_table([group_by, *map(str, sizes)], rows), ""]
        data["imbalance"] = {
            g: {b: asdict(c) | {"mean": c.mean, "mean_zero_classes": c.mean_zero_classes} for b, c in v.items()}
            for g, v in imb.items()
        }

    # Training time and speedup.
    if timing:
        times = training_times(runs, group_by)
        md += ["## Training time", ""]
        sp = speedups(times, speedup_baseline) if speedup_baseline is not None else None
        expl = "Cumulative training time (sum of `time_s.train` up to the round that evaluated each budget), mean over seeds"
        if sp is not None:
            expl += f"; in brackets the speedup = time of {speedup_baseline} / time of the {group_by}"
        md += [expl + ".", ""]
        rows = []
        for g in groups:
            row = [g]
            for b in bs:
                c = times[g].get(b)
                if c is None:
                    row.append("—")
                    continue
                s = _fmt_secs(c.mean)
                if sp is not None and b in sp[g]:
                    s += f" (×{sp[g][b]:.2f})"
                row.append(s)
            rows.append(row)
        md += [_md_table([group_by, *map(str, bs)], rows), ""]
        if speedup_baseline is not None:
            ms = matched_speedups(table, times, speedup_baseline)
            tgt = ms[speedup_baseline].target
            md += [f"Speedup at matched accuracy (SPEC §6): training time until the mean accuracy first reaches "
                   f"{speedup_baseline}'s final mean accuracy ({100 * tgt:.2f}%), and {speedup_baseline}'s time "
                   f"to reach it / that time.", ""]
            mrows = [[g, str(m.budget) if m.budget is not None else "not reached",
                      _fmt_secs(m.time_s) if m.time_s is not None else "—",
                      f"×{m.speedup:.2f}" if m.speedup is not None else "—"] for g, m in ((g, ms[g]) for g in groups)]
            md += [_md_table([group_by, "labels", "training time", "speedup"], mrows), ""]
            data["matched_speedup"] = {g: asdict(m) for g, m in ms.items()}
        totals = phase_totals(runs, group_by)
        phases = sorted({k for t in totals.values() for k in t})
        if phases:
            md += ["Total time per phase (mean over runs):", ""]
            md += [_md_table([group_by, *phases], [[g] + [_fmt_secs(totals[g].get(k, math.nan)) for k in phases] for g in groups]), ""]
        data["training_time"] = {g: {b: asdict(c) | {"mean": c.mean} for b, c in v.items()} for g, v in times.items()}
        if sp is not None:
            data["speedup"] = sp
        data["phase_totals"] = totals

    md += _diagnostics_section(runs, group_by, groups, out, data, baseline)
    md += _alignment_section(runs, group_by, groups, baseline, out, data)

    data["runs"] = {g: [str(r.path) for r in rs] for g, rs in by_group.items()}
    data["skipped"] = [str(s.path) for s in results.skipped]
    (out / "report.json").write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=True) + "\n")
    path = out / "summary.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
