"""The Flower App Bundle (FAB) that `flwr run` ships holds the app's code and nothing else.

The FAB is built the way Flower 1.41 builds it (``build_fab_from_disk``, called by ``flwr run``,
and the ``flwr build`` command) from a copy of this checkout, to which run outputs, an
environment and data are added, so the test sees what a user's working folder looks like.
"""

import io
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("fedal", "strategies")  # what the ServerApp and ClientApp import
NEVER = ("results/", "reports/", "runs/", "tests/", ".venv/", "simulations/", "data/", ".git/", "docs/")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # flwr build requires the folder name to be a valid app name; the checkout may be named anything
    dst = tmp_path_factory.mktemp("bundle") / "fedal"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache"))
    for junk in ("runs/run-1/rows.json", ".venv/lib/python3.11/site.py", "data/site.json",
                 "results/extra/result.json"):
        (dst / junk).parent.mkdir(parents=True, exist_ok=True)
        (dst / junk).write_text("{}")
    return dst


def fab_names(fab: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(fab)).namelist()


@pytest.fixture(scope="module")
def fab(app):
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app)


def test_the_bundle_holds_the_code_and_nothing_else(app, fab):
    names = fab_names(fab)
    shipped = [n for n in names if n not in ("pyproject.toml", ".info/CONTENT")]
    assert not [n for n in shipped if n.startswith(NEVER)]
    assert {n.split("/")[0] for n in shipped} <= {*CODE_DIRS, "README.md"}
    # every module of the code folders is shipped (a new module must not be left behind)
    on_disk = sorted(p.relative_to(app).as_posix() for d in CODE_DIRS for p in (app / d).rglob("*.py")
                     if "__pycache__" not in p.parts and not p.name.startswith("test_"))
    assert sorted(n for n in shipped if n.endswith(".py")) == on_disk
    for must in ("pyproject.toml", "strategies/server_app.py", "fedal/client_app.py", "strategies/active_learning.py"):
        assert must in names
    # Flower stores the files uncompressed: the code and README weighed 0.6 MB in November 2026;
    # a run's results or reports would add megabytes (Flower's cap is 10 MB)
    assert len(fab) < 1_500_000, f"the FAB is {len(fab):,} bytes; did results or reports slip in?"


def test_the_flwr_build_command_makes_the_same_bundle(app, fab, tmp_path):
    flwr = Path(sys.executable).with_name("flwr")
    if not flwr.exists():
        pytest.skip("the flwr command is not installed next to this Python")
    r = subprocess.run([str(flwr), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = tmp_path.glob("fedal.fedal.*.fab")
    assert sorted(fab_names(built.read_bytes())) == sorted(fab_names(fab))


def test_the_apps_import_from_the_bundle_alone(fab, tmp_path):
    """The components load from the unpacked FAB with only installed packages next to it, as
    on a SuperNode; -S keeps this checkout's editable install (a .pth file) off the path."""
    unpacked = tmp_path / "app"
    zipfile.ZipFile(io.BytesIO(fab)).extractall(unpacked)
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import strategies.server_app, fedal.client_app\n"
        "mods = [m for n, m in sys.modules.items() if n.split('.')[0] in ('fedal', 'strategies', 'simulations')]\n"
        "outside = [m.__name__ for m in mods if not (getattr(m, '__file__', '') or '').startswith(sys.argv[1])]\n"
        "assert not outside, outside\n"
        "assert not any(m.__name__.startswith('simulations') for m in mods)\n"
        "print(len(mods))\n"
    )
    site = sysconfig.get_paths()["purelib"]
    r = subprocess.run([sys.executable, "-S", "-c", code, str(unpacked), site], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) > 5
