"""Atomic file writes: the one way fedal replaces a file that others may read concurrently
(simulation actors sharing a cache) or that must survive a crash (paid labels, results).

The data goes to a temporary file in the same folder, is flushed to disk, and replaces the
target in one rename; a reader sees the old file or the new one, never half of one, and a
failure leaves no temporary file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` when the block ends without error.
    ``mode``: the file's permission bits, set before any byte is written (a private key is never
    readable by others, not even for a moment); None keeps mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> None:
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
