"""One way to reject a bad value, for every layer of fedal.

Each check returns the value (converted where that is its job) or raises an error whose message
names the value, shows what was given and says what is valid, always in the same words:

    <name> = <given!r> is invalid; valid: <what is valid>

``error`` chooses the exception type: the pure maths raises ``ValueError``; the run config raises
``fedal.errors.ConfigError`` (a ``ValueError`` too) so a ServerApp can tell a configuration mistake
from a bug. Checks that look at arrays report shapes, not contents: an array may be private data.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def invalid(name: str, given: Any, valid: str, error: type[Exception] = ValueError) -> Exception:
    """The error for ``name = given``; raise it (``raise invalid(...)``)."""
    return error(f"{name} = {given!r} is invalid; valid: {valid}")


def check_choice(value, name: str, choices: Iterable, error: type[Exception] = ValueError):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise invalid(name, value, ", ".join(str(c) for c in choices), error)
    return value


def check_int(value, name: str, lo: int, hi: int | None = None, hi_means: str = "",
              error: type[Exception] = ValueError) -> int:
    """An integer in [lo, hi]; bools and floats are rejected (``k=7.5`` is a bug, not a 7)."""
    rng = f"an integer in [{lo}, {'∞' if hi is None else hi}]" + (f" ({hi_means})" if hi_means else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise invalid(name, value, rng, error)
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise invalid(name, v, rng, error)
    return v


def check_number(value, name: str, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False,
                 note: str = "", error: type[Exception] = ValueError) -> float:
    """A finite real number in the interval given by ``lo``/``hi`` (open ends where asked);
    ``integer``: also a whole number (a float 3.0 passes, 3.5 does not). ``note`` is appended to
    the valid range (e.g. "0 disables anisotropy")."""
    left = "(-∞" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "∞)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    valid = ("a whole number in " if integer else "") + f"{left}, {right}" + (f" ({note})" if note else "")
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
          and bool(np.isfinite(value)))
    if ok:
        v = float(value)
        ok = ((lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
              and (not integer or v.is_integer()))
    if not ok:
        raise invalid(name, value, valid, error)
    return float(value)


def check_vector(value, name: str, size: int) -> np.ndarray:
    """A finite float64 vector of length ``size`` (one value per node)."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape != (size,):
        raise invalid(f"shape of {name}", a.shape, f"({size},), one value per node")
    if not np.all(np.isfinite(a)):
        raise invalid(name, "an array with NaN or inf", "finite values")
    return a


def check_points(value, name: str, allow_epochs: bool) -> np.ndarray:
    """(n, d) or, if ``allow_epochs``, (n, T, d) finite float64, returned as (n, T, d)."""
    x = np.asarray(value, dtype=np.float64)
    shapes = "a non-empty (n, d) or (n, T, d) array" if allow_epochs else "a non-empty (n, d) array"
    if x.ndim not in ((2, 3) if allow_epochs else (2,)) or x.shape[0] < 1 or x.shape[-1] < 1:
        raise invalid(f"shape of {name}", x.shape, shapes)
    if x.ndim == 3 and x.shape[1] < 1:
        raise invalid(f"shape of {name}", x.shape, "at least one epoch T ≥ 1")
    if not np.all(np.isfinite(x)):
        raise invalid(name, "an array with NaN or inf", "finite values")
    return x if x.ndim == 3 else x[:, None, :]


def check_probs(value, name: str = "probs") -> np.ndarray:
    """An (n, C) array of finite, non-negative class probabilities, as float64."""
    p = np.asarray(value, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise invalid(f"shape of {name}", p.shape, "a 2-D array (n, classes)")
    if not np.all(np.isfinite(p)):
        raise invalid(name, "an array with NaN or inf", "finite probabilities in [0, 1]")
    if np.any(p < 0):
        raise invalid(name, "an array with negative values", "probabilities in [0, 1]")
    return p
