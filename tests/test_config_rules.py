"""The config's newer rules, written out as the spec a user reads: each refusal's whole message
(the bad key, the bad value, the valid choices), each boundary on both sides, and what the
experiment hash does with a recorded config that lacks a newer key. In-process Config objects
only: this file is one of the tests ``make mutate`` runs against fedal/config.py's mutants
(issue #22), so it stays fast."""

import pytest

from fedal.config import Config, ConfigError, experiment_key


def refusal(rc: dict) -> str:
    """The message of the ConfigError (exactly that type: a plain ValueError or TypeError means
    the config's check itself broke) that ``rc`` gets."""
    with pytest.raises(ConfigError) as e:
        Config.from_run_config(rc)
    return str(e.value)


def test_coverage_steps_is_an_even_integer_of_at_least_two():
    # diffusion-coverage's kernel takes heat profiles P^(H/2) e_z: H must be even and H/2 >= 1
    for h in (2, 4, 20):
        assert Config.from_run_config({"client-strategy": "diffusion-coverage", "coverage-steps": h}).coverage_steps == h
        assert Config.from_run_config({"coverage-steps": h}).coverage_steps == h
    for h in (0, 1, 3, 5, -2):
        assert refusal({"coverage-steps": h}) == (
            f"coverage-steps = {h} is invalid; valid: an even integer >= 2 (diffusion-coverage's kernel is a "
            "cosine of heat profiles P^(H/2) e_z)")


def test_diffusion_coverage_refuses_the_random_walk_laplacian_only():
    assert refusal({"client-strategy": "diffusion-coverage", "laplacian": "rw"}) == (
        "client-strategy = 'diffusion-coverage' needs a symmetric diffusion operator: laplacian = 'rw' is "
        "not valid with it; valid: unnormalized, sym")
    for lap in ("unnormalized", "sym"):
        assert Config.from_run_config({"client-strategy": "diffusion-coverage", "laplacian": lap}).laplacian == lap
    # the other strategies that diffuse take the random-walk operator
    assert Config.from_run_config({"client-strategy": "diffusion", "laplacian": "rw"}).laplacian == "rw"


def test_pow_d_candidates_is_zero_or_at_least_clients_per_round():
    # 0 means 2 × clients-per-round; otherwise pow-d samples d >= clients-per-round candidates
    for d in (0, 5, 6, 12):
        assert Config.from_run_config({"client-strategy": "pow-d", "pow-d-candidates": d}).pow_d_candidates == d
    assert Config.from_run_config({"clients-per-round": 3, "pow-d-candidates": 3}).pow_d_candidates == 3
    for d in (1, 4):
        assert refusal({"client-strategy": "pow-d", "pow-d-candidates": d}) == (
            f"pow-d-candidates = {d} is invalid; valid: 0 (2 × clients-per-round) or at least "
            "clients-per-round = 5")
    assert refusal({"clients-per-round": 3, "pow-d-candidates": 2}) == (
        "pow-d-candidates = 2 is invalid; valid: 0 (2 × clients-per-round) or at least clients-per-round = 3")
    # below 0: the range, in the words of every numeric key
    assert refusal({"client-strategy": "pow-d", "pow-d-candidates": -1}) == (
        "pow-d-candidates = -1 is invalid; valid: a whole number in [0, ∞) (0: 2 × clients-per-round)")


def test_pow_d_candidates_must_be_whole_where_it_is_set_in_code():
    # Config.replace does not coerce: the range check itself must refuse a fraction
    cfg = Config.from_run_config({"client-strategy": "pow-d"})
    with pytest.raises(ConfigError) as e:
        cfg.replace(pow_d_candidates=12.5)
    assert str(e.value) == (
        "pow-d-candidates = 12.5 is invalid; valid: a whole number in [0, ∞) (0: 2 × clients-per-round)")


def test_experiment_id_names_folders_so_it_is_a_safe_name():
    msg = ("experiment-id = {!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a "
           "letter or digit")
    for bad in ("-x", ".x", "a b", "a/b", "x" * 65):
        assert refusal({"experiment-id": bad}) == msg.format(bad)
    for good in ("", "x", "exp-7", "A.b_c-9", "x" * 64):
        assert Config.from_run_config({"experiment-id": good}).experiment_id == good


def test_the_datasets_are_a_module_attribute_from_the_registry():
    from fedal import config
    from fedal.data.registry import dataset_names

    assert config.DATASETS == dataset_names() and "mnist1d" in config.DATASETS
    with pytest.raises(AttributeError):
        config.datasets  # noqa: B018  (the name is DATASETS, exactly)


def test_a_recorded_config_without_lr_schedule_ran_the_constant_one():
    # configs recorded before lr-schedule existed ran a constant rate: read so, lr-step-rounds
    # (read only by the step schedule) stays out of their key, as labeling's keys do for a
    # config recorded before "labeling" existed
    assert experiment_key({"dataset": "digits", "lr-step-rounds": 5}) == {"dataset": "digits"}
    assert experiment_key({"dataset": "digits", "lr-schedule": "step", "lr-step-rounds": 5}) == {
        "dataset": "digits", "lr-schedule": "step", "lr-step-rounds": 5}
