"""Labeling for a site's query pool (issue #14): annotators (``annotators``: the desk through
which labels are written, simulated annotators, clocks) and the local labeling page (``app``,
the ``fedal-annotate`` command; needs the optional ``label`` dependencies: FastAPI, uvicorn)."""
