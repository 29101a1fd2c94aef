"""fedal.validation: one message format for every rejected value, whichever layer rejects it."""

import numpy as np
import pytest

from fedal import validation as V
from fedal.config import Config, ConfigError

FORMAT = r"^{name} = {given} is invalid; valid: {valid}$"


def test_choice_lists_the_valid_values():
    assert V.check_choice("rw", "laplacian", ("unnormalized", "rw")) == "rw"
    with pytest.raises(ValueError, match=r"^laplacian = 'x' is invalid; valid: unnormalized, rw$"):
        V.check_choice("x", "laplacian", ("unnormalized", "rw"))


@pytest.mark.parametrize("bad", [True, 2.0, "3", None, np.float64(1.0)])
def test_int_rejects_non_integers_even_when_they_look_whole(bad):
    with pytest.raises(ValueError, match=r"^k = .* is invalid; valid: an integer in \[1, ∞\]$"):
        V.check_int(bad, "k", 1)


def test_int_range_and_meaning_of_the_upper_end():
    assert V.check_int(np.int64(3), "n", 0, 5) == 3
    with pytest.raises(ValueError, match=r"^n = 6 is invalid; valid: an integer in \[0, 5\] \(eligible clients\)$"):
        V.check_int(6, "n", 0, 5, hi_means="eligible clients")


@pytest.mark.parametrize("value,ok", [(0.0, False), (1e-9, True), (1.0, True), (1.0000001, False),
                                      (float("nan"), False), (float("inf"), False), (True, False)])
def test_number_honours_open_and_closed_ends(value, ok):
    if ok:
        assert V.check_number(value, "x", 0, 1, lo_open=True) == value
    else:
        with pytest.raises(ValueError, match=r"^x = .* is invalid; valid: \(0, 1\]$"):
            V.check_number(value, "x", 0, 1, lo_open=True)


def test_whole_numbers_and_notes():
    assert V.check_number(3.0, "k", 1, integer=True) == 3.0
    with pytest.raises(ValueError, match=r"valid: a whole number in \[1, ∞\) \(note\)$"):
        V.check_number(3.5, "k", 1, integer=True, note="note")


def test_array_checks_report_shapes_never_contents():
    secret = np.full((3, 4), 123.456)
    with pytest.raises(ValueError) as e:
        V.check_vector(secret, "g", 3)
    assert "123.456" not in str(e.value) and "(3, 4)" in str(e.value)
    secret[0, 0] = np.nan
    with pytest.raises(ValueError) as e:
        V.check_probs(secret)
    assert "123.456" not in str(e.value)


def test_the_run_config_speaks_the_same_dialect_with_its_own_error_type():
    with pytest.raises(ConfigError, match=r"^delta = 1\.5 is invalid; valid: \(0, 1\)$"):
        Config.from_run_config({"delta": 1.5})
    with pytest.raises(ConfigError, match=r"^laplacian = 'x' is invalid; valid: unnormalized, rw, sym$"):
        Config.from_run_config({"laplacian": "x"})
    # and the maths below it: the same words, a ValueError
    from fedal.diffusion import select_clients

    with pytest.raises(ValueError, match=r"^laplacian = 'x' is invalid; valid: unnormalized, rw, sym$"):
        select_clients(np.eye(4), np.ones(4), None, n=1, laplacian="x")
