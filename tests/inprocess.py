"""The in-process grid lives in ``simulations/inprocess.py`` (the comparison runner uses it as a
faster engine, bit-identical to Flower's simulation engine); tests import it from here."""

from simulations.inprocess import InProcessGrid, run_inprocess  # noqa: F401
