"""Report statistics on synthetic results with known answers (tiny fake run directories)."""

import json
import math

import numpy as np
import pytest

from simulations import reports as R

BUDGETS = [1000, 2000, 3000, 4000, 5000]


def write_run(root, name, method, seed, accs, *, budgets=None, lpc=None, train=None, complete=True, config=None):
    """One run directory in the runner's schema; lpc / train give per-round labeled_per_class / time_s.train."""
    budgets = budgets or BUDGETS[: len(accs)]
    d = root / name
    d.mkdir(parents=True)
    cfg = {"client-strategy": method.lower(), "dataset": "synthetic", **(config or {})}
    (d / "config.json").write_text(
        json.dumps({"method": method, "suite": "toy", "seed": seed, "config_hash": f"h{seed}", "config": cfg})
    )
    rows = []
    for r, (labels, acc) in enumerate(zip(budgets, accs)):
        last = r == len(accs) - 1
        row = {
            "round": r,
            "labels": labels,
            "accuracy": acc,
            "chosen_clients": [0, 1],
            "acquired": 0 if last else budgets[r + 1] - labels,
            "time_s": {"train": 1.0 if train is None else train[r], "evaluate": 0.1, "probe": 0.0, "select": 0.0, "acquire": 0.0},
        }
        if lpc is not None:
            row["labeled_per_class"] = lpc[r]
            row["acquired_per_class"] = [0] * len(lpc[r])
        rows.append(json.dumps(row))
    (d / "rounds.jsonl").write_text("\n".join(rows) + "\n")
    if complete:
        (d / "summary.json").write_text(
            json.dumps({"completed": True, "final_accuracy": accs[-1], "labels": budgets[len(accs) - 1], "wall_time_s": 1.0})
        )
    return d


@pytest.fixture
def toy_root(tmp_path):
    """Rand; Better = Rand + 10 points (small noise); Same = Rand's values permuted over seeds;
    Worse = Rand - 5 points; 5 seeds each, seeds 0..4 in every group (so they pair up)."""
    rng = np.random.default_rng(0)
    base = np.array([0.40, 0.50, 0.58, 0.64, 0.68])
    rand = base + rng.normal(0, 0.01, size=(5, 5))  # seeds x budgets
    groups = {
        "Rand": rand,
        "Better": rand + 0.10 + rng.normal(0, 0.005, size=(5, 5)),
        "Same": rand[[2, 0, 4, 1, 3]],  # identical sample per budget, different seed order
        "Worse": rand - 0.05 + rng.normal(0, 0.005, size=(5, 5)),
    }
    for method, accs in groups.items():
        for seed in range(5):
            write_run(tmp_path, f"{method}/s{seed}", method, seed, list(accs[seed]))
    return tmp_path


def test_significance_counts_known_answers(toy_root):
    runs = R.load_runs(toy_root)
    assert len(runs) == 20
    counts = R.significance_counts(runs, baseline="Rand", alpha=0.05)
    assert set(counts) == {"Better", "Same", "Worse"}
    assert (counts["Better"].better, counts["Better"].worse, counts["Better"].ties, counts["Better"].na) == (5, 0, 0, 0)
    assert (counts["Same"].better, counts["Same"].worse, counts["Same"].ties) == (0, 0, 5)
    assert (counts["Worse"].better, counts["Worse"].worse) == (0, 5)
    # Seeds 0..4 everywhere: the paired test runs at every budget and agrees here.
    assert (counts["Better"].paired_better, counts["Better"].paired_tested) == (5, 5)
    assert (counts["Worse"].paired_worse, counts["Same"].paired_better + counts["Same"].paired_worse) == (5, 0)


def test_student_t_statistic_matches_hand_formula():
    a = R.Cell(seeds=(0, 1, 2), values=(0.60, 0.61, 0.66))
    b = R.Cell(seeds=(3, 4, 5), values=(0.50, 0.52, 0.54))
    c = R.compare_cells(a, b, alpha=0.05)
    # Pooled-variance (equal variances) two-sample t.
    sp2 = (2 * np.var(a.values, ddof=1) + 2 * np.var(b.values, ddof=1)) / 4
    t = (np.mean(a.values) - np.mean(b.values)) / math.sqrt(sp2 * (1 / 3 + 1 / 3))
    assert c.t == pytest.approx(t)
    assert c.verdict == "better" and c.p < 0.05
    assert c.paired_p is None and c.paired_verdict is None  # different seeds: no pairing


def test_paired_test_pairs_the_seeds_both_groups_ran():
    # A method on seeds 0-4 beside a baseline on 0-9: the paired test runs on seeds 0-4 and
    # matches ttest_rel on those pairs; Student's t keeps all the seeds.
    from scipy import stats

    rng = np.random.default_rng(3)
    base = rng.normal(0.6, 0.05, size=10)
    mine = base[:5] + 0.01 + rng.normal(0, 0.002, size=5)  # small but consistent per-seed gain
    a = R.Cell(seeds=(4, 3, 2, 1, 0), values=tuple(mine[::-1]))  # seed order must not matter
    b = R.Cell(seeds=tuple(range(10)), values=tuple(base))
    c = R.compare_cells(a, b, alpha=0.05)
    assert c.paired_n == 5
    assert c.paired_p == pytest.approx(stats.ttest_rel(mine, base[:5]).pvalue)
    assert c.paired_verdict == "better"
    assert c.p == pytest.approx(stats.ttest_ind(mine, base).pvalue)
    # One common seed: nothing to pair.
    lone = R.compare_cells(R.Cell(seeds=(0, 11), values=(0.7, 0.8)), b)
    assert lone.paired_p is None and lone.paired_n == 0
    # A repeated seed leaves pairing undefined.
    twice = R.compare_cells(R.Cell(seeds=(0, 0, 1), values=(0.7, 0.8, 0.7)), b)
    assert twice.paired_p is None


def test_paired_direction_comes_from_the_paired_difference():
    # Full means say the method is worse (the baseline's extra seeds are high), the pairs say
    # better: the paired verdict follows the pairs.
    a = R.Cell(seeds=(0, 1, 2, 3), values=(0.51, 0.42, 0.61, 0.33))
    b = R.Cell(seeds=(0, 1, 2, 3, 4, 5), values=(0.50, 0.40, 0.60, 0.30, 0.95, 0.97))
    c = R.compare_cells(a, b, alpha=0.05)
    assert c.diff < 0 and c.paired_verdict == "better"


def test_report_names_the_common_seeds_of_a_partial_pairing(tmp_path):
    rng = np.random.default_rng(5)
    for seed in range(6):
        base = list(0.5 + 0.1 * np.arange(4) + rng.normal(0, 0.02, 4))
        write_run(tmp_path, f"rand{seed}", "Rand", seed, base)
        if seed < 3:
            write_run(tmp_path, f"half{seed}", "Half", seed, [v + 0.01 for v in base])
        write_run(tmp_path, f"full{seed}", "Full", seed, [v + 0.01 for v in base])
    runs = R.load_runs(tmp_path)
    counts = R.significance_counts(runs, baseline="Rand")
    assert counts["Half"].paired_partial and counts["Half"].paired_seeds == (3,)
    assert not counts["Full"].paired_partial and counts["Full"].paired_seeds == (6,)
    md = R.write_report(tmp_path, tmp_path / "rep", command="CMD").read_text()
    sig = md.split("## Significance vs Rand")[1]
    row = next(line for line in sig.splitlines() if line.startswith("| Half |"))
    assert row.rstrip(" |").endswith("(of 4), 3 common seeds")
    full = next(line for line in sig.splitlines() if line.startswith("| Full |"))
    assert "common seeds" not in full
    assert "it pairs the seeds both ran" in md


def test_fewer_than_two_seeds_is_na_not_tie(tmp_path):
    for seed in range(3):
        write_run(tmp_path, f"rand{seed}", "Rand", seed, [0.5, 0.6, 0.7])
    write_run(tmp_path, "one", "Lonely", 0, [0.9, 0.9, 0.9])
    # Two seeds but stops one budget short: the missing budget is n/a too.
    write_run(tmp_path, "short0", "Short", 0, [0.5, 0.6])
    write_run(tmp_path, "short1", "Short", 1, [0.5, 0.6])
    counts = R.significance_counts(R.load_runs(tmp_path), "Rand")
    assert (counts["Lonely"].na, counts["Lonely"].ties, counts["Lonely"].tested) == (3, 0, 0)
    assert (counts["Short"].na, counts["Short"].ties) == (1, 2)


def test_improvement_mean_and_std_hand_computed(tmp_path):
    for seed, (r, m) in enumerate([(0.50, 0.60), (0.52, 0.61), (0.54, 0.66)]):
        write_run(tmp_path, f"r{seed}", "Rand", seed, [r])
        write_run(tmp_path, f"m{seed}", "M", seed, [m])
    write_run(tmp_path, "u5", "U", 5, [0.70])  # seeds 5, 6: do not pair with Rand's 0..2
    write_run(tmp_path, "u6", "U", 6, [0.74])
    imp = R.improvement(R.load_runs(tmp_path), "Rand")
    # Per-seed differences 0.10, 0.09, 0.12: mean 0.10333, sample std sqrt(4.6667e-4 / 2).
    i = imp["M"][1000]
    assert i.paired and i.n == 3
    assert i.mean == pytest.approx(0.1033333, abs=1e-6)
    assert i.std == pytest.approx(0.0152753, abs=1e-6)
    # Unpaired: mean difference 0.72 - 0.52, std sqrt(s_U^2 + s_Rand^2) = sqrt(0.0008 + 0.0004).
    u = imp["U"][1000]
    assert not u.paired
    assert u.mean == pytest.approx(0.20)
    assert u.std == pytest.approx(math.sqrt(0.0008 + 0.0004))
    assert imp["Rand"][1000].mean == 0.0 and imp["Rand"][1000].std == 0.0


def test_accuracy_table_mean_std(toy_root):
    t = R.accuracy_table(R.load_runs(toy_root))
    cell = t["Same"][3000]
    assert cell.n == 5 and sorted(cell.seeds) == [0, 1, 2, 3, 4]
    assert cell.mean == pytest.approx(t["Rand"][3000].mean)
    assert cell.std == pytest.approx(np.std(cell.values, ddof=1))
    assert R.budgets(t) == BUDGETS


def test_imbalance_ratio_hand_made():
    assert R.imbalance_ratio([10, 5, 20]) == (4.0, 0)
    ratio, zeros = R.imbalance_ratio([3, 0, 6, 0])
    assert math.isinf(ratio) and zeros == 2
    assert R.imbalance_ratio([7, 7]) == (1.0, 0)


def test_imbalance_ratios_per_group_and_size(tmp_path):
    # Cumulative labeled per class after each round's acquisition; the last round acquires nothing.
    lpc_a = [[10, 10], [30, 10], [30, 10]]  # sizes 20, 40, 40 -> ratios 1, 3 (last row wins at 40)
    lpc_b = [[10, 10], [20, 20], [20, 20]]  # ratios 1, 1
    lpc_z = [[20, 0], [30, 10], [30, 10]]  # inf (one class unlabeled), then 3
    write_run(tmp_path, "a0", "A", 0, [0.5, 0.6, 0.7], lpc=lpc_a)
    write_run(tmp_path, "a1", "A", 1, [0.5, 0.6, 0.7], lpc=lpc_b)
    write_run(tmp_path, "z0", "Z", 0, [0.5, 0.6, 0.7], lpc=lpc_z)
    imb = R.imbalance_ratios(R.load_runs(tmp_path))
    assert sorted(imb["A"]) == [20, 40]
    assert imb["A"][20].mean == 1.0
    assert imb["A"][40].mean == pytest.approx(2.0)  # (3 + 1) / 2
    assert imb["A"][40].std == pytest.approx(math.sqrt(2.0))
    assert math.isinf(imb["Z"][20].mean) and imb["Z"][20].mean_zero_classes == 1
    assert imb["Z"][40].mean == 3.0


def test_training_time_and_speedup_hand_made(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"re{seed}", "Ours", seed, [0.5, 0.6, 0.7], train=[10.0, 10.0, 10.0],
                  config={"training-mode": "retrain"})
        write_run(tmp_path, f"ft{seed}", "Ours", seed, [0.5, 0.6, 0.7], train=[10.0, 2.0, 2.0 + seed * 2],
                  config={"training-mode": "finetune"})
    runs = R.load_runs(tmp_path)
    times = R.training_times(runs, group_by="training-mode")
    assert [times["retrain"][b].mean for b in (1000, 2000, 3000)] == [10.0, 20.0, 30.0]
    assert [times["finetune"][b].mean for b in (1000, 2000, 3000)] == [10.0, 12.0, 15.0]  # 3rd: (14 + 16) / 2
    sp = R.speedups(times, "retrain")
    assert sp["finetune"] == pytest.approx({1000: 1.0, 2000: 20 / 12, 3000: 2.0})
    assert sp["retrain"] == pytest.approx({1000: 1.0, 2000: 1.0, 3000: 1.0})

    out = tmp_path / "out"
    md = R.write_report(tmp_path, out, baseline="retrain", group_by="training-mode", speedup_baseline="retrain",
                        command="CMD").read_text()
    assert "## Training time" in md
    assert "| finetune | 10.0 s (×1.00) | 12.0 s (×1.67) | 15.0 s (×2.00) |" in md
    assert "| finetune | 3000 | 15.0 s | ×2.00 |" in md  # same curves: matched accuracy = matched labels


def test_matched_accuracy_speedup_hand_made(tmp_path):
    # retrain ends at 0.6 (reached first at 2000 labels after 20 s); "fast" reaches 0.6 at 1000
    # labels after 5 s (×4), "slow" never reaches it
    write_run(tmp_path, "re", "X", 0, [0.5, 0.6, 0.55, 0.6], train=[10.0] * 4, config={"training-mode": "retrain"})
    write_run(tmp_path, "fa", "X", 0, [0.65, 0.7, 0.8, 0.9], train=[5.0] * 4, config={"training-mode": "fast"})
    write_run(tmp_path, "sl", "X", 0, [0.1, 0.2, 0.3, 0.4], train=[1.0] * 4, config={"training-mode": "slow"})
    runs = R.load_runs(tmp_path)
    ms = R.matched_speedups(R.accuracy_table(runs, "training-mode"), R.training_times(runs, "training-mode"), "retrain")
    assert ms["retrain"].target == pytest.approx(0.6)
    assert (ms["retrain"].budget, ms["retrain"].time_s, ms["retrain"].speedup) == (2000, 20.0, 1.0)
    assert (ms["fast"].budget, ms["fast"].time_s) == (1000, 5.0) and ms["fast"].speedup == pytest.approx(4.0)
    assert ms["slow"].budget is None and ms["slow"].speedup is None
    md = R.write_report(tmp_path, tmp_path / "o", baseline=None, group_by="training-mode",
                        speedup_baseline="retrain", command="CMD").read_text()
    assert "| slow | not reached | — | — |" in md and "| fast | 1000 | 5.0 s | ×4.00 |" in md


def test_incomplete_runs_are_skipped_and_counted(toy_root):
    d = write_run(toy_root, "Better/s9", "Better", 9, [0.99, 0.99], complete=False)
    with (d / "rounds.jsonl").open("a") as f:
        f.write('{"round": 2, "labels": 30')  # half-written line of a run still in progress
    (toy_root / "Rand" / "started").mkdir()
    (toy_root / "Rand" / "started" / "config.json").write_text('{"method": "Rand", "seed": 7}')
    res = R.load_results(toy_root)
    assert len(res.runs) == 20
    assert sorted(s.method for s in res.skipped) == ["Better", "Rand"]
    assert all(r.seed != 9 for r in res.runs)

    md = R.write_report(toy_root, toy_root / "report", command="CMD").read_text()
    assert "Skipped 2 incomplete run(s)" in md and "Better: 1" in md


def test_report_files_and_markdown(toy_root, tmp_path):
    out = tmp_path / "rep"
    md = R.write_report(toy_root, out, baseline="Rand", command="python -m simulations.reports X --out Y").read_text()
    png = out / "accuracy.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "imbalance.png").exists()  # no labeled_per_class in these runs: no imbalance section
    assert "python -m simulations.reports X --out Y" in md
    assert "![Accuracy and improvement over the baseline](accuracy.png)" in md
    assert "Student's two-sample t-test" in md and "ttest_ind" in md and "α = 0.05" in md
    assert "| Better | 5 / 0 | 0 | 0 | 5 | 5 / 0 (of 5) |" in md
    assert "| Worse | 0 / -5 | 0 | 0 | 5 | 0 / -5 (of 5) |" in md
    # Best mean per budget in bold: Better at every budget.
    better_row = next(line for line in md.splitlines() if line.startswith("| Better | **"))
    assert better_row.count("**") == 2 * len(BUDGETS)
    report = json.loads((out / "report.json").read_text())
    assert report["significance"]["Better"]["counts"]["better"] == 5


def test_imbalance_png_written(tmp_path):
    lpc = [[10, 0, 10], [20, 10, 10], [20, 10, 10]]
    for seed in range(2):
        write_run(tmp_path, f"r{seed}", "Rand", seed, [0.5, 0.6, 0.7], lpc=lpc)
        write_run(tmp_path, f"o{seed}", "Ours", seed, [0.6, 0.7, 0.8], lpc=[[10, 5, 5], [15, 15, 10], [15, 15, 10]])
    md = R.write_report(tmp_path, tmp_path / "out", command="CMD").read_text()
    png = tmp_path / "out" / "imbalance.png"
    assert png.stat().st_size > 10_000
    assert "![Class-imbalance ratio](imbalance.png)" in md
    assert "| Rand | inf [1] | 2.00 ± 0.00 |" in md


def test_error_missing_and_empty_root(tmp_path):
    with pytest.raises(R.ReportError, match="nope"):
        R.load_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(R.ReportError, match=r"empty.*no run directories"):
        R.load_runs(tmp_path / "empty")


def test_error_baseline_not_present_lists_groups(toy_root, tmp_path):
    with pytest.raises(R.ReportError, match="'Random'.*Better, Rand, Same, Worse"):
        R.write_report(toy_root, tmp_path / "o", baseline="Random", command="CMD")
    with pytest.raises(R.ReportError, match="Better, Rand, Same, Worse"):
        R.significance_counts(R.load_runs(toy_root), baseline="Random")


def test_error_corrupt_line_names_file_and_line(tmp_path):
    d = write_run(tmp_path, "bad", "Rand", 0, [0.5, 0.6, 0.7])
    lines = (d / "rounds.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (d / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(R.ReportError, match=r"bad/rounds\.jsonl:2: corrupted JSON"):
        R.load_runs(tmp_path)


def test_error_group_by_unknown_key(toy_root):
    with pytest.raises(R.ReportError, match="cannot group by 'optimizer'.*client-strategy"):
        R.accuracy_table(R.load_runs(toy_root), group_by="optimizer")


def test_cli_end_to_end_and_errors(toy_root, tmp_path, capsys):
    out = tmp_path / "cli"
    assert R.main([str(toy_root), "--out", str(out), "--title", "Toy"]) == 0
    assert (out / "summary.md").read_text().startswith("# Toy")
    assert R.main([str(toy_root), "--out", str(out), "--baseline", "Nope"]) == 2
    assert "Nope" in capsys.readouterr().err
    assert R.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err


def test_filter_and_mixed_config_note(tmp_path):
    for seed in range(2):
        for ds in ("mnist", "cifar10"):
            write_run(tmp_path, f"{ds}/r{seed}", "Rand", seed, [0.5, 0.6],
                      config={"dataset": ds, "run-name": f"h-s{seed}", "run-dir": f"x{seed}"})
            write_run(tmp_path, f"{ds}/o{seed}", "Ours", seed, [0.6, 0.7], config={"dataset": ds})
    runs = R.load_runs(tmp_path)
    assert R.mixed_config_keys(runs, "method") == {"Rand": ["dataset"], "Ours": ["dataset"]}
    only = R.filter_runs(runs, {"dataset": "mnist"})
    assert len(only) == 4 and R.mixed_config_keys(only, "method") == {}
    md = R.write_report(tmp_path, tmp_path / "o", filters={"dataset": "mnist"}, command="CMD").read_text()
    assert "Filter: `dataset=mnist`" in md and "pools runs" not in md
    assert len(R.filter_runs(runs, {"dataset": "mnist", "seed": ("0", "7")})) == 2  # seed 0 of both methods


def test_a_filter_key_given_twice_keeps_runs_with_either_value(tmp_path):
    from simulations.reports.cli import main

    for seed in range(3):
        write_run(tmp_path / "res", f"r{seed}", "Rand", seed, [0.5, 0.6 + seed / 100])
    assert main([str(tmp_path / "res"), "--out", str(tmp_path / "o"), "--filter", "seed=0", "--filter", "seed=2"]) == 0
    md = (tmp_path / "o" / "summary.md").read_text()
    assert "Filter: `seed` one of `0`, `2`" in md and "| Rand | 2 | 0, 2 |" in md


def test_keys_outside_the_experiment_hash_are_not_noted(tmp_path):
    # a timeout or an async key of a sync run does not make two runs different experiments
    for seed, extra in ((0, {}), (1, {"send-timeout": 60, "query-pool-low": 3, "resume": True})):
        write_run(tmp_path, f"r{seed}", "Rand", seed, [0.5, 0.6], config={"dataset": "mnist", **extra})
    assert R.mixed_config_keys(R.load_runs(tmp_path), "method") == {}
    write_run(tmp_path, "r2", "Rand", 2, [0.5, 0.6], config={"dataset": "mnist", "learning-rate": 0.5})
    assert R.mixed_config_keys(R.load_runs(tmp_path), "method") == {"Rand": ["learning-rate"]}


def test_cli_subprocess_records_exact_command(toy_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "sub"
    cmd = [sys.executable, "-m", "simulations.reports", str(toy_root), "--out", str(out), "--title", "Toy run"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # headless: Agg must be chosen by us
    res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    md = (out / "summary.md").read_text()
    assert f"-m simulations.reports {toy_root} --out {out} --title 'Toy run'" in md
    assert "cd " not in md  # run from the repository root: no cd prefix


def test_exclude_initial_budget_from_counts(toy_root, tmp_path):
    runs = R.load_runs(toy_root)
    counts = R.significance_counts(runs, "Rand", exclude_initial=True)
    assert (counts["Better"].better, counts["Better"].tested) == (4, 4)
    md = R.write_report(toy_root, tmp_path / "o", exclude_initial=True, command="CMD").read_text()
    assert "| Better | 4 / 0 | 0 | 0 | 4 | 4 / 0 (of 4) |" in md
    assert "The initial budget (round 0" in md


def test_significance_uses_students_pooled_test_not_welchs():
    # unequal sizes and variances: here Student's and Welch's t differ (with equal sizes they
    # coincide, which is how a switch to Welch once went unnoticed)
    a = R.Cell(seeds=(0, 1, 2, 3, 4), values=(0.60, 0.61, 0.62, 0.60, 0.61))
    b = R.Cell(seeds=(5, 6, 7), values=(0.50, 0.58, 0.40))
    c = R.compare_cells(a, b, alpha=0.05)
    from scipy import stats

    na, nb = 5, 3
    sp2 = ((na - 1) * np.var(a.values, ddof=1) + (nb - 1) * np.var(b.values, ddof=1)) / (na + nb - 2)
    t = (np.mean(a.values) - np.mean(b.values)) / math.sqrt(sp2 * (1 / na + 1 / nb))
    p = 2 * stats.t.sf(abs(t), na + nb - 2)
    assert c.t == pytest.approx(t) and c.p == pytest.approx(p)
    assert c.verdict == "better"  # Welch's test (p ≈ 0.12) would call it a tie


def _with_environment(d, golden, cpu=None):
    meta = json.loads((d / "config.json").read_text())
    meta["environment"] = {"golden": golden, "cpu": cpu or "CPU-" + golden, "cpu_capability": "AVX2",
                           "numerics": "portable"}
    (d / "config.json").write_text(json.dumps(meta))


def test_a_report_says_which_numerics_its_runs_computed_on_and_when_they_span_several(tmp_path):
    for seed in range(2):
        _with_environment(write_run(tmp_path, f"r{seed}", "Rand", seed, [0.5, 0.6]), "g1")
        _with_environment(write_run(tmp_path, f"o{seed}", "Ours", seed, [0.5, 0.7]), "g1")
    one = R.write_report(tmp_path, tmp_path / "one", command="CMD").read_text()
    assert "Numerics: every run here, golden `g1` (CPU-g1, AVX2 kernels, numerics = portable)." in one
    write_run(tmp_path, "o9", "Ours", 9, [0.5, 0.7])  # recorded before fedal recorded numerics
    md = R.write_report(tmp_path, tmp_path / "two", command="CMD").read_text()
    assert "Numerics: these runs span 2 environments" in md
    assert "- Ours: 2 on golden `g1` (CPU-g1, AVX2 kernels, numerics = portable); 1 on numerics not recorded" in md
    data = json.loads((tmp_path / "two" / "report.json").read_text())
    assert data["environments"]["g1"]["runs"] == 4 and data["environments"]["not recorded"]["runs"] == 1


def test_a_report_names_every_cpu_that_computed_one_golden(tmp_path):
    # portable numerics: an AMD and an Intel machine compute the same golden; the report must not
    # credit all runs to whichever CPU happened to come first
    for seed in range(2):
        _with_environment(write_run(tmp_path, f"r{seed}", "Rand", seed, [0.5, 0.6]), "g1", cpu="AMD EPYC")
        _with_environment(write_run(tmp_path, f"o{seed}", "Ours", seed, [0.5, 0.7]), "g1", cpu="Intel Xeon")
    md = R.write_report(tmp_path, tmp_path / "o", command="CMD").read_text()
    assert "Numerics: every run here, golden `g1` (AMD EPYC, Intel Xeon, AVX2 kernels, numerics = portable)." in md
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["environments"]["g1"]["cpus"] == ["AMD EPYC", "Intel Xeon"]
