import numpy as np

from simulations.probe_alignment import measure


def test_probe_study_measures_each_setting_and_reports_divergence():
    rows = measure(0, 12, "", log=lambda s: None, train_epochs=2,
                   settings=(("gd", 1, 1e-3, "head"), ("adam", 1, 3e-3, "head"), ("gd", 8, 10.0, "head")))
    assert [r[:2] for r in rows] == [(state, label) for state in ("round-0", "2000-random")
                                     for label in ("gd ×1 lr 0.001 head", "adam ×1 lr 0.003 head",
                                                   "gd ×8 lr 10 head")]
    for _, label, a, p, _ in rows:
        if label.startswith("gd ×8"):
            assert np.isnan(a) and np.isnan(p)  # diverged, reported as such
        else:
            assert -1 <= a <= 1 and -1 <= p <= 1
