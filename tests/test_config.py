import json
import re
import tomllib
from pathlib import Path

import pytest

from fedal.config import DEFAULTS, Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_equals_code_defaults():
    # run_simulation passes an empty run config, so defaults live in code; flwr run reads
    # pyproject: the two must never drift apart
    pj = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pj["tool"]["flwr"]["app"]["config"] == DEFAULTS


def test_defaults_are_the_papers_protocol():
    cfg = Config.from_run_config({})
    assert (cfg.init_clients, cfg.init_points, cfg.al_rounds) == (5, 200, 11)
    assert (cfg.clients_per_round, cfg.points_per_client) == (5, 200)
    assert cfg.label_budget == 12_000
    assert (cfg.client_strategy, cfg.point_strategy) == ("diffusion", "diffusion")
    assert (cfg.knn_k, cfg.rho, cfg.delta, cfg.diffusion_steps) == (7, 0.2, 0.1, 5)


@pytest.mark.parametrize("key,value,needle", [
    ("client-strategy", "magic", "random, entropy, diffusion"),
    ("point-strategy", "nope", "entropy"),
    ("dirichlet-alpha", 0.0, "valid: (0, ∞)"),
    ("dirichlet-alpha", -1, "valid: (0, ∞)"),
    ("dataset", "imagenet-22k", "mnist1d"),
    ("partition", "zipf", "dirichlet, dirichlet-equal, shard, iid"),
    ("points-per-client", 0, "a whole number in [1, ∞)"),
    ("delta", 1.5, "(0, 1)"),
    ("shard-class-fraction", 1.5, "shard-class-fraction = 1.5 is invalid; valid: (0, 1]"),
    ("shard-class-fraction", 0.0, "valid: (0, 1]"),
    ("al-rounds", "many", "'many' is invalid; valid: an integer"),
    ("training-mode", "turbo", "cal-er"),
])
def test_bad_values_name_key_and_valid_choices(key, value, needle):
    with pytest.raises(ConfigError) as e:
        Config.from_run_config({key: value})
    assert key in str(e.value) and needle in str(e.value)


def test_a_fraction_of_every_class_is_accepted():
    # shard-class-fraction's closed end: 1 (every client's shard holds all of each of its classes)
    assert Config.from_run_config({"partition": "shard", "shard-class-fraction": 1}).shard_class_fraction == 1.0


def test_unknown_key_is_rejected_with_valid_keys():
    with pytest.raises(ConfigError, match="unknown run-config key.*clients-per-rnd.*valid keys"):
        Config.from_run_config({"clients-per-rnd": 3})


def test_budget_checks_against_the_federation():
    cfg = Config.from_run_config({"points-per-client": 500, "init-clients": 1, "clients-per-round": 1})
    with pytest.raises(ConfigError, match=r"points-per-client = 500 is invalid; valid: a whole number in \[1, 300\] \(at most the largest client's unlabeled pool, 300\)"):
        cfg.check_against_clients({0: (0, 300), 1: (0, 120)})
    with pytest.raises(ConfigError, match=r"clients-per-round = 5 is invalid; valid: a whole number in \[1, 2\] \(at most the 2 clients\)"):
        Config.from_run_config({"points-per-client": 10, "init-clients": 1}).check_against_clients({0: (0, 300), 1: (0, 120)})


def test_config_hash_ignores_seed_and_output_but_not_method():
    a = Config.from_run_config({"seed": 1, "run-dir": "x"})
    b = Config.from_run_config({"seed": 2, "run-dir": "y"})
    c = Config.from_run_config({"client-strategy": "random"})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_string_values_from_the_cli_are_coerced():
    cfg = Config.from_run_config({"al-rounds": "3", "rho": "0", "freeze-backbone": "false"})
    assert cfg.al_rounds == 3 and cfg.rho == 0.0 and cfg.freeze_backbone is False


def test_training_modes_match_the_continual_module():
    from fedal import config, continual

    assert config.TRAINING_MODES == continual.TRAINING_MODES


# The experiment hash (Config.config_hash, fedal.config.experiment_key) names the experiment a
# site's paid labels belong to, so a key left out of it would let a run of another experiment
# resume on them. The two tables below are the spec, written out here on purpose (not read from
# fedal.config): a key added to DEFAULTS fails the first assert until it is classified.
NOT_IN_HASH = {"seed": 7, "run-dir": "elsewhere", "run-name": "other", "method-name": "M", "suite": "s",
               "min-clients": 3, "wait-timeout": 9.0, "send-timeout": 99.0, "max-retries": 5,
               "retry-backoff": 0.5, "on-client-failure": "stop", "resume": True, "stop-after-round": 2,
               "experiment-id": "exp-7"}
# a valid value other than the base's for every key that defines the experiment
IN_HASH = {
    "dataset": "digits", "data-root": "/data", "partition": "iid", "dirichlet-alpha": 0.5,
    "shard-class-fraction": 0.5, "init-clients": 4, "init-points": 100, "al-rounds": 3,
    "clients-per-round": 4, "points-per-client": 100, "client-strategy": "balanced-diffusion",
    "point-strategy": "entropy", "training-mode": "retrain", "fl-rounds": 3, "local-epochs": 3,
    "batch-size": 16, "learning-rate": 0.01, "pseudo-optimizer": "adam", "pseudo-epochs": 2, "pseudo-lr": 0.01,
    "pseudo-params": "all", "sketch-dim": 8, "knn-k": 5, "rho": 0.5, "delta": 0.3, "diffusion-steps": 3,
    "sigma-scope": "all", "laplacian": "sym", "client-impact": False, "local-k": 5, "local-space": "input",
    "backbone": "mlp", "backbone-weights": "other.pt", "freeze-backbone": True, "device": "cpu",
    "report-label-histogram": False, "labeling": "sync", "async-workers": "entropy,margin",
    "query-pool-low": 5, "query-pool-refill": 40, "annotators-per-site": 3,
    "annotator-latency": "constant:seconds=4", "label-noise": 0.1, "sim-fl-round-s": 10.0, "sim-select-s": 5.0,
    "annotators": "simulated", "labeling-deadline-s": 120.0, "async-budget": "standing",
    "lr-schedule": "constant", "lr-step-rounds": 5, "coverage-steps": 10, "pow-d-candidates": 12,
    "predicted-mix": "argmax", "cumulative-cover": "share", "mix-gate": "all-classes", "numerics": "portable"}
# every key read: asynchronous labeling with people (their keys), both diffusion strategies (the
# keys they declare), a weights file (freeze-backbone needs one on mnist1d)
HASH_BASE = {"labeling": "async", "annotators": "people", "labeling-deadline-s": 60.0,
             "client-strategy": "diffusion", "point-strategy": "diffusion", "backbone-weights": "w.pt",
             "lr-schedule": "step"}
BOTH_CHANGE = {"labeling": {"annotators": "simulated"}}  # people need labeling = async
# keys only another client strategy reads: compared on a base with that strategy
KEY_BASE = {"coverage-steps": {"client-strategy": "diffusion-coverage"},
            "pow-d-candidates": {"client-strategy": "pow-d"},
            "predicted-mix": {"client-strategy": "balanced-divfl"},
            "cumulative-cover": {"client-strategy": "cumulative-divfl"},
            "mix-gate": {"client-strategy": "mix-balance"}}


def test_every_experiment_key_and_only_those_change_the_hash():
    assert set(NOT_IN_HASH) | set(IN_HASH) == set(DEFAULTS) and not set(NOT_IN_HASH) & set(IN_HASH)
    base = Config.from_run_config(HASH_BASE)
    h = base.config_hash()
    for key, value in IN_HASH.items():
        assert value != base.to_run_config()[key], key
        rc = {**HASH_BASE, **KEY_BASE.get(key, {})}
        other = Config.from_run_config({**rc, key: value, **BOTH_CHANGE.get(key, {})})
        assert other.config_hash() != Config.from_run_config(rc).config_hash(), \
            f"{key} = {value!r} leaves the experiment hash unchanged"
    for key, value in NOT_IN_HASH.items():
        assert value != base.to_run_config()[key], key
        assert Config.from_run_config({**HASH_BASE, key: value}).config_hash() == h, key
    # the seed and experiment-id still make another experiment of a site's labels, outside the hash
    assert Config.from_run_config({**HASH_BASE, "seed": 7}).experiment == f"{h}-s7" != base.experiment
    assert Config.from_run_config({**HASH_BASE, "experiment-id": "exp-7"}).experiment == "exp-7"


# Every numeric key's valid range, written out as the spec (docs/method.md and the README's run
# configuration): (key, low, low open, high, high open, whole number, note). Each end is tried on
# both sides, and every refusal names the key, the value and the range in the same words.
NUMBER_RANGES = [
    ("dirichlet-alpha", 0, True, None, False, False, ""),
    ("shard-class-fraction", 0, True, 1, False, False, ""),
    *[(k, 1, False, None, False, True, "") for k in (
        "init-clients", "init-points", "clients-per-round", "points-per-client", "fl-rounds", "local-epochs",
        "batch-size", "pseudo-epochs", "knn-k", "diffusion-steps", "local-k", "min-clients",
        "annotators-per-site")],
    ("al-rounds", 0, False, None, False, True, ""),
    ("sketch-dim", 0, False, None, False, True, "0: off"),
    ("learning-rate", 0, True, None, False, False, ""),
    ("pseudo-lr", 0, True, None, False, False, ""),
    ("wait-timeout", 0, True, None, False, False, "seconds"),
    ("send-timeout", 0, True, None, False, False, "seconds"),
    ("max-retries", 0, False, None, False, True, ""),
    ("retry-backoff", 0, False, None, False, False, "seconds"),
    ("stop-after-round", -1, False, None, False, True, "-1: off"),
    ("rho", 0, False, None, False, False, "0 disables anisotropy"),
    ("delta", 0, True, 1, True, False, ""),
    ("query-pool-low", 0, False, None, False, True, ""),
    ("query-pool-refill", 1, False, None, False, True, ""),
    ("label-noise", 0, False, 1, False, False, ""),
    ("sim-fl-round-s", 0, True, None, False, False, "simulated seconds"),
    ("sim-select-s", 0, False, None, False, False, "simulated seconds"),
    ("labeling-deadline-s", 0, False, None, False, False, "seconds on the run's clock; 0: none"),
    ("lr-step-rounds", 1, False, None, False, True, "FL rounds between two decays"),
]
RANGE_BASE = {"query-pool-low": 0}  # query-pool-refill must also be >= query-pool-low


@pytest.mark.parametrize("key,lo,lo_open,hi,hi_open,whole,note", NUMBER_RANGES, ids=[r[0] for r in NUMBER_RANGES])
def test_every_numeric_key_takes_exactly_its_range(key, lo, lo_open, hi, hi_open, whole, note):
    valid = (("a whole number in " if whole else "") + ("(" if lo_open else "[") + f"{lo:g}, "
             + ("∞)" if hi is None else f"{hi:g}" + (")" if hi_open else "]")) + (f" ({note})" if note else ""))
    step = 1 if whole else 0.5

    def refused(value):
        value = value if whole else float(value)  # the run config holds the key's type
        with pytest.raises(ConfigError) as e:
            Config.from_run_config({**RANGE_BASE, key: value})
        assert str(e.value) == f"{key} = {value!r} is invalid; valid: {valid}"

    def accepted(value):
        assert Config.from_run_config({**RANGE_BASE, key: value}).to_run_config()[key] == value

    refused(lo - step)
    refused(lo) if lo_open else accepted(lo)
    accepted(lo + step if hi is None else (lo + hi) / 2)
    if hi is not None:
        refused(hi + step)
        refused(hi) if hi_open else accepted(hi)
    if whole:  # a fraction that the run config's coercion lets through (a script's Config.replace)
        field = key.replace("-", "_")
        with pytest.raises(ConfigError, match=rf"^{key} = {lo + 1.5} is invalid; valid: {re.escape(valid)}$"):
            Config.from_run_config(RANGE_BASE).replace(**{field: lo + 1.5})


# the keys with a fixed set of values, written out as the spec (the strategies and training modes
# come from their registries, tested with them)
CHOICES = {
    "dataset": "mnist1d, digits, cifar10, cifar100, fashion-mnist, emnist-letters, cinic10",
    "partition": "dirichlet, dirichlet-equal, shard, iid", "pseudo-params": "head, all", "pseudo-optimizer": "gd, adam",
    "sigma-scope": "edges, all", "laplacian": "unnormalized, rw, sym", "local-space": "embedding, input",
    "device": "auto, cpu, cuda", "backbone": "auto, cnn1d, mlp, resnet18, resnet50, resnet101",
    "on-client-failure": "skip, stop", "labeling": "sync, async", "annotators": "simulated, people",
    "async-budget": "selection, standing", "lr-schedule": "constant, step", "predicted-mix": "softmax, argmax, bbse",
    "cumulative-cover": "full, share", "mix-gate": "none, all-classes", "numerics": "native, portable",
}


@pytest.mark.parametrize("key", list(CHOICES) + ["client-strategy", "point-strategy", "training-mode"])
def test_every_choice_key_names_its_valid_values(key):
    from fedal import config

    valid = CHOICES.get(key) or ", ".join({"client-strategy": config.CLIENT_STRATEGIES,
                                           "point-strategy": config.POINT_STRATEGIES,
                                           "training-mode": config.TRAINING_MODES}[key])
    with pytest.raises(ConfigError) as e:
        Config.from_run_config({key: "nope"})
    assert str(e.value) == f"{key} = 'nope' is invalid; valid: {valid}"
    for value in valid.split(", "):  # and each valid value is accepted (alone, as far as it goes)
        if key not in ("annotators", "client-strategy", "training-mode"):
            assert Config.from_run_config({key: value}).to_run_config()[key] == value


@pytest.mark.parametrize("rc,message", [
    ({"client-strategy": "balanced-diffusion", "report-label-histogram": False},
     "client-strategy = 'balanced-diffusion' steers by the labeled set's class counts, which clients report only "
     "with report-label-histogram = true; set it to true or choose another client-strategy (random, entropy, "
     "diffusion, diffusion-coverage, divfl, cumulative-divfl, clustered, pow-d, kcenter)"),
    ({"async-workers": "entropy,nope"},
     "async-workers = 'entropy,nope' is invalid; valid: a comma-separated list of entropy, least-confidence, margin"),
    ({"async-workers": " , "},
     "async-workers = ' , ' is invalid; valid: a comma-separated list of entropy, least-confidence, margin"),
    ({"query-pool-low": 12, "query-pool-refill": 11},
     "query-pool-refill = 11 is invalid; valid: at least query-pool-low = 12"),
    ({"labeling": "async", "stop-after-round": 0},
     "stop-after-round = 0 needs a run that can resume; an asynchronous run with simulated annotators cannot (their "
     "query pools live in the clients' memory): set stop-after-round = -1, or annotators = 'people'"),
    ({"annotators": "people", "labeling-deadline-s": 5.0},
     "annotators = 'people' needs labeling = 'async' (labeling = 'sync'): people label each site's query pool on its "
     "labeling page while the server trains; the synchronous loop asks each client's oracle (its data's labels) "
     "instead; set labeling = \"async\""),
    ({"labeling": "async", "annotators": "people"},
     "annotators = 'people' needs labeling-deadline-s > 0: how many seconds after the last AL round's grants the run "
     "waits for people's labels before it withdraws the open queries and ends (e.g. labeling-deadline-s = 86400 for "
     "a day)"),
    ({"freeze-backbone": True},
     "freeze-backbone = true with the cnn1d backbone needs backbone-weights = <path of a pretrained CNN1D state dict> "
     "(python -m simulations.pretrain writes one); a frozen randomly initialised cnn1d would never learn features"),
    ({"freeze-backbone": True, "dataset": "digits", "backbone-weights": "w.pt"},
     "freeze-backbone = true needs a pretrained backbone; backbone = 'auto' (dataset 'digits'); valid: resnet18, "
     "resnet50, resnet101 (or auto on an image dataset), or cnn1d (auto on mnist1d) with backbone-weights"),
    ({"freeze-backbone": True, "backbone": "mlp"},
     "freeze-backbone = true needs a pretrained backbone; backbone = 'mlp' (dataset 'mnist1d'); valid: resnet18, "
     "resnet50, resnet101 (or auto on an image dataset), or cnn1d (auto on mnist1d) with backbone-weights"),
])
def test_combinations_that_cannot_run_are_refused_saying_why(rc, message):
    with pytest.raises(ConfigError) as e:
        Config.from_run_config(rc)
    assert str(e.value) == message


def test_the_combinations_that_can_run_pass():
    ok = [{"client-strategy": "balanced-diffusion"}, {"query-pool-low": 12, "query-pool-refill": 12},
          {"labeling": "async", "annotators": "people", "labeling-deadline-s": 0.5, "stop-after-round": 0},
          {"labeling": "sync", "stop-after-round": 0}, {"freeze-backbone": True, "backbone-weights": "w.pt"},
          {"freeze-backbone": True, "dataset": "cifar10"}, {"freeze-backbone": True, "backbone": "resnet50"},
          {"freeze-backbone": True, "backbone": "resnet101"}, {"freeze-backbone": True, "backbone": "resnet18"},
          {"freeze-backbone": True, "dataset": "digits", "backbone": "cnn1d", "backbone-weights": "w.pt"}]
    for rc in ok:
        Config.from_run_config(rc)


def test_a_bad_annotator_latency_is_named_with_the_form():
    with pytest.raises(ConfigError, match=r"^annotator-latency = 'gamma:k=2' is invalid; valid: kind:key=value,\.\.\. "
                                          r"e\.g\. lognormal:median=6,sigma=0\.5 \(.+\)$"):
        Config.from_run_config({"annotator-latency": "gamma:k=2"})


def test_worker_measures_and_label_budget():
    cfg = Config.from_run_config({"async-workers": " margin, entropy ,", "init-clients": 3, "init-points": 7,
                                  "al-rounds": 2, "clients-per-round": 4, "points-per-client": 5})
    assert cfg.worker_measures == ("margin", "entropy")
    assert cfg.label_budget == 3 * 7 + 2 * 4 * 5


@pytest.mark.parametrize("key,value,coerced", [
    ("client-impact", "False", False), ("client-impact", "yes", True), ("client-impact", "0", False),
    ("client-impact", "1", True), ("client-impact", "NO", False),
    ("client-impact", 1, True), ("client-impact", 0, False), ("client-impact", "TRUE", True),
    ("knn-k", 5.0, 5), ("knn-k", "6", 6), ("rho", 1, 1.0), ("rho", "0.25", 0.25), ("suite", 3, "3"),
])
def test_run_config_values_are_coerced_to_each_keys_type(key, value, coerced):
    got = Config.from_run_config({key: value}).to_run_config()[key]
    assert got == coerced and type(got) is type(coerced)


@pytest.mark.parametrize("key,value,valid", [
    ("client-impact", "maybe", "true or false"), ("client-impact", 2, "true or false"),
    ("client-impact", 0.5, "true or false"), ("knn-k", 5.5, "an integer"), ("knn-k", True, "an integer"),
    ("knn-k", "five", "an integer"), ("rho", True, "a number"), ("rho", "high", "a number"),
    ("knn-k", None, "an integer"),
])
def test_values_of_the_wrong_type_are_named(key, value, valid):
    with pytest.raises(ConfigError) as e:
        Config.from_run_config({key: value})
    assert str(e.value) == f"{key} = {value!r} is invalid; valid: {valid}"


def test_overrides_are_field_names_and_unknown_ones_are_refused():
    assert Config.from_run_config({"knn-k": 3}, knn_k="4").knn_k == 4
    with pytest.raises(ConfigError, match=r"^knn-k = 'four' is invalid; valid: an integer$"):
        Config.from_run_config(knn_k="four")
    with pytest.raises(ConfigError, match=r"^unknown config field 'knnk'; valid keys: seed, dataset, "):
        Config.from_run_config(knnk=3)
    with pytest.raises(ConfigError, match=r"^unknown run-config key\(s\) \['a', 'b'\]; valid keys: seed, dataset, "):
        Config.from_run_config({"b": 1, "a": 2})


def test_the_federation_checks_name_the_limit_they_hit():
    cfg = Config.from_run_config({"init-clients": 2, "clients-per-round": 2, "points-per-client": 10,
                                  "init-points": 10})
    cfg.check_against_clients({0: (0, 10), 1: (5, 3)})  # the limits themselves pass
    with pytest.raises(ConfigError, match=r"^the federation has no clients; start at least one SuperNode$"):
        cfg.check_against_clients({})
    with pytest.raises(ConfigError, match=r"^init-clients = 2 is invalid; valid: a whole number in \[1, 1\] "
                                          r"\(at most the 1 clients\)$"):
        cfg.check_against_clients({0: (0, 10)})
    with pytest.raises(ConfigError, match=r"^points-per-client = 10 is invalid; valid: a whole number in \[1, 9\] "
                                          r"\(at most the largest client's unlabeled pool, 9\)$"):
        cfg.check_against_clients({0: (0, 9), 1: (0, 2)})
    with pytest.raises(ConfigError, match=r"^init-points = 10 is invalid; valid: a whole number in \[1, 9\]"):
        cfg.replace(points_per_client=5).check_against_clients({0: (0, 9), 1: (0, 2)})


def test_the_hash_leaves_out_what_this_run_never_reads():
    from fedal.config import experiment_key

    def key(rc):
        return experiment_key(Config.from_run_config(rc).to_run_config())

    def same(a, b):
        return Config.from_run_config(a).config_hash() == Config.from_run_config(b).config_hash()

    # a strategy's own keys count only when the run uses that strategy
    assert same({"client-strategy": "random", "knn-k": 3}, {"client-strategy": "random", "knn-k": 9})
    assert not same({"knn-k": 3}, {"knn-k": 9})  # diffusion reads it
    assert same({"point-strategy": "entropy", "local-k": 3}, {"point-strategy": "entropy", "local-k": 9})
    assert "local-k" in key({}) and "local-k" not in key({"point-strategy": "entropy"})
    # asynchronous labeling's keys count only in an asynchronous run
    assert same({"query-pool-low": 1}, {"query-pool-low": 2})
    assert "query-pool-low" not in key({}) and "labeling" not in key({})
    # a recorded config from before "labeling" existed is a synchronous run's
    assert experiment_key({"dataset": "digits", "query-pool-low": 3}) == {"dataset": "digits"}
    assert "query-pool-low" in key({"labeling": "async"}) and key({"labeling": "async"})["labeling"] == "async"
    # the keys added after asynchronous runs were recorded count only away from their default
    for k in ("annotators", "labeling-deadline-s", "async-budget"):
        assert k not in key({"labeling": "async"}), k
    assert key({"labeling": "async", "async-budget": "standing"})["async-budget"] == "standing"
    # and never the keys that only name or place a run
    assert not {"seed", "run-dir", "resume", "experiment-id"} & set(key({"labeling": "async"}))


def test_the_registries_choices_are_module_attributes_and_others_are_not():
    from fedal import config

    assert "diffusion" in config.CLIENT_STRATEGIES and "base" in config.POINT_STRATEGIES
    assert "warm-start" in config.TRAINING_MODES
    with pytest.raises(AttributeError, match=r"^module 'fedal.config' has no attribute 'NOPE'$"):
        config.NOPE  # noqa: B018


def test_the_paper_protocols_hash_is_the_one_its_recorded_runs_carry():
    # the hash names the experiment that sites' paid labels and recorded runs belong to: the
    # defaults hash to the name of the runs recorded in results/ before the asynchronous keys
    # existed (their config.json lacks "labeling": read as a synchronous run)
    from fedal.config import experiment_hash

    recorded = json.loads((ROOT / "results/mnist1d-dirichlet-scratch/Ours/7eee1ae99b6c-s0/config.json").read_text())
    assert "labeling" not in recorded["config"]
    assert experiment_hash(recorded["config"]) == recorded["config_hash"] == "7eee1ae99b6c"
    assert Config.from_run_config({}).config_hash() == "7eee1ae99b6c"


def test_a_training_modes_own_keys_count_only_when_the_run_uses_it(monkeypatch):
    # no training mode declares a run-config key today; the rule is the strategies' rule
    import types

    from fedal import continual
    from fedal.config import DEFAULTS, experiment_key

    modes = {**continual.MODES, "keyed": types.SimpleNamespace(config_keys=("knn-k",))}
    monkeypatch.setattr(continual, "MODES", types.MappingProxyType(modes))
    rc = {**DEFAULTS, "client-strategy": "random", "point-strategy": "entropy"}
    assert "knn-k" not in experiment_key({**rc, "training-mode": "warm-start"})
    assert experiment_key({**rc, "training-mode": "keyed"})["knn-k"] == 7
