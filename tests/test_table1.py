"""simulations/table1.py: the cross-setting Table 1 from report directories."""

import json

import pytest

from simulations import table1


def fake_report(d, baseline="Rand", counts=None):
    d.mkdir(parents=True)
    sig = {m: {"counts": {"better": b, "worse": w, "ties": 11 - b - w}} for m, (b, w) in (counts or {}).items()}
    acc = {m: {"1000": {"seeds": list(range(n))}} for m, n in (("Rand", 10), *((m, 10) for m in sig))}
    (d / "report.json").write_text(json.dumps({"baseline": baseline, "significance": sig, "accuracy": acc}))
    (d / "summary.md").write_text(f"# x\n\nRegenerate with:\n\n```\npython -m simulations.reports {d.name}\n```\n")


def test_one_row_per_method_one_column_per_report(tmp_path):
    fake_report(tmp_path / "a", counts={"Ours": (0, 9), "Cov": (8, 0)})
    fake_report(tmp_path / "b", counts={"Cov": (2, 1)})
    text = table1.table([("A", tmp_path / "a"), ("B", tmp_path / "b")])
    assert "| method | A | B |" in text
    assert "| Rand | baseline (n=10) | baseline (n=10) |" in text
    assert "| Ours | 0 / 9 of 11 (n=10) | — |" in text
    assert "| Cov | 8 / 0 of 11 (n=10) | 2 / 1 of 11 (n=10) |" in text
    assert "python -m simulations.reports a" in text and "python -m simulations.reports b" in text


def test_a_directory_without_a_report_is_named(tmp_path):
    with pytest.raises(SystemExit, match="report.json"):
        table1.table([("X", tmp_path)])
