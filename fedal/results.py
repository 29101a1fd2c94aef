"""Results are data first: one directory per run with its config, one JSON row per AL round
and a summary once the run completes (reports read only these files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from fedal.atomic import write_atomic


class RunRecorder:
    """Writes ``config.json``, ``rounds.jsonl`` (appended and flushed per round) and ``summary.json``."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any]):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # a rerun into the same directory starts the rows afresh (a partial run is not resumable:
        # client pools live with the clients of that run)
        for name in ("rounds.jsonl", "summary.json", "q.npz"):
            (self.dir / name).unlink(missing_ok=True)
        write_atomic(self.dir / "config.json", json.dumps(config, indent=2, sort_keys=True))
        self.rows: list[dict[str, Any]] = []
        self.arrays: dict[str, Any] = {}

    def add_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.dir / "rounds.jsonl", "a") as f:
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
        write_atomic(self.dir / "q.npz", buf.getvalue())

    def finish(self, summary: dict[str, Any]) -> None:
        write_atomic(self.dir / "summary.json", json.dumps({"completed": True, **summary}, indent=2))
