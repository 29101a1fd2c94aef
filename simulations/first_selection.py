"""The first selection of a run, over seeds (the reports' "The first selection, per seed").

The first-selection change of a run is its accuracy after the first selected labels minus its
accuracy on the random initial labels (row 1 − row 0; ``simulations/selection_diagnostics.py``
computes it per run). One seed's runs share their initial labels, so methods pair by seed. Issue
#23's goal asks for "no drop at the first selection"; per seed no rule can promise that, random
clients included, so it is judged over seeds: a drop is a mean change significantly below 0
(one-sample t) or significantly below the baseline's on the same seeds (paired t). Beside it the
report counts how often the baseline's accuracy drops between later rounds: the regime's noise.

Runs here are anything with ``seed``, ``first_selection_change`` and ``round_changes``
(``selection_diagnostics.RunDiagnostics``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class FirstSelection:
    """One group's first selections: the change per seed, how many seeds dropped, the change's
    mean over seeds (mean, std, two-sided one-sample t p against 0), the paired difference to the
    baseline over the seeds both have (mean, std, two-sided paired t p; nan without two such
    seeds), and the drops between later rows (row r → r+1, r ≥ 1)."""

    per_seed: tuple[tuple[int, float], ...]
    drops: int
    vs_baseline: tuple[float, float, float, int]
    later_drops: int
    later_steps: int
    worst_later: float
    mean: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    def significant_drops(self, alpha: float = 0.05) -> list[str]:
        """How #23's "no drop at the first selection" is tested over seeds (docs/results.md, "The
        first selection, per seed"): a drop is a mean change significantly below 0, or
        significantly below the baseline's over the same seeds. One seed's drop is not one:
        random clients' own first selection drops in some seeds where accuracy is noisy."""
        out = []
        m, _, p = self.mean
        if m < 0 and p < alpha:
            out.append("below 0")
        m, _, p, _ = self.vs_baseline
        if m < 0 and p < alpha:
            out.append("below the baseline")
        return out


def first_selection_table(per_group: Mapping[str, Sequence],
                          baseline: str | None) -> dict[str, FirstSelection]:
    """Per group, its ``FirstSelection`` (paired against ``baseline``'s runs of the same seeds)."""
    from scipy.stats import ttest_1samp, ttest_rel

    def by_seed(runs):
        return {r.seed: r.first_selection_change for r in runs if not math.isnan(r.first_selection_change)}

    base = by_seed(per_group.get(baseline, ())) if baseline is not None else {}
    out = {}
    for g, runs in per_group.items():
        mine = by_seed(runs)
        seeds = sorted(set(mine) & set(base)) if g != baseline else []
        d = np.array([mine[s] - base[s] for s in seeds])
        if len(d) >= 2:
            p = float(ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds]).pvalue) if d.std() > 0 else math.nan
            paired = (float(d.mean()), float(d.std(ddof=1)), p, len(d))
        else:
            paired = (math.nan, math.nan, math.nan, len(d))
        later = [c for r in runs for c in r.round_changes[1:]]
        v = np.array(list(mine.values()))
        mean = (float(v.mean()), float(v.std(ddof=1)),
                float(ttest_1samp(v, 0.0).pvalue) if v.std() > 0 else math.nan) if len(v) >= 2 else \
            (float(v.mean()) if len(v) else math.nan, math.nan, math.nan)
        out[g] = FirstSelection(per_seed=tuple(sorted(mine.items())), drops=sum(v < 0 for v in mine.values()),
                                vs_baseline=paired, later_drops=sum(c < 0 for c in later), later_steps=len(later),
                                worst_later=min(later) if later else math.nan, mean=mean)
    return out



def first_selection_markdown(per_group: Mapping[str, Sequence], groups: Sequence[str],
                             baseline: str | None) -> list[str]:
    fs = first_selection_table(per_group, baseline)
    vs = f"paired vs {baseline} (points, p)" if baseline is not None else "paired vs baseline"
    lines = ["### The first selection, per seed", "",
             "The accuracy change at the first selection in each seed (points), the seeds where it "
             "drops, its mean over seeds (± std, one-sample t p against 0), the mean paired "
             f"difference to {baseline or 'the baseline'} over the seeds both ran (± std, paired t p), "
             "whether either is a significant drop (α = 0.05), and, as the regime's noise, how often "
             "accuracy drops from one later AL round to the next (rows 1 → 2 onwards) and the largest "
             "such drop.", "",
             f"| method | per seed | drops | mean (points, p) | {vs} | significant drop | later drops "
             "| worst later drop |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for g in groups:
        if g not in fs:
            continue
        f = fs[g]
        seeds = " ".join(f"{100 * v:+.1f}" for _, v in f.per_seed)
        m, sd, p, k = f.vs_baseline
        paired = "—" if math.isnan(m) else (f"{100 * m:+.1f} ± {100 * sd:.1f}"
                                            + ("" if math.isnan(p) else f" (p = {p:.2g})"))
        worst = "—" if math.isnan(f.worst_later) else f"{100 * f.worst_later:+.1f}"
        mm, msd, mp = f.mean
        mean = "—" if math.isnan(mm) else (f"{100 * mm:+.1f}" + ("" if math.isnan(msd) else f" ± {100 * msd:.1f}")
                                           + ("" if math.isnan(mp) else f" (p = {mp:.2g})"))
        drop = ", ".join(d.replace("the baseline", baseline or "the baseline") for d in f.significant_drops()) or "no"
        lines.append(f"| {g} | {seeds} | {f.drops} of {len(f.per_seed)} | {mean} | {paired} | {drop} "
                     f"| {f.later_drops} of {f.later_steps} | {worst} |")
    return lines + [""]


def first_selection_json(per_group: Mapping[str, Sequence], baseline: str | None) -> dict:
    return {g: {"per_seed": {str(s): v for s, v in f.per_seed}, "drops": f.drops,
                "mean": dict(zip(("mean", "std", "p"), f.mean)),
                "vs_baseline": dict(zip(("mean", "std", "p", "seeds"), f.vs_baseline)),
                "significant_drops": f.significant_drops(),
                "later_drops": f.later_drops, "later_steps": f.later_steps, "worst_later": f.worst_later}
            for g, f in first_selection_table(per_group, baseline).items()}
