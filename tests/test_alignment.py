"""Client-geometry alignment (simulations.alignment) on hand-made histograms and q matrices with
known answers, its q.npz reading, its CLI and the report section, on tiny fake run directories."""

import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from simulations import alignment as A
from simulations import reports as R
from tests.test_reports import write_run

# 5 clients, 4 classes; client 2 alone holds class 2, so it is equidistant (H = 1) from all others
HIST = np.array([[10, 0, 0, 0], [5, 5, 0, 0], [0, 0, 7, 0], [4, 1, 0, 0], [3, 3, 0, 3]])
ALL = np.arange(len(HIST))


def test_hellinger_known_values_and_normalisation():
    h = A.hellinger_matrix([[10, 0], [0, 3], [5, 5], [1, 1]])
    assert h[0, 1] == 1.0  # disjoint supports: 1 with the 1/sqrt(2) normalisation, not sqrt(2)
    assert h[0, 2] == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))
    assert h[2, 3] == 0.0  # same mix, different sizes: counts are normalised first
    assert np.array_equal(h, h.T) and np.all(np.diag(h) == 0)
    with pytest.raises(ValueError, match=r"client\(s\) \[1\] hold no data"):
        A.hellinger_matrix([[1, 0], [0, 0]])


def test_q_equal_to_hellinger_aligns_perfectly_and_reversed_q_anti_aligns():
    h = A.hellinger_matrix(HIST)
    assert A.alignment(h, ALL, HIST) == pytest.approx(1.0)
    assert A.pooled_alignment(h, ALL, HIST) == pytest.approx(1.0)
    assert A.alignment(3.0 * h + 0.5, ALL, HIST) == pytest.approx(1.0)  # Pearson: any increasing linear map
    q = -h + 2.0
    np.fill_diagonal(q, 0.0)  # the diagonal is never compared
    assert A.alignment(q, ALL, HIST) == pytest.approx(-1.0)
    assert A.pooled_alignment(q, ALL, HIST) == pytest.approx(-1.0)


def test_permuted_q_known_value():
    # two single-class pairs: H = 0 within a pair, 1 across. q = H with clients 1 and 2 swapped:
    # every row of q is (1, 0, 1)-like against H's (0, 1, 1)-like, Pearson -1/2 per row and pooled
    hist = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    h = A.hellinger_matrix(hist)
    perm = [0, 2, 1, 3]
    q = h[np.ix_(perm, perm)]
    assert A.alignment(q, np.arange(4), hist) == pytest.approx(-0.5)
    assert A.pooled_alignment(q, np.arange(4), hist) == pytest.approx(-0.5)


def test_mean_of_per_client_pearson_matches_scipy():
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 20, size=(8, 4)) + 1
    q = rng.random((8, 8))
    q = q + q.T
    np.fill_diagonal(q, 0)
    h = A.hellinger_matrix(hist)
    rows = [pearsonr(np.delete(q[z], z), np.delete(h[z], z)).statistic for z in range(8)]
    iu = np.triu_indices(8, 1)
    assert A.alignment(q, np.arange(8), hist) == pytest.approx(np.mean(rows))
    assert A.pooled_alignment(q, np.arange(8), hist) == pytest.approx(pearsonr(q[iu], h[iu]).statistic)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # skipped, not divided by a zero spread
def test_constant_rows_are_skipped_and_nothing_left_is_nan():
    h = A.hellinger_matrix(HIST)
    q = h.copy()
    q[2, 0] = q[0, 2] = 2.0  # client 2's Hellinger row is constant (all 1): it must be skipped
    rows = [pearsonr(np.delete(q[z], z), np.delete(h[z], z)).statistic for z in (0, 1, 3, 4)]
    assert A.alignment(q, ALL, HIST) == pytest.approx(np.mean(rows))
    # a constant q row (client 0 equidistant from all in the graph) is skipped as well (and 2 again)
    q = h.copy()
    q[0, 1:] = q[1:, 0] = 0.7
    rows = [pearsonr(np.delete(q[z], z), np.delete(h[z], z)).statistic for z in (1, 3, 4)]
    assert A.alignment(q, ALL, HIST) == pytest.approx(np.mean(rows))
    # three single-class clients: every row is constant in Hellinger, no correlation anywhere
    one_hot = np.eye(3, dtype=int) * 5
    assert math.isnan(A.alignment(np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0.0]]), np.arange(3), one_hot))


def test_graph_clients_are_looked_up_by_partition_id():
    h = A.hellinger_matrix(HIST)
    clients = np.array([4, 1, 3, 0])  # client 2 left the graph; matrix order is not id order
    q = h[np.ix_(clients, clients)]
    assert A.alignment(q, clients, HIST) == pytest.approx(1.0)
    assert A.pooled_alignment(q, clients, HIST) == pytest.approx(1.0)
    # the same q read as clients 0..3 is not aligned: the ids matter
    assert A.alignment(q, np.arange(4), HIST) < 0.9
    with pytest.raises(ValueError, match="outside the 5 histograms"):
        A.alignment(q, np.array([4, 1, 3, 5]), HIST)
    with pytest.raises(ValueError, match=r"\(n, n\)"):
        A.alignment(q, clients[:3], HIST)


def write_q(run_dir, rounds):
    """rounds: {r: (q, clients)} -> run_dir/q.npz in the server's layout."""
    arrays = {}
    for r, (q, clients) in rounds.items():
        arrays[f"q_r{r}"] = np.asarray(q, dtype=np.float32)
        arrays[f"clients_r{r}"] = np.asarray(clients, dtype=np.int64)
    np.savez(run_dir / "q.npz", **arrays)


def test_run_alignment_reads_every_round_in_order(tmp_path):
    h = A.hellinger_matrix(HIST)
    shrunk = np.array([0, 1, 3, 4])
    write_q(tmp_path, {10: (-h, ALL), 2: (h[np.ix_(shrunk, shrunk)], shrunk), 1: (h, ALL)})
    rows = A.run_alignment(tmp_path, HIST)
    assert [(r.round, r.nodes) for r in rows] == [(1, 5), (2, 4), (10, 5)]  # numeric, not string order
    assert [r.alignment for r in rows] == pytest.approx([1.0, 1.0, -1.0])
    assert [r.pooled for r in rows] == pytest.approx([1.0, 1.0, -1.0])
    rnd, mean, pooled, n = rows[1]  # a plain (round, alignment, pooled, nodes) tuple too
    assert (rnd, n) == (2, 4)
    np.savez(tmp_path / "q.npz", q_r1=h)
    with pytest.raises(ValueError, match="q_r1 has no clients_r1"):
        A.run_alignment(tmp_path, HIST)


# Fake suites on sklearn's digits (rebuilt offline in about a second): 6 clients, Dirichlet 0.3.
CLIENTS = 6


def data_config(seed):
    return {"dataset": "digits", "partition": "dirichlet", "dirichlet-alpha": 0.3, "seed": seed}


def fake_run(root, name, method, seed, q_of=None, *, argv_clients=CLIENTS):
    """A completed run; q_of(H) -> {round: (q, clients)} writes its q.npz from the true Hellinger
    matrix H of this seed's partition; argv records `--clients` as the engine does."""
    d = write_run(root, name, method, seed, [0.5, 0.6, 0.7], config=data_config(seed))
    cfg = json.loads((d / "config.json").read_text())
    cfg["argv"] = ["simulations/engine.py", "--clients", str(argv_clients), "--run-config", "{}"]
    (d / "config.json").write_text(json.dumps(cfg))
    if q_of is not None:
        from simulations.picked_clients import client_histograms

        write_q(d, q_of(A.hellinger_matrix(client_histograms(data_config(seed), CLIENTS))))
    return d


def aligned(h):  # round 1: all 6 clients, q = H; round 2: client 3 left the graph
    keep = np.array([5, 0, 1, 2, 4])
    return {1: (h, np.arange(CLIENTS)), 2: (h[np.ix_(keep, keep)], keep)}


def reversed_(h):
    q = 1.0 - h
    np.fill_diagonal(q, 0)
    return {1: (q, np.arange(CLIENTS)), 2: (q, np.arange(CLIENTS))}


@pytest.fixture
def suite(tmp_path):
    """Rand (no graph, no q.npz), Ours (q = true Hellinger of its own seed), Anti (q = 1 - H)."""
    root = tmp_path / "results"
    for seed in range(2):
        fake_run(root, f"Rand/s{seed}", "Rand", seed)
        fake_run(root, f"Ours/s{seed}", "Ours", seed, aligned)
        fake_run(root, f"Anti/s{seed}", "Anti", seed, reversed_)
    return root


def test_cli_tables_per_method_and_plot(suite, tmp_path, capsys):
    out, png = tmp_path / "align.md", tmp_path / "align.png"
    assert A.main([str(suite), "--out", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    # per method, rows = AL rounds; both seeds use their own partition, so q = H gives exactly 1
    ours = text[text.index("### Ours"):]
    assert "| 1 | 2 | 6.0 | 1.000 ± 0.000 | 1.000 ± 0.000 |" in ours
    assert "| 2 | 2 | 5.0 | 1.000 ± 0.000 | 1.000 ± 0.000 |" in ours
    anti = text[text.index("### Anti"):text.index("### Ours")]
    assert "| 1 | 2 | 6.0 | -1.000 ± 0.000 | -1.000 ± 0.000 |" in anti
    assert "### Rand" not in text  # no q.npz: not a graph method
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_errors_are_clear(suite, tmp_path):
    with pytest.raises(SystemExit, match="nowhere.*does not exist"):
        A.main([str(tmp_path / "nowhere")])
    plain = tmp_path / "plain"
    fake_run(plain, "Rand/s0", "Rand", 0)
    with pytest.raises(SystemExit, match=r"no completed run under .*plain has q\.npz"):
        A.main([str(plain)])
    # a graph client id beyond the histograms (wrong --clients) is named, not silently misread
    with pytest.raises(SystemExit, match="outside the 4 histograms"):
        A.main([str(suite), "--clients", "4"])


def test_recorded_clients_count_is_used(tmp_path):
    # the run says it had 6 clients; a default of 100 clients would be another partition
    d = fake_run(tmp_path, "Ours/s0", "Ours", 0, aligned)
    run = R.load_runs(tmp_path)[0]
    assert A.recorded_clients(run) == CLIENTS
    assert A.alignment_table([run])["Ours"][1].mean == pytest.approx(1.0)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["argv"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert A.recorded_clients(R.load_runs(tmp_path)[0]) == A.DEFAULT_CLIENTS


def test_report_has_alignment_section_only_with_q(suite, tmp_path):
    out = tmp_path / "rep"
    md = R.write_report(suite, out, command="CMD").read_text()
    assert "## Client-geometry alignment" in md and "![Alignment" in md
    section = md[md.index("## Client-geometry alignment"):]
    assert "| method | 1 | 2 |" in section
    assert "| Ours | 1.000 ± 0.000 | 1.000 ± 0.000 |" in section
    assert "| Anti | -1.000 ± 0.000 | -1.000 ± 0.000 |" in section
    assert "| Rand |" not in section
    assert (out / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert report["alignment"]["Ours"]["2"]["nodes"] == [5, 5]

    for q in suite.rglob("q.npz"):
        q.unlink()
    out2 = tmp_path / "rep2"
    md2 = R.write_report(suite, out2, command="CMD").read_text()
    assert "alignment" not in md2.lower()
    assert not (out2 / "alignment.png").exists()
    assert "alignment" not in json.loads((out2 / "report.json").read_text())
    # the rest of the report is untouched by the section
    assert md[: md.index("## Client-geometry alignment")].rstrip() == md2.rstrip()
