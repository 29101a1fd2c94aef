import numpy as np
import pytest

from fedal import uncertainty as U


def test_entropy_known_values():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    h = U.entropy(p)
    assert h[0] == 0.0
    assert h[1] == pytest.approx(np.log(2))


def test_uniform_is_most_uncertain_for_every_measure():
    p = np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    for fn in (U.entropy, U.margin, U.least_confidence):
        s = fn(p)
        assert np.argmax(s) == 1, fn.__name__
        assert np.argmin(s) == 0, fn.__name__


def test_margin_and_least_confidence_values():
    p = np.array([[0.7, 0.2, 0.1]])
    assert U.margin(p)[0] == pytest.approx(-0.5)
    assert U.least_confidence(p)[0] == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [np.array([0.5, 0.5]), np.array([[np.nan, 1.0]]), np.array([[-0.1, 1.1]])])
def test_bad_input_is_rejected(bad):
    with pytest.raises(ValueError, match="probs"):
        U.entropy(bad)


def test_class_mix_is_the_mean_softmax_or_the_argmax_share():
    # an unsure head: every row near uniform, its argmax right more often than not. The mean
    # softmax stays near uniform; the argmax share shows the two classes the pool holds
    p = np.array([[0.40, 0.30, 0.30], [0.30, 0.40, 0.30], [0.40, 0.30, 0.30], [0.35, 0.33, 0.32]])
    soft = U.class_mix(p, "softmax", 3)
    assert soft == pytest.approx(p.mean(0))
    assert U.class_mix(p, "argmax", 3) == pytest.approx([0.75, 0.25, 0.0])
    assert soft.max() - soft.min() < 0.1
    for kind in U.PREDICTED_MIXES:
        assert U.class_mix(np.zeros((0, 3)), kind, 3) == pytest.approx([0, 0, 0])  # an empty pool
        assert U.class_mix(p, kind, 3).sum() == pytest.approx(1.0)


def test_class_mix_refuses_an_unknown_kind_and_a_class_count_mismatch():
    with pytest.raises(ValueError, match="predicted-mix = 'mode' is not valid; valid values: softmax, argmax"):
        U.class_mix(np.eye(3), "mode", 3)
    with pytest.raises(ValueError, match="3 classes, the data 4"):
        U.class_mix(np.eye(3), "argmax", 4)
