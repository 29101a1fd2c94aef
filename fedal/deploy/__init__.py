"""Tools for running fedal on several machines (SuperLink + SuperNodes): see docs/deployment.md."""

# The environment every Flower process fedal starts gets (scripts, the simulation engine, the
# local deployment, tests): no telemetry, no update check, no Ray usage stats, and SuperNodes
# that never install dependencies at run time (the Makefile exports the same).
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def parse_flwr_json(stdout: str) -> dict:
    """The JSON object a ``flwr ... --format json`` command printed (flwr may print lines before
    it); ValueError when there is none."""
    import json

    return json.loads(stdout[stdout.index("{"):])
