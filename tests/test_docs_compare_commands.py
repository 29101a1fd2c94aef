"""Every comparison command written out in README.md and docs/ (a shell line starting with
``python -m simulations.compare`` or ``fedal compare``) names a suite, methods and seeds that
exist: each is planned with ``--dry-run`` on an empty results folder. The suites themselves take
hours, so this is the part of those commands a test can check."""

import shlex
from pathlib import Path

import pytest

import simulations.compare as C

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = (("python", "-m", "simulations.compare"), ("fedal", "compare"))


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            words = shlex.split(line.split(" #")[0]) if line.startswith(("python -m simulations.compare", "fedal compare")) else []
            for prefix in PREFIXES:
                if tuple(words[: len(prefix)]) == prefix:
                    found.append((f"{doc.name}:{i}", words[len(prefix):]))
    return found


def test_the_docs_write_comparison_commands():
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize("where, args", documented_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_documented_comparison_command_plans(where, args, tmp_path, capsys):
    if "--results" in args:
        i = args.index("--results")
        args = args[:i] + args[i + 2:]
    assert C.main([*args, "--results", str(tmp_path), "--dry-run"]) == 0, where
    out = capsys.readouterr().out
    assert "--list" in args or " to run" in out, where
