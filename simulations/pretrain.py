"""Pretrain the MNIST-1D backbone (CNN1D) self-supervised, offline, and write its state dict.

    python -m simulations.pretrain --out weights/mnist1d-cnn1d-ssl.pt [--seed 0] [--epochs 80]

The unlabeled set is MNIST-1D drawn with ``--data-seed`` (not the federation's seed); its labels
are never read. After training, the command prints the linear-probe accuracy (logistic regression
on frozen features) with ``--probe-labels`` random labeled points of the federation's train split,
evaluated on its test split, for the pretrained and for a randomly initialised backbone. The
weights file is a plain CNN1D state dict, for the run-config key ``backbone-weights``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _parser(prog: str = "python -m simulations.pretrain") -> argparse.ArgumentParser:
    from fedal.pretrain import DEFAULT_EPOCHS, PRETRAIN_DATA_SEED, PRETRAIN_SAMPLES

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the backbone state dict (.pt)")
    p.add_argument("--seed", type=int, default=0, help="pretraining seed: init, augmentations, batches, probe labels")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
    p.add_argument("--samples", type=int, default=PRETRAIN_SAMPLES, help="size of the unlabeled set")
    p.add_argument("--data-seed", type=int, default=PRETRAIN_DATA_SEED,
                   help="mnist1d seed of the unlabeled set (must differ from the federation's)")
    p.add_argument("--probe-labels", type=int, default=1000,
                   help="labeled train points for the linear probe")
    # one thread: the network is tiny, and on a shared 2-core machine a second intra-op thread
    # spinning against other jobs made each epoch up to 30x slower
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    from fedal.data.builtin import MNIST1D_SEED

    if a.epochs < 0:
        p.error(f"--epochs = {a.epochs} is invalid; valid range: >= 0")
    if a.batch_size < 2:
        p.error(f"--batch-size = {a.batch_size} is invalid; valid range: >= 2 (contrastive pairs)")
    if not a.lr > 0:
        p.error(f"--lr = {a.lr} is invalid; valid range: > 0")
    if not a.temperature > 0:
        p.error(f"--temperature = {a.temperature} is invalid; valid range: > 0")
    if a.samples < 10:
        p.error(f"--samples = {a.samples} is invalid; valid range: >= 10")
    if a.data_seed == MNIST1D_SEED:
        p.error(f"--data-seed = {a.data_seed} is the federation's MNIST-1D seed; choose another so "
                "that the pretraining set is disjoint from the clients' data")
    if a.probe_labels < 10:
        p.error(f"--probe-labels = {a.probe_labels} is invalid; valid range: >= 10")
    if a.threads < 1:
        p.error(f"--threads = {a.threads} is invalid; valid range: >= 1")


def _open_output(p: argparse.ArgumentParser, out: str) -> tuple[Path, str]:
    """Checks before any training that ``out`` can be written: returns (target, temp file in the
    same folder), so that the final write is an atomic rename."""
    target = Path(out).expanduser()
    if target.is_dir():
        p.error(f"--out = {out!r} is a directory; give a file path such as {os.path.join(out, 'backbone.pt')!r}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
        os.close(fd)
    except OSError as e:
        p.error(f"--out = {out!r} cannot be written ({type(e).__name__}: {e.strerror or e})")
    return target, tmp


def state_dict_bytes(state: dict) -> bytes:
    """``torch.save`` of ``state`` into memory: torch names the archive's inner folder after the
    file it writes to (here a random temp name), so saving to a buffer keeps the bytes the same
    for the same weights."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def main(argv: list[str] | None = None, prog: str = "python -m simulations.pretrain") -> int:
    p = _parser(prog)
    a = p.parse_args(argv)
    _check_args(p, a)
    target, tmp = _open_output(p, a.out)
    try:
        import numpy as np
        import torch

        from fedal.data import load_dataset
        from fedal.pretrain import linear_probe_accuracy, new_backbone, pretrain_backbone, unlabeled_mnist1d

        torch.set_num_threads(a.threads)
        t0 = time.perf_counter()
        log = lambda s: print(s, flush=True)  # noqa: E731
        x_u = unlabeled_mnist1d(a.samples, a.data_seed)
        ds = load_dataset("mnist1d")
        fed = {row.tobytes() for row in np.concatenate([ds.x_train, ds.x_test])}
        overlap = sum(row.tobytes() in fed for row in x_u)
        log(f"unlabeled set: {len(x_u)} MNIST-1D signals (data seed {a.data_seed}; the federation's "
            f"{len(fed)} signals use seed 42; identical signals: {overlap}), {time.perf_counter() - t0:.1f}s")
        if a.probe_labels > len(ds.y_train):
            p.error(f"--probe-labels = {a.probe_labels} is larger than the train split ({len(ds.y_train)})")

        t1 = time.perf_counter()
        bb = pretrain_backbone(x_u, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                               temperature=a.temperature, seed=a.seed, log=log)
        train_s = time.perf_counter() - t1
        state = {k: v.detach().cpu().clone() for k, v in bb.state_dict().items()}
        Path(tmp).write_bytes(state_dict_bytes(state))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the weights are no secret
        os.replace(tmp, target)
        log(f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB; pretraining {train_s:.1f}s)")

        idx = np.random.default_rng(a.seed).choice(len(ds.y_train), a.probe_labels, replace=False)
        xs, ys = ds.x_train[idx], ds.y_train[idx]
        acc_pre = linear_probe_accuracy(bb, xs, ys, ds.x_test, ds.y_test)
        acc_rand = linear_probe_accuracy(new_backbone(a.seed), xs, ys, ds.x_test, ds.y_test)
        log(f"linear probe ({a.probe_labels} labeled train points, {len(ds.y_test)} test points):")
        log(f"  pretrained backbone   {acc_pre:.4f}")
        log(f"  random-init backbone  {acc_rand:.4f}")
        log(f"total {time.perf_counter() - t0:.1f}s")
    finally:
        Path(tmp).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    import signal

    # a terminated run unwinds like Ctrl-C, so its temp file is removed (the finally above)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.exit(main())
