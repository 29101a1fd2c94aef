"""Every recorded run keeps its experiment hash (fedal.config.experiment_hash): the hash names a
run's directory (``<hash>-s<seed>``), the comparison runner reuses a finished run by it
(simulations/compare.py) and, through the experiment id, it names the sites' pool stores. A
change to what the hash keeps (``experiment_key``) that alters the hash of a run in results/
would orphan it, so this test recomputes the hash of every results/**/config.json and compares
it with the run's recorded ``config_hash`` and the hash in its directory's name.

One documented exception, older than this test: the runs recorded before issue #11 (commit
bfd420b, "strategy-aware experiment hash") were hashed by the first rule, every key but the
naming ones (seed, run-dir, run-name, method-name, suite). Their configs predate the
``pseudo-optimizer`` key (added in the same change), so they are told apart by its absence, and
the first rule reproduces their hashes exactly; a run recorded since must match the current rule.
A run the comparison runner reused (``reused_from``: a copy of an identical finished run,
simulations/compare.py ``reuse``) keeps its source's config.json, hash included, in a directory
named by the hash the runner looked it up under: the source's, or (copied after issue #11 from
a run recorded before it) the current rule's.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from fedal.config import experiment_hash, experiment_key

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("results/**/config.json"))
FIRST_RULE_LEFT_OUT = ("seed", "run-dir", "run-name", "method-name", "suite")  # fedal/config.py before bfd420b


def first_rule_hash(config: dict) -> str:
    kept = {k: v for k, v in config.items() if k not in FIRST_RULE_LEFT_OUT}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def test_there_are_recorded_runs_to_check():
    assert len(CONFIGS) > 200


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.parent.relative_to(ROOT / "results")))
def test_a_recorded_run_keeps_its_hash(path):
    meta = json.loads(path.read_text())
    recorded, config = meta["config_hash"], meta["config"]
    named = re.fullmatch(r"(?:.+-)?([0-9a-f]{12})-s(\d+)(?:-.+)?", path.parent.name)
    if named is not None:  # the directory carries the hash it was recorded (or reused) under, and the seed
        assert int(named.group(2)) == meta["seed"]
        assert named.group(1) == recorded or ("reused_from" in meta and named.group(1) == experiment_hash(config))
    if "pseudo-optimizer" not in config and experiment_hash(config) != recorded:
        assert first_rule_hash(config) == recorded  # recorded before the strategy-aware hash (docstring)
    else:
        assert experiment_hash(config) == recorded


def test_an_asynchronous_runs_hash_keeps_its_point_strategy():
    # an asynchronous run's query workers rank by async-workers' measures and never read
    # point-strategy, yet it stays in the hash: asynchronous runs (reports/async-labeling) were
    # recorded with it, and dropping it would change their hashes (fedal.config.experiment_key)
    key = experiment_key({"labeling": "async", "point-strategy": "entropy", "client-strategy": "random"})
    assert key["point-strategy"] == "entropy"



# client-rule keys that came after runs reading them were recorded: (strategies, recorded default, another value)
LATER_RULE_KEYS = {"predicted-mix": (("balanced-diffusion", "balanced-divfl"), "softmax", "argmax"),
                   "cumulative-cover": (("cumulative-divfl",), "full", "share")}


@pytest.mark.parametrize("key", list(LATER_RULE_KEYS))
def test_runs_recorded_before_a_later_rule_key_keep_their_hash_with_it_at_its_default(key):
    # a run repeated today carries the key at its default and must find the recorded one (compare's
    # reuse); another value is another experiment
    strategies, default, other = LATER_RULE_KEYS[key]
    runs = [p for p in CONFIGS if json.loads(p.read_text())["config"].get("client-strategy") in strategies]
    assert len(runs) >= 5
    for path in runs:
        meta = json.loads(path.read_text())
        if meta["config"].get(key, default) != default:
            continue  # recorded with the key at another value (the general test above checks it)
        config = {k: v for k, v in meta["config"].items() if k != key}
        if "pseudo-optimizer" not in config:
            continue  # hashed by the first rule (module docstring)
        assert experiment_hash({**config, key: default}) == meta["config_hash"], path
        assert experiment_hash({**config, key: other}) != meta["config_hash"], path
