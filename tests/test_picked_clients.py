import numpy as np
import pytest

from simulations.picked_clients import pick_stats

# three clients: two single-class ones and one balanced one
HIST = np.array([[10, 0], [0, 10], [5, 5]])


def test_representative_picks_have_zero_tv_and_skewed_picks_do_not():
    s = pick_stats(HIST, [0, 1], [100, 100])
    assert s.dominant_share == 1.0 and s.tv_to_population == pytest.approx(0.0) and s.final_imbalance == 1.0
    s = pick_stats(HIST, [2], [30, 10])
    assert s.dominant_share == 0.5 and s.tv_to_population == pytest.approx(0.0) and s.final_imbalance == 3.0
    # picking only the class-0 client twice: mix (1, 0) against population (0.5, 0.5) -> TV 0.5
    s = pick_stats(HIST, [0, 0], [20, 0])
    assert s.tv_to_population == pytest.approx(0.5) and s.final_imbalance == float("inf")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no picks"):
        pick_stats(HIST, [], [1, 1])
    with pytest.raises(ValueError, match="holds no data"):
        pick_stats(np.array([[0, 0], [1, 1]]), [0], [1, 1])


def test_tv_accuracy_correlation_ranks():
    from simulations.picked_clients import tv_accuracy_correlation

    # accuracy falls monotonically (not linearly) as TV grows: rank correlation exactly -1
    rho, p = tv_accuracy_correlation([0.1, 0.2, 0.3, 0.5], [0.9, 0.5, 0.45, 0.1])
    assert rho == pytest.approx(-1.0) and p < 0.01
    rho, _ = tv_accuracy_correlation([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert rho == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 runs"):
        tv_accuracy_correlation([0.1, 0.2], [0.5, 0.4])
