"""Per-message timings of a deployed ClientApp for the deployment benchmark
(simulations/benchmarks/bench_deployment.py): with ``FEDAL_CLIENT_TIMING=<file>`` in a
SuperNode's environment, every handled message appends one JSON line there with the handler's
time and how long the ClientApp process had run before it (process start, imports, FAB
loading), read from Linux's /proc. Without the variable nothing is measured."""

from __future__ import annotations

import json
import os
import time


def process_age(now: float) -> float:
    """Seconds since this process started (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return now - (btime + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return float("nan")


def record_if_asked(message_type: str, context, t0: float) -> None:
    """One JSON line for a message of ``message_type`` whose handler started at ``t0`` (epoch
    seconds), when ``FEDAL_CLIENT_TIMING`` names a file; ``type`` is the handler's name
    ("info", "train", "probe", "acquire", "labeling")."""
    path = os.environ.get("FEDAL_CLIENT_TIMING")
    if not path:
        return
    now = time.time()
    line = {"type": message_type.split(".")[-1], "node": str(context.node_config.get("client-id", context.node_id)),
            "pid": os.getpid(), "before-handler-s": round(process_age(t0), 3), "handler-s": round(now - t0, 3),
            "at": now}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
