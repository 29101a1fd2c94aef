"""Small helpers shared by tests."""


def without_times(rows):
    """Result rows minus their wall-clock timings: what a deterministic rerun must reproduce."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
