"""Finished runs under a results root: found by experiment (config hash and seed), reused under
another suite's labels, and checked for the numerics they computed on before new seeds join them.

``simulations/compare.py`` plans and starts runs (its ``PlannedRun``s are the ``run`` arguments
here); this module reads what is already there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fedal.config import experiment_hash
from fedal.numerics import process_env
from fedal.results import CONFIG_FILE, SUMMARY_FILE

NOT_RECORDED = "not recorded"  # a run made before fedal recorded its numerics (fedal/numerics.py)


def finished_runs(results: Path) -> dict[str, list[Path]]:
    """Every finished run directory under ``results``, by ``<hash>-s<seed>`` with the hash
    recomputed from its config.json (``fedal.config.experiment_hash``: runs made before a key
    their strategies never read existed are still found): one walk of the tree."""
    index: dict[str, list[Path]] = {}
    if not results.is_dir():
        return index
    for summary in sorted(results.rglob(SUMMARY_FILE)):
        try:
            finished = json.loads(summary.read_text()).get("completed") is True
        except (OSError, ValueError):
            finished = False  # a corrupted summary is not a finished run; the run is then made afresh
        if finished:
            index.setdefault(_identity(summary.parent), []).append(summary.parent)
    return index


def _uses_client_graph(name) -> bool:
    from fedal import selection

    return name in selection.available() and selection.get(name).needs_pseudo_updates


def _identity(run_dir: Path) -> str:
    """``<experiment hash>-s<seed>`` of a finished run, from its config.json (the directory name
    if that cannot be read)."""
    try:
        meta = json.loads((run_dir / CONFIG_FILE).read_text())
        rc = meta["config"]
        if _uses_client_graph(rc.get("client-strategy")) and "pseudo-optimizer" not in rc:
            # a client-graph run from before the revised probe (one probe after training, exhausted
            # clients in the graph): no configuration today reproduces it
            return f"{run_dir.name}-before-revised-probe"
        return f"{experiment_hash(rc)}-s{int(meta['seed'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.name


def find_identical(run, results: Path, index: dict[str, list[Path]] | None = None) -> Path | None:
    """A finished run elsewhere under ``results`` with the same experiment (config hash + seed).

    The hash leaves out labels (method name, suite, output paths; ``NON_EXPERIMENT_KEYS``) and keys
    the run's strategies never read (``fedal.config.experiment_key``), and runs are deterministic
    under their seed, so such a run *is* this run: e.g. the
    training-modes suite's warm-start runs are the Ent+Ent runs of the warm-start comparisons.
    ``index``: ``finished_runs(results)``, when many runs are looked up.
    """
    index = finished_runs(results) if index is None else index
    own = run.run_dir.resolve()
    return next((d for d in index.get(run.run_dir.name, []) if d.resolve() != own), None)


def reuse(run, source: Path) -> None:
    """Copy an identical finished run into this run's directory under this run's labels."""
    tmp = run.run_dir.with_name(run.run_dir.name + ".reusing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    cfg_path = tmp / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"method": run.method.name, "suite": run.suite.name, "reused_from": str(source)})
    cfg.setdefault("config", {}).update({"method-name": run.method.name, "suite": run.suite.name})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    shutil.rmtree(run.run_dir, ignore_errors=True)  # an unfinished attempt of this run, if any
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(run.run_dir)  # atomic: a half-copied run is never mistaken for a finished one


def _finished_goldens(cell: Path) -> dict[str, int]:
    """Finished runs in a method's directory, counted by the golden hash they computed on."""
    counts: dict[str, int] = {}
    for summary in sorted(cell.glob(f"*/{SUMMARY_FILE}")):
        try:
            if json.loads(summary.read_text()).get("completed") is not True:
                continue
            env = json.loads((summary.parent / CONFIG_FILE).read_text()).get("environment") or {}
        except (OSError, ValueError):
            continue
        key = str(env.get("golden", NOT_RECORDED))
        counts[key] = counts.get(key, 0) + 1
    return counts


def golden_here(numerics: str) -> str:
    """The golden hash this machine computes under ``numerics``, in a fresh process: PyTorch and
    MKL choose their kernels once per process, so this one's may not be the run's."""
    code = "import sys; from fedal import numerics as n; n.apply(sys.argv[1]); print(n.golden())"
    out = subprocess.run([sys.executable, "-c", code, numerics], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ, **process_env(numerics)})
    if out.returncode != 0:
        raise SystemExit(f"numerics = {numerics} cannot run here: {out.stderr.strip().splitlines()[-1]}")
    return out.stdout.strip().splitlines()[-1]


def numerics_conflicts(todo: list) -> list[str]:
    """One line per method directory whose finished runs computed on other numerics than the
    new seeds would here (a golden that differs, or none recorded). A cell's seeds are samples
    of one experiment only on one golden: a table pooling two machines' seeds says less than it
    seems to, and its paired tests pair two environments."""
    lines, here = [], {}
    for cell, numerics in {r.run_dir.parent: r.run_config.get("numerics", "native") for r in todo}.items():
        counts = _finished_goldens(cell)
        if not counts:
            continue
        if set(counts) != {NOT_RECORDED} and numerics not in here:
            here[numerics] = golden_here(numerics)
        mine = here.get(numerics, "?")
        if set(counts) != {mine}:
            seen = "; ".join(f"{n} on {'numerics ' + g if g == NOT_RECORDED else 'golden ' + g}" for g, n in counts.items())
            lines.append(f"{cell}: finished runs {seen}; new runs here compute "
                         f"{'golden ' + mine if mine != '?' else 'a golden of their own'} (numerics = {numerics})")
    return lines
