"""Atomic file writes: a file is either absent (or its old version) or complete, never torn.

Used by the run folder (checkpoints, summaries) and by ``data_prep`` (prepared datasets).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["write_atomic", "remove_stale_temporaries"]


def write_atomic(path: Path, fill: Callable[[BinaryIO], None] | bytes) -> None:
    """Write ``path`` so that it is either absent/old or complete: a temporary file in the same
    folder (named ``.<name>.<random>.tmp``), fsynced, then renamed over ``path``.

    ``fill`` is the content (bytes) or a function that writes it to the open binary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(fill, (bytes, bytearray)):
                f.write(fill)
            else:
                fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files an interrupted :func:`write_atomic` left in ``folder``."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)
