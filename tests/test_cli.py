"""The ``fedal`` command (fedal/cli.py, issue #20): every subcommand has its help and delegates to
the module that does the work; ``fedal site check --dataset`` refuses data that does not fit the
run's dataset; ``fedal site export`` writes a site file from the training split only; ``fedal
certs add`` adds one SuperNode key to an existing folder and changes nothing else."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedal.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def leaves():
    for name, entry in COMMANDS.items():
        if isinstance(entry, dict):
            yield from ([name, sub] for sub in entry)
        else:
            yield [name]


@pytest.mark.parametrize("words", list(leaves()), ids=" ".join)
def test_every_subcommand_has_its_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    want = f"usage: fedal {' '.join(words)} "  # every command names itself as the user called it
    assert usage.startswith(want), usage[:200]


def test_the_top_level_lists_the_commands_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main(["site", "--help"]) == 0 and "export" in capsys.readouterr().out
    assert main(["sight"]) == 2
    assert "unknown command 'sight'; valid commands: run, compare" in capsys.readouterr().err
    assert main(["certs", "remove"]) == 2
    assert "unknown command 'remove'; valid commands: init, add" in capsys.readouterr().err


def test_the_console_script_is_installed_and_runs(tmp_path):
    exe = Path(sys.executable).parent / "fedal"
    assert exe.exists(), "pip install -e . installs the fedal console script"
    r = subprocess.run([str(exe), "site", "check", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--dataset" in r.stdout


# ---------------------------------------------------------------------------------- fedal site
def test_site_check_with_dataset_refuses_data_that_does_not_fit(tmp_path, capsys):
    rng = np.random.default_rng(0)
    square = tmp_path / "square.npz"
    np.savez(square, x=rng.random((30, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 30))
    assert main(["site", "check", str(square)]) == 0  # readable data: fine without a dataset
    capsys.readouterr()
    assert main(["site", "check", str(square), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "the site's points are float32 of shape (8, 8), but the run's dataset = 'digits' expects float32 " \
           "points of shape (64,)" in err
    classes = tmp_path / "classes.npz"
    np.savez(classes, x=rng.random((30, 64), dtype=np.float32), y=np.arange(30) % 12)
    assert main(["site", "check", str(classes), "--dataset", "digits"]) == 2
    assert "the labels use class id 11" in capsys.readouterr().err
    flat = tmp_path / "flat.npz"
    np.savez(flat, x=rng.random((30, 64), dtype=np.float32), y=np.arange(30) % 10)
    assert main(["site", "check", str(flat), "--dataset", "digits", "--client-id", "clinic-1"]) == 0
    assert "fits:        dataset 'digits' (float32 (64,), 10 classes)" in capsys.readouterr().out


def test_site_export_writes_a_part_of_the_training_split_and_names_the_test_split(tmp_path, capsys):
    from fedal.data import load_dataset
    from fedal.data.export import export_site

    out = tmp_path / "site-2" / "data.npz"
    assert main(["site", "export", "--dataset", "digits", "--part", "2", "--of", "3", "--points", "50",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out}: 50 points of the training split of digits (1438 points), part 2 of 3" in said
    assert "the server evaluates on the test split of digits: 359 points" in said and "no site file holds" in said
    ds = load_dataset("digits")
    with np.load(out) as z:
        x, y = z["x"], z["y"]
    again = export_site("digits", tmp_path / "again.npz", 2, 3, points=50)
    assert np.array_equal(x, ds.x_train[again.train_indices]) and np.array_equal(y, ds.y_train[again.train_indices])
    first = export_site("digits", tmp_path / "first.npz", 1, 3)
    assert not set(first.train_indices) & set(again.train_indices)  # parts are disjoint
    assert main(["site", "check", str(out), "--dataset", "digits"]) == 0  # it fits the run's dataset
    capsys.readouterr()
    assert main(["site", "export", "--dataset", "digits", "--out", str(out)]) == 2  # never overwritten silently
    assert "exists; a site's paid labels are tied to its data" in capsys.readouterr().err
    assert main(["site", "export", "--dataset", "digits", "--part", "1", "--of", "3", "--points", "999",
                 "--out", str(tmp_path / "big.npz")]) == 2
    assert "--points 999: part 1 of 3 of the training split of digits holds 480 points" in capsys.readouterr().err
    assert main(["site", "export", "--dataset", "digits", "--no-labels", "--points", "5",
                 "--out", str(tmp_path / "people.npz")]) == 0
    with np.load(tmp_path / "people.npz") as z:
        assert z.files == ["x"]


# ---------------------------------------------------------------------------------- fedal certs
def test_certs_add_gives_a_site_joining_later_its_key_and_touches_nothing_else(tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    out = tmp_path / "certs"
    assert main(["certs", "init", "--out", str(out), "--hosts", "127.0.0.1", "--supernodes", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["certs", "add", "--out", str(out)]) == 0
    assert f"flwr supernode register {out / 'supernode-3.pub'}" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) - set(before) == {"supernode-3.key", "supernode-3.pub"}
    assert all(after[name] == data for name, data in before.items())  # nothing else changed
    priv, pub = out / "supernode-3.key", out / "supernode-3.pub"
    assert oct(os.stat(priv).st_mode & 0o777) == "0o600"
    assert try_load_public_key(pub)  # what `flwr supernode register` runs
    key, public = _try_setup_client_authentication(
        argparse.Namespace(auth_supernode_private_key=str(priv), auth_supernode_public_key=None))
    assert public.public_numbers() == serialization.load_ssh_public_key(pub.read_bytes()).public_numbers()

    # by name; the old module entry point takes the subcommand too
    from fedal.deploy.certs import main as certs_main

    assert certs_main(["add", "--out", str(out), "--name", "clinic-9"]) == 0
    assert (out / "supernode-clinic-9.pub").exists()
    assert certs_main(["add", "--out", str(out), "--name", "clinic-9"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["certs", "add", "--out", str(tmp_path / "nowhere")]) == 2
    assert "holds no ca.crt" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- fedal rehearse
def test_rehearse_grants_every_site_budget_and_refuses_a_protocol_small_sites_cannot_serve(tmp_path, capsys):
    from fedal.deploy.rehearsal import rehearsal_config

    rc = rehearsal_config(3, {"al-rounds": 1})
    assert rc["init-clients"] == rc["clients-per-round"] == rc["min-clients"] == 3 and rc["al-rounds"] == 1
    assert main(["rehearse", "--workdir", str(tmp_path / "r"), "--supernodes", "2", "--points-per-site", "20",
                 "--run-config", "al-rounds=5"]) == 2
    assert "a site of 20 points cannot serve init-points = 10 + al-rounds = 5 x points-per-client = 10 = 60 " \
           "labels" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything started
    assert main(["rehearse", "--workdir", str(tmp_path / "r"), "--run-config", "al-roundz=5"]) == 2
    assert "unknown run-config key(s) ['al-roundz']" in capsys.readouterr().err
