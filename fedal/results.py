"""Results are data first: one directory per run with its config, one JSON row per AL round
and a summary once the run completes (reports read only these files)."""

from __future__ import annotations

import json
import sys
import time
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
CHECKPOINT_FILE = "checkpoint.npz"  # the server's state after the last completed AL round (fedal.checkpoint)

# Keys of a rounds.jsonl row, as the AL loop writes them (strategies/active_learning.py): those of
# every row, then its labeling policy's (strategies/labeling.py, strategies/async_policy.py), and
# the optional ones: "graph" (client-graph scalars, diffusion selection only), "failures" (only in a
# round where a client failed a step: [{"client", "step", "al_round", "fl_round", "reason"}]) and
# "standing_granted" (async-budget = standing).
ROUND_KEYS = ("round", "labels", "accuracy", "loss", "chosen_clients", "acquired", "labeled_per_class",
              "clients_with_labels", "time_s")
POLICY_ROUND_KEYS = {"sync": ("acquired_per_class",),
                     "async": ("sim_time_s", "sim_round_start_s", "paid", "granted", "open_queries", "tail")}
ROUND_OPTIONAL_KEYS = ("graph", "failures", "standing_granted")
# What a report cannot do without; the rest is read when present (older rows lack some).
ROUND_REQUIRED = ("round", "labels", "accuracy")


def run_directory(cfg) -> Path:
    """``run-dir/<run-name>``; without a run name ``<client>+<point strategy>-<config hash>-s<seed>``,
    with ``-<experiment-id>`` appended when one is given: experiment-id is no part of the config
    hash, and two runs differing only in it must not share a directory (``RunRecorder``
    refuses a directory that holds another run's results). ``cfg``: a ``fedal.config.Config``."""
    name = cfg.run_name or (f"{cfg.client_strategy}+{cfg.point_strategy}-{cfg.config_hash()}-s{cfg.seed}"
                            + (f"-{cfg.experiment_id}" if cfg.experiment_id else ""))
    return Path(cfg.run_dir) / name


def run_metadata(cfg) -> dict:
    """What config.json records about a run (the reports read it; ``experiment`` with the config
    hash and seed says which run a directory holds)."""
    from fedal.numerics import fingerprint

    return {"config": cfg.to_run_config(), "seed": cfg.seed, "config_hash": cfg.config_hash(),
            "experiment": cfg.experiment, "environment": fingerprint(cfg.numerics),
            "method": cfg.method_name or f"{cfg.client_strategy}+{cfg.point_strategy}",
            "suite": cfg.suite, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}


class ResultsMismatch(RuntimeError):
    """A resumed run's rounds.jsonl disagrees with its checkpoint, or a new run's directory holds
    another run's results."""


def run_identity(config: dict[str, Any]) -> tuple | None:
    """(experiment, config hash, seed) of a run from its config.json (older files lack
    ``experiment``: it is their ``experiment-id``, else ``<config hash>-s<seed>``); None when the
    file does not say."""
    if "config_hash" not in config or "seed" not in config:
        return None
    exp = config.get("experiment") or (config.get("config") or {}).get("experiment-id") \
        or f"{config['config_hash']}-s{config['seed']}"
    return exp, config["config_hash"], config["seed"]


class RunRecorder:
    """Writes ``config.json``, ``rounds.jsonl`` (appended and flushed per round) and ``summary.json``.

    A new run into a directory starts the rows afresh when the directory holds nothing or a run of
    the same experiment, config hash and seed (``run_identity``: the same run made again); a
    directory holding another run's results is refused before anything is written, so two runs
    never overwrite each other. ``resume=True`` keeps the rows: ``config.json`` gains a
    ``"resumed"`` list of start times, and ``resume_from(rows)`` then rewrites the rows to the
    checkpoint's after checking that the file agrees with it."""

    def __init__(self, run_dir: str | Path, config: dict[str, Any], resume: bool = False):
        self.dir = Path(run_dir)
        if not resume:
            self._check_free(config)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.arrays: dict[str, Any] = {}
        if resume:
            old = {}
            if (self.dir / CONFIG_FILE).exists():
                old = json.loads((self.dir / CONFIG_FILE).read_text())
            self._check_same_numerics(old, config)
            config = {**config, "started": old.get("started", config.get("started")),
                      "resumed": [*old.get("resumed", []), config.get("started")]}
            (self.dir / SUMMARY_FILE).unlink(missing_ok=True)
            if (self.dir / Q_FILE).exists():
                import numpy as np

                with np.load(self.dir / Q_FILE) as z:
                    self.arrays = {k: z[k] for k in z.files}
        else:
            for name in (ROUNDS_FILE, SUMMARY_FILE, Q_FILE, CHECKPOINT_FILE):
                (self.dir / name).unlink(missing_ok=True)
        write_atomic(self.dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))

    def _check_same_numerics(self, old: dict[str, Any], config: dict[str, Any]) -> None:
        """A run resumed on kernels that compute other bits (``fedal.numerics.golden``) would mix
        two environments in one run's rows: refused before anything is written. Runs recorded
        before the golden existed say nothing and resume as before."""
        theirs = (old.get("environment") or {}).get("golden")
        ours = (config.get("environment") or {}).get("golden")
        if theirs is None or ours is None or theirs == ours:
            return
        env = old["environment"]
        raise ResultsMismatch(
            f"{self.dir} holds a run begun on other numerics (golden {theirs}: {env.get('cpu', '?')}, "
            f"{env.get('cpu_capability', '?')} kernels, numerics = {env.get('numerics', '?')}); this process "
            f"computes golden {ours}, so the resumed rounds would not continue the recorded ones. Resume it on "
            "the first kind of machine, start it afresh (move the directory away), or make runs with "
            "numerics = portable, which computes alike on every x86-64 CPU with AVX2; nothing was written")

    def _check_free(self, config: dict[str, Any]) -> None:
        try:
            old = json.loads((self.dir / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return  # nothing there (or no readable config): nothing of another run to keep
        theirs, ours = run_identity(old), run_identity(config)
        if theirs is None or ours is None or theirs == ours:
            return
        done = "a completed run" if (self.dir / SUMMARY_FILE).exists() else "an unfinished run"
        raise ResultsMismatch(
            f"{self.dir} holds {done} of experiment {theirs[0]!r} (config hash {theirs[1]}, seed {theirs[2]}, "
            f"started {old.get('started', '?')}); this run is experiment {ours[0]!r} (config hash {ours[1]}, seed "
            f"{ours[2]}) and would overwrite its results. Give this run its own run-name (or leave run-name "
            "empty: the default name includes the config hash, seed and experiment-id), or move the old "
            "results away; nothing was written")

    def resume_from(self, rows: list[dict[str, Any]]) -> None:
        """Continue after the checkpoint's ``rows``. The rows on file must agree with them: the
        file may lack the last ones or hold one more (a crash between writing a row and the
        checkpoint), which is dropped, as the resumed run writes that round again; any other
        difference means the directory holds another run's results, and is refused."""
        path = self.dir / ROUNDS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        on_file = []
        for i, line in enumerate(lines):
            try:
                on_file.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ResultsMismatch(f"{path}: line {i + 1} is not JSON; move the results away, "
                                          "or set resume = false to start afresh") from None
                on_file.append(None)  # a row cut short by the crash: dropped like a whole extra row
        expect = json.loads(json.dumps(rows, sort_keys=True))
        common = min(len(on_file), len(expect))
        if on_file[:common] != expect[:common] or len(on_file) > len(expect) + 1:
            bad = next((i for i in range(common) if on_file[i] != expect[i]), common)
            raise ResultsMismatch(
                f"{path} does not match the checkpoint (row {bad} differs, or the file holds "
                f"{len(on_file)} rows where the checkpoint has {len(expect)}): the directory holds "
                "another run's results; move them away, or set resume = false to start afresh")
        write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        self.rows = list(rows)

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
