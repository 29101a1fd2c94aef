"""A site's data file for a rehearsal (``fedal site export``), cut from a benchmark data set.

    fedal site export --dataset digits --part 1 --of 3 --points 120 --out /srv/fedal/site-1/data.npz

writes part 1 of 3 of the data set's **training split**, partitioned as a simulation partitions
it (``fedal.data.partition_indices``: ``iid``, ``dirichlet`` or ``shard``, with the run's seed),
as an ``.npz`` site file (``x``, and ``y`` as the oracle's answers unless ``--no-labels``), the
format ``data-path`` takes (``fedal.data.site``). The server evaluates every global model on the
data set's **test split**, which no exported file holds, so a rehearsal's sites never overlap
the server's test set; the command says which points form it (``test_split_note``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

class ExportError(ValueError):
    """The site file cannot be written as asked; the message names the value and the valid range."""


@dataclass(frozen=True)
class Exported:
    path: Path
    n_points: int
    train_indices: np.ndarray  # indices into the data set's training split
    n_train: int
    n_test: int
    labels: bool


def test_split_note(dataset: str, n_test: int) -> str:
    from fedal.data.registry import get_dataset

    how = get_dataset(dataset).test_split  # how the data set's test split is fixed
    return f"the server evaluates on the test split of {dataset}: {n_test} points, {how}; no site file holds any of them"


def export_site(dataset: str, out: str | Path, part: int, parts: int, *, points: int = 0, partition: str = "iid",
                alpha: float = 0.1, class_fraction: float = 0.2, seed: int = 0, labels: bool = True,
                data_root: str = "", force: bool = False) -> Exported:
    """Write part ``part`` (1-based) of ``parts`` of ``dataset``'s training split to ``out``;
    ``points`` > 0 keeps the first that many points of the part."""
    from fedal.atomic import atomic_file
    from fedal.data import load_dataset, partition_indices

    out = Path(out).expanduser()
    if parts < 1 or not 1 <= part <= parts:
        raise ExportError(f"--part {part} --of {parts}: give 1 <= part <= of")
    if points < 0:
        raise ExportError(f"--points {points} must be >= 0 (0: the whole part)")
    if out.suffix.lower() != ".npz":
        raise ExportError(f"--out {out} must end in .npz (a site file: x and y arrays)")
    if out.exists() and not force:
        raise ExportError(f"{out} exists; a site's paid labels are tied to its data, so it is not overwritten: "
                          "choose another --out, or pass --force if no run used it")
    ds = load_dataset(dataset, data_root)
    idx = partition_indices(dataset, data_root, parts, partition, alpha, class_fraction, seed)[part - 1]
    if points:
        if points > len(idx):
            raise ExportError(f"--points {points}: part {part} of {parts} of the training split of {dataset} holds "
                              f"{len(idx)} points; ask for at most {len(idx)}, or for fewer parts")
        idx = idx[:points]
    arrays = {"x": ds.x_train[idx]}
    if labels:
        arrays["y"] = ds.y_train[idx]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as f:
        np.savez(f, **arrays)
    return Exported(out, len(idx), np.asarray(idx), len(ds.y_train), len(ds.y_test), labels)


def main(argv: list[str] | None = None, prog: str = "fedal site export") -> int:
    from fedal.config import PARTITIONS
    from fedal.data.registry import dataset_names

    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=dataset_names(), help="the benchmark data set to cut from")
    ap.add_argument("--out", required=True, help="the site file to write (.npz); not overwritten without --force")
    ap.add_argument("--part", type=int, default=1, help="which part, 1-based (default 1)")
    ap.add_argument("--of", type=int, default=1, dest="parts", help="into how many parts the training split is "
                    "cut, one per site (default 1)")
    ap.add_argument("--points", type=int, default=0, help="keep the first this many points of the part (default: all)")
    ap.add_argument("--partition", default="iid", choices=PARTITIONS, help="how the parts are cut (default iid)")
    ap.add_argument("--dirichlet-alpha", type=float, default=0.1, help="with --partition dirichlet")
    ap.add_argument("--shard-class-fraction", type=float, default=0.2, help="with --partition shard")
    ap.add_argument("--seed", type=int, default=0, help="the partition's seed (default 0)")
    ap.add_argument("--data-root", default="", help="where vision data sets' files are")
    ap.add_argument("--no-labels", dest="labels", action="store_false",
                    help="leave y out: people label the site (annotators = 'people')")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    a = ap.parse_args(argv)
    try:
        e = export_site(a.dataset, a.out, a.part, a.parts, points=a.points, partition=a.partition,
                        alpha=a.dirichlet_alpha, class_fraction=a.shard_class_fraction, seed=a.seed,
                        labels=a.labels, data_root=a.data_root, force=a.force)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {e.path}: {e.n_points} points of the training split of {a.dataset} ({e.n_train} points), part "
          f"{a.part} of {a.parts} ({a.partition}, seed {a.seed}), {'with' if e.labels else 'without'} labels\n"
          f"{test_split_note(a.dataset, e.n_test)}")
    return 0
