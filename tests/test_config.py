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
    ("al-rounds", "many", "'many' is invalid; valid: an integer"),
    ("training-mode", "turbo", "cal-er"),
])
def test_bad_values_name_key_and_valid_choices(key, value, needle):
    with pytest.raises(ConfigError) as e:
        Config.from_run_config({key: value})
    assert key in str(e.value) and needle in str(e.value)


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
