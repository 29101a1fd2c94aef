"""`python -m simulations.reports RESULTS_ROOT --out OUT_DIR ...`: argument parsing and exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from simulations.reports.load import ReportError
from simulations.reports.markdown import write_report


def _parse_filter(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--filter expects KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def _filters(pairs: list[tuple[str, str]]) -> dict[str, str | tuple[str, ...]]:
    """--filter KEY=VALUE pairs; a key given more than once keeps the runs with any of its values
    (--filter seed=0 --filter seed=1)."""
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return {k: vs[0] if len(vs) == 1 else tuple(vs) for k, vs in out.items()}


def build_parser(prog: str = "python -m simulations.reports") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Tables, significance tests and plots from a results root (never a live run).",
    )
    p.add_argument("root", help="results root: run directories (any depth) with config.json, rounds.jsonl, summary.json")
    p.add_argument("--out", required=True, help="output directory (summary.md, accuracy.png, imbalance.png, report.json)")
    p.add_argument("--baseline", default="Rand",
                   help="group every other group is compared against (default: Rand); 'none' disables comparisons")
    p.add_argument("--group-by", default="method",
                   help="run field (method, suite, seed, config_hash) or run-config key, e.g. training-mode")
    p.add_argument("--title", default=None)
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the t-tests (default 0.05)")
    p.add_argument("--filter", type=_parse_filter, action="append", default=[], metavar="KEY=VALUE",
                   help="keep only runs whose KEY (as for --group-by) equals VALUE; repeatable (a key given "
                        "twice keeps runs with either value)")
    p.add_argument("--speedup-baseline", default=None,
                   help="group whose cumulative training time is the reference of the speedup table, e.g. retrain")
    p.add_argument("--timing", action=argparse.BooleanOptionalAction, default=None,
                   help="force the training-time section on/off (default: on when time_s.train is recorded)")
    p.add_argument("--exclude-initial", action="store_true",
                   help="leave round 0 (initial random labels) out of the significance counts, as in the paper's Table 1")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m simulations.reports") -> int:
    args = build_parser(prog).parse_args(argv)
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1), got {args.alpha}", file=sys.stderr)
        return 2
    baseline = None if args.baseline.lower() in ("none", "") else args.baseline
    try:
        path = write_report(
            args.root,
            args.out,
            baseline=baseline,
            group_by=args.group_by,
            title=args.title,
            alpha=args.alpha,
            filters=_filters(args.filter),
            speedup_baseline=args.speedup_baseline,
            timing=args.timing,
            exclude_initial=args.exclude_initial,
        )
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
