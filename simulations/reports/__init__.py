"""Reports over finished experiment results: tables, significance tests and plots.

Everything here reads results *files* written by the experiment runner (never a live run), so a
report can be regenerated at any time from a results root:

    .venv/bin/python -m simulations.reports RESULTS_ROOT --out OUT_DIR [--baseline Rand]
        [--group-by method] [--title ...] [--alpha 0.05] [--filter dataset=cifar10 ...]
        [--speedup-baseline retrain] [--timing]

Results schema (one run directory per (config, seed), at any depth below the root):
  config.json   {"method", "suite", "seed", "config_hash", "config": {kebab-case keys}}
  rounds.jsonl  one row per AL round r = 0..R: {"round", "labels", "accuracy", "chosen_clients",
                "acquired", "acquired_per_class", "labeled_per_class", "time_s": {...}}
  summary.json  {"completed": true, ...}; absent while the run is unfinished.
  q.npz         optional (diffusion client selection): the client graph's distances per AL round;
                adds a "Client-geometry alignment" section and alignment.png (simulations/alignment.py).

What is computed, and the paper it mirrors:
  * accuracy per group x label budget (mean +- sample std over seeds) and the improvement over a
    baseline group (Figure 3 of the diffusion-FAL paper: "mean accuracy improvement ... from
    random selection", shaded +- std);
  * significance counts vs the baseline (its Table 1): at how many budgets a group is
    significantly better / worse under Student's two-sample t-test over seeds (equal variances,
    two-sided, alpha = 0.05; the paper's "alpha = 0.95" is the confidence level). A paired
    t-test is added as a separate, clearly labelled column, on the seeds both groups ran;
  * the class-imbalance ratio of the labeled set (BASE paper: labels of the most sampled class /
    labels of the least sampled class), inf when some class has no label;
  * cumulative training time per budget and the speedup over a reference group (for the
    continual-training modes, grouped by `training-mode`).

Modules: `load` (results root -> `Run` objects), `stats` (pure functions over runs; the tests use
them on synthetic runs), `plots`, `markdown` (`write_report` renders everything into OUT_DIR:
summary.md, accuracy.png, imbalance.png, report.json) and `cli`. The names they define are
importable from `simulations.reports` itself.
"""

from simulations.reports.load import (
    CONFIG_FILE,
    CONFIG_REQUIRED,
    ROUND_REQUIRED,
    ROUNDS_FILE,
    SUMMARY_FILE,
    TOP_LEVEL_KEYS,
    ReportError,
    Results,
    Round,
    Run,
    SkippedRun,
    filter_runs,
    group_runs,
    load_results,
    load_runs,
    read_rounds,
    require_group,
)
from simulations.reports.stats import (
    DDOF,
    OUTPUT_KEYS,
    Cell,
    Comparison,
    ImbalanceCell,
    Improvement,
    MatchedSpeedup,
    SignificanceCounts,
    Table,
    accuracy_table,
    budgets,
    compare_cells,
    count_significance,
    duplicate_seeds,
    has_train_times,
    imbalance_ratio,
    imbalance_ratios,
    improvement,
    improvement_over,
    matched_speedups,
    mixed_config_keys,
    phase_totals,
    significance_counts,
    significance_table,
    speedups,
    training_times,
)
from simulations.reports.plots import group_colors, plot_accuracy, plot_imbalance
from simulations.reports.markdown import write_report
from simulations.reports.cli import build_parser, main
