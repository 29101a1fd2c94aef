"""Results are data first: one directory per run with its config, one JSON row per AL round
and a summary once the run completes (reports read only these files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from fedal.atomic import write_atomic

# The results layout, defined once: every writer and reader of a run directory (the recorder
# here, the simulation wrappers, the reports) names its files and row keys through these.
CONFIG_FILE = "config.json"  # {"method", "suite", "seed", "config_hash", "config": {...}}
ROUNDS_FILE = "rounds.jsonl"  # one row per AL round, keys below
SUMMARY_FILE = "summary.json"  # {"completed": true, ...}; its presence marks a finished run
Q_FILE = "q.npz"  # optional: the client graph's distances per AL round (diffusion selection)
LOG_FILE = "log.txt"  # the run's console output, when a suite runs it in a subprocess

# Keys of a rounds.jsonl row, as the AL loop writes them (strategies/active_learning.py), and the
# optional ones: "graph" (client-graph scalars, diffusion selection only).
ROUND_KEYS = ("round", "labels", "accuracy", "loss", "chosen_clients", "acquired", "acquired_per_class",
              "labeled_per_class", "clients_with_labels", "time_s")
ROUND_OPTIONAL_KEYS = ("graph",)
# What a report cannot do without; the rest is read when present (older rows lack some).
ROUND_REQUIRED = ("round", "labels", "accuracy")


class RunRecorder:
    """Writes ``config.json``, ``rounds.jsonl`` (appended and flushed per round) and ``summary.json``."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # a rerun into the same directory starts the rows afresh (a partial run is not resumable:
        # client pools live with the clients of that run)
        for name in (ROUNDS_FILE, SUMMARY_FILE, Q_FILE):
            (self.dir / name).unlink(missing_ok=True)
        write_atomic(self.dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
        self.rows: list[dict[str, Any]] = []
        self.arrays: dict[str, Any] = {}

    def add_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.dir / ROUNDS_FILE, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()

    def add_arrays(self, arrays: dict[str, Any]) -> None:
        """Adds named arrays to ``q.npz`` (per-round diagnostics too big for a JSON row, e.g. the
        client graph's q matrix); the file is rewritten whole and atomically each time."""
        import io

        import numpy as np

        self.arrays.update(arrays)
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.arrays)
        write_atomic(self.dir / Q_FILE, buf.getvalue())

    def finish(self, summary: dict[str, Any]) -> None:
        write_atomic(self.dir / SUMMARY_FILE, json.dumps({"completed": True, **summary}, indent=2))
