"""Per-round selection diagnostics (simulations/selection_diagnostics.py) on known answers and on
tiny fake suites over sklearn's digits."""

import json
import math

import numpy as np
import pytest

from simulations import reports as R
from simulations import selection_diagnostics as D
from tests.test_alignment import write_q
from tests.test_reports import write_run


def test_same_class_pairs_and_label_entropy_known_values():
    dom = np.array([0, 0, 1, 2, 0])
    assert D.same_class_pair_rate(dom, [0, 1, 4]) == 1.0
    assert D.same_class_pair_rate(dom, [0, 2, 3]) == 0.0
    assert D.same_class_pair_rate(dom, [0, 1, 2, 3]) == pytest.approx(1 / 6)
    assert math.isnan(D.same_class_pair_rate(dom, [0]))
    assert D.label_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert D.label_entropy([10, 0, 0, 0]) == 0.0
    assert D.label_entropy([1, 1, 0, 0]) == pytest.approx(0.5)
    assert math.isnan(D.label_entropy([0, 0]))


CLIENTS = 12  # digits in 12 Dirichlet-0.3 clients: some share a dominant class, some do not


def data_config(seed):
    return {"dataset": "digits", "partition": "dirichlet", "dirichlet-alpha": 0.3, "seed": seed}


def fake_suite(root):
    """Two methods on digits (12 clients): 'Same' always picks two clients of one dominant class,
    'Spread' two of different classes; 'Same' drops at its first selection."""
    from simulations.picked_clients import client_histograms

    hist = client_histograms(data_config(0), CLIENTS)
    dom = D.dominant_classes(hist)
    same = next((a, b) for a in range(CLIENTS) for b in range(a + 1, CLIENTS) if dom[a] == dom[b])
    spread = next((a, b) for a in range(CLIENTS) for b in range(a + 1, CLIENTS) if dom[a] != dom[b])
    for name, pair, accs, apc in (("Same", same, [0.5, 0.4, 0.6], [0, 0, 0, 9, 0, 0, 0, 0, 0, 1]),
                                  ("Spread", spread, [0.5, 0.6, 0.7], [1] * 10)):
        d = write_run(root, f"{name}/s0", name, 0, accs, config=data_config(0))
        cfg = json.loads((d / "config.json").read_text())
        cfg["argv"] = ["engine", "--clients", str(CLIENTS)]
        (d / "config.json").write_text(json.dumps(cfg))
        rows = [json.loads(line) for line in (d / "rounds.jsonl").read_text().splitlines()]
        for row in rows[:-1]:
            row["chosen_clients"] = list(pair)
            row["acquired_per_class"] = apc
        rows[-1]["chosen_clients"] = []
        (d / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        if name == "Spread":
            write_q(d, {1: (1.0 - np.eye(CLIENTS), np.arange(CLIENTS))})
    return hist


def test_diagnostics_per_method_and_the_first_selection(tmp_path):
    fake_suite(tmp_path)
    per = D.collect(R.load_runs(tmp_path))
    table = D.diagnostics_table(per)
    assert table["Same"]["same_class_pairs"][0] == 1.0 and table["Spread"]["same_class_pairs"][0] == 0.0
    assert table["Same"]["distinct_dominant"][0] == 1.0 and table["Spread"]["distinct_dominant"][0] == 2.0
    assert table["Spread"]["label_entropy"][0] == pytest.approx(1.0)
    assert table["Same"]["label_entropy"][0] < 0.25
    assert table["Same"]["first_selection_change"][0] == pytest.approx(-0.1)
    assert table["Spread"]["first_selection_change"][0] == pytest.approx(0.1)


def diag(seed, accs):
    return D.RunDiagnostics(seed, (), (), (), accs[1] - accs[0], float(np.mean(accs[1:])),
                            tuple(b - a for a, b in zip(accs, accs[1:])))


def test_the_first_selection_per_seed_paired_with_the_baselines_seeds_and_the_later_drops():
    """The baseline rises by 0.10 at every first selection; "Rule" by 0.10 − (0.02, 0.04, 0.06)
    in seeds 0-2 (seed 3 has no baseline run and is left out of the pairing), dropping in seed 3
    only; later rows: Rule drops twice (−0.03, −0.01) in 6 steps, the baseline never."""
    per = {"Rand": [diag(s, [0.5, 0.6, 0.7, 0.8]) for s in range(3)],
           "Rule": [diag(0, [0.5, 0.58, 0.55, 0.6]), diag(1, [0.5, 0.56, 0.57, 0.56]),
                    diag(2, [0.5, 0.54, 0.6, 0.7]), diag(3, [0.5, 0.45, 0.5, 0.6])]}
    fs = D.first_selection_table(per, "Rand")
    rule = fs["Rule"]
    assert [s for s, _ in rule.per_seed] == [0, 1, 2, 3] and rule.drops == 1
    m, sd, p, k = rule.vs_baseline
    assert k == 3 and m == pytest.approx(-0.04) and sd == pytest.approx(0.02)
    # t = -0.04 / (0.02 / sqrt 3) = -2 sqrt 3; with 2 df, two-sided p = 1 - |t| / sqrt(t² + 2) = 0.0742
    assert p == pytest.approx(1 - 2 * 3 ** 0.5 / 14 ** 0.5)
    assert (rule.later_drops, rule.later_steps, rule.worst_later) == (2, 8, pytest.approx(-0.03))
    assert math.isnan(fs["Rand"].vs_baseline[0]) and fs["Rand"].drops == 0 and fs["Rand"].later_drops == 0
    assert all(math.isnan(v) for v in D.first_selection_table(per, None)["Rule"].vs_baseline[:3])
    # mean of (8, 6, 4, -5) points: 3.25 ± 5.74, t = 1.13 with 3 df; neither test finds a drop
    assert rule.mean == (pytest.approx(0.0325), pytest.approx(0.0573730), pytest.approx(0.340, abs=1e-3))
    assert rule.significant_drops() == []
    md = "\n".join(D.first_selection_markdown(per, ["Rand", "Rule"], "Rand"))
    assert "| Rule | +8.0 +6.0 +4.0 -5.0 | 1 of 4 | +3.3 ± 5.7 (p = 0.34) | -4.0 ± 2.0 (p = 0.074) | no | 2 of 8 " \
           "| -3.0 |" in md
    assert "| Rand | +10.0 +10.0 +10.0 | 0 of 3 | +10.0 ± 0.0 | — | no | 0 of 6 | +10.0 |" in md


def test_a_significant_first_selection_drop_is_one_below_zero_or_below_the_baseline_over_seeds():
    """The test #23's "no drop at the first selection" is judged by (docs/results.md): over
    seeds, not per seed. Changes of −5, −6, −4 points against the baseline's +10: t = −5 / (1/√3)
    with 2 df gives p = 1 − |t| / √(t² + 2) against 0, and likewise for the paired −15."""
    per = {"Rand": [diag(s, [0.5, 0.6, 0.7]) for s in range(3)],
           "Drop": [diag(s, [0.5, 0.5 - d, 0.6]) for s, d in enumerate((0.05, 0.06, 0.04))],
           "Lag": [diag(s, [0.5, 0.5 + d, 0.6]) for s, d in enumerate((0.05, 0.06, 0.04))]}
    fs = D.first_selection_table(per, "Rand")

    def p2(t):
        return 1 - abs(t) / (t * t + 2) ** 0.5

    assert fs["Drop"].mean[2] == pytest.approx(p2(-0.05 / (0.01 / 3 ** 0.5)))
    assert fs["Drop"].vs_baseline[2] == pytest.approx(p2(-0.15 / (0.01 / 3 ** 0.5)))
    assert fs["Drop"].significant_drops() == ["below 0", "below the baseline"]
    assert fs["Lag"].significant_drops() == ["below the baseline"]  # rises, but less than random clients
    assert fs["Rand"].significant_drops() == []
    assert fs["Drop"].significant_drops(alpha=0.01) == ["below the baseline"]  # p = 0.013 against 0
    md = "\n".join(D.first_selection_markdown(per, ["Rand", "Drop", "Lag"], "Rand"))
    assert "| Drop | -5.0 -6.0 -4.0 | 3 of 3 | -5.0 ± 1.0 (p = 0.013) | -15.0 ± 1.0 (p = 0.0015) " \
           "| below 0, below Rand |" in md
    assert "| Lag | +5.0 +6.0 +4.0 | 0 of 3 | +5.0 ± 1.0 (p = 0.013) | -5.0 ± 1.0 (p = 0.013) | below Rand |" in md


def test_report_carries_the_section_and_the_client_graph_picture(tmp_path):
    fake_suite(tmp_path / "res")
    md = R.write_report(tmp_path / "res", tmp_path / "out", baseline=None, command="CMD").read_text()
    section = md[md.index("## Selection diagnostics"):]
    assert "| Same | 1 | 1.00 | 1.0 | " in section and "| Spread | 1 | 0.00 | 2.0 | 1.00 |" in section
    png = tmp_path / "out" / "client_graph.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["selection_diagnostics"]["Same"]["same_class_pairs"]["mean"] == 1.0
    # one seed, baseline None: no test either way, so no significant drop
    assert "| Same | -10.0 | 1 of 1 | -10.0 | — | no | 0 of 1 | +20.0 |" in section
    assert report["first_selection"]["Same"]["per_seed"] == {"0": pytest.approx(-0.1)}


def test_graph_edges_are_the_mutual_nearest_neighbours_of_q():
    # two tight pairs far apart: with K = 1 each node's nearest is its partner
    q = np.array([[0, 1, 9, 9], [1, 0, 9, 9], [9, 9, 0, 1], [9, 9, 1, 0]], dtype=float)
    assert sorted(D.graph_edges(q, k=1)) == [(0, 1), (2, 3)]
    assert len(D.graph_edges(q, k=3)) == 6


def test_graph_panels_use_the_recorded_graph_of_the_drawn_selection(tmp_path):
    fake_suite(tmp_path)
    runs = R.load_runs(tmp_path)
    panels, _ = D.graph_panels(runs, "method", ["Same", "Spread"], seed=0, row=0)
    by = {name: (edges, picks) for name, edges, picks in panels}
    assert by["Same"][0] == []  # no q.npz: no client graph
    want = D.graph_edges(1.0 - np.eye(CLIENTS))  # recorded for all clients in id order
    assert by["Spread"][0] == want and len(want) > 0
    panels2, _ = D.graph_panels(runs, "method", ["Spread"], seed=0, row=1)
    assert panels2[0][1] == []  # q_r2 was not recorded
