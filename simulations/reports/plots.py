"""The report's figures (matplotlib, Agg backend: reports run headless)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from simulations.reports.load import _ordered_groups
from simulations.reports.stats import ImbalanceCell, Improvement, Table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def group_colors(groups: Sequence[str], baseline: str | None) -> dict[str, object]:
    """One colour per group, the same in every figure: baseline black, others tab10 in order."""
    plt = _pyplot()
    palette = plt.get_cmap("tab10").colors
    others = [g for g in groups if g != baseline]
    colors: dict[str, object] = {g: palette[i % len(palette)] for i, g in enumerate(others)}
    if baseline in groups:
        colors[baseline] = "black"
    return colors


_RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11}


def plot_accuracy(
    table: Table,
    improvements: Mapping[str, Mapping[int, Improvement]] | None,
    baseline: str | None,
    path: Path,
    title: str = "",
) -> Path:
    """Figure 3 layout: mean accuracy vs #labels (left), improvement over the baseline (right)."""
    plt = _pyplot()
    groups = _ordered_groups(table, baseline)
    colors = group_colors(groups, baseline)
    ncols = 2 if improvements is not None else 1
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5.0), squeeze=False)
        ax = axes[0, 0]
        for g in groups:
            cells = table[g]
            x = np.array(sorted(cells))
            m = np.array([cells[b].mean for b in x]) * 100
            s = np.array([cells[b].std for b in x]) * 100
            ax.plot(x, m, marker="o", ms=4, lw=2, color=colors[g], label=g)
            ax.fill_between(x, m - s, m + s, color=colors[g], alpha=0.12, lw=0)
        ax.set_xlabel("Number of labels")
        ax.set_ylabel("Test accuracy (%)")
        ax.set_title("Mean accuracy (±1 std over seeds)")
        ax.grid(alpha=0.3)
        notes = []
        if improvements is not None:
            ax = axes[0, 1]
            ax.axhline(0, color=colors.get(baseline, "black"), lw=1.5, ls="--")
            unpaired = []
            for g in groups:
                if g == baseline:
                    continue
                imp = improvements[g]
                x = np.array(sorted(imp))
                if x.size == 0:
                    continue
                m = np.array([imp[b].mean for b in x]) * 100
                s = np.array([imp[b].std for b in x]) * 100
                ax.plot(x, m, marker="o", ms=4, lw=2, color=colors[g])
                ax.fill_between(x, m - s, m + s, color=colors[g], alpha=0.18, lw=0)
                if not all(imp[b].paired for b in x):
                    unpaired.append(g)
            ax.set_xlabel("Number of labels")
            ax.set_ylabel(f"Improvement over {baseline} (% points)")
            ax.set_title(f"Mean improvement over {baseline}")
            ax.grid(alpha=0.3)
            band = "right-panel bands: ±1 std over seeds of the per-seed difference"
            if unpaired:
                band += f"; unpaired seeds ({', '.join(unpaired)}): ±√(s²_method + s²_{baseline}) instead"
            notes.append(band)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        # Legend and band note below both panels (figure fractions of the 5-inch height), so
        # neither hides a curve.
        note_h = 0.045 if notes else 0.0
        per_row = 3 * ncols  # a single panel is too narrow for six legend entries in a row
        rows = 1 + (len(labels) - 1) // per_row
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_h),
                   ncol=min(len(labels), per_row), frameon=False)
        if notes:
            fig.text(0.5, 0.012, "; ".join(notes), ha="center", va="bottom", fontsize=9.5, color="0.3")
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, note_h + 0.075 * rows, 1, 1))
        fig.savefig(path, dpi=130, bbox_inches="tight")  # long titles and legends stay inside
        plt.close(fig)
    return path


def plot_imbalance(imb: Mapping[str, Mapping[int, ImbalanceCell]], baseline: str | None, path: Path, title: str = ""):
    """Mean class-imbalance ratio vs labeled-set size; inf means are drawn as ▲ on the top edge."""
    plt = _pyplot()
    groups = _ordered_groups(imb, baseline)
    colors = group_colors(groups, baseline)
    finite = [c.mean for cells in imb.values() for c in cells.values() if math.isfinite(c.mean)]
    top = max(finite) if finite else 2.0
    log = bool(finite) and top / max(min(finite), 1.0) > 30
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8, 5.6))
        y_inf = top * (1.6 if log else 1.08)
        any_inf = False
        for g in groups:
            cells = imb[g]
            x = np.array(sorted(cells))
            m = np.array([cells[b].mean for b in x])
            fin = np.isfinite(m)
            ax.plot(x[fin], m[fin], marker="o", ms=4, lw=2, color=colors[g], label=g)
            if (~fin).any():
                any_inf = True
                ax.plot(x[~fin], np.full((~fin).sum(), y_inf), ls="none", marker="^", ms=8, color=colors[g])
        if log:
            ax.set_yscale("log")
        ax.set_ylim(bottom=0.9 if log else 1.0 if finite else 0, top=y_inf * (1.3 if log else 1.05))
        ax.axhline(1.0, color="0.5", lw=1, ls=":")
        ax.set_xlabel("Number of labels (after the round's acquisition)")
        ax.set_ylabel("Imbalance ratio (most / least labeled class)")
        ax.set_title(title or "Class imbalance of the labeled set (mean over seeds)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        note_h = 0.04 if any_inf else 0.0
        ncol = min(len(labels), 4)
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, note_h), ncol=ncol, frameon=False)
        if any_inf:
            fig.text(0.5, 0.012, "▲ on the top edge: ratio = ∞ (some class has no label in ≥ 1 seed)",
                     ha="center", va="bottom", fontsize=9.5, color="0.3")
        fig.tight_layout(rect=(0, note_h + 0.065 * (1 + (len(labels) - 1) // ncol), 1, 1))
        fig.savefig(path, dpi=130, bbox_inches="tight")  # long titles and legends stay inside
        plt.close(fig)
    return path
