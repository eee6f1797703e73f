"""Small pieces both preparers share: atomic writes, checksums, the full-set count check."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

CHUNK = 1 << 20
# ILSVRC2012 as distributed (and its 32×32 downsampled copy): images and classes per split
EXPECTED = {"train images": 1_281_167, "train classes": 1000,
            "val images": 50_000, "val classes": 1000}


class PrepError(ValueError):
    """The source or destination is not usable; the message says what was expected."""


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def count_problems(found: dict[str, int], expected: dict[str, int]) -> list[str]:
    """One line per count in ``expected`` that ``found`` does not match."""
    return [f"{what}: found {found.get(what, 0):,}, expected {want:,}"
            for what, want in expected.items() if found.get(what, 0) != want]


def report_counts(problems: list[str], allow_partial: bool, dataset: str) -> int:
    """Print the count check; return the exit status (3 on a mismatch unless allowed)."""
    if not problems:
        print(f"{dataset}: all counts match the full set")
        return 0
    lines = "\n".join(f"  - {p}" for p in problems)
    if allow_partial:
        print(f"WARNING: {dataset} is NOT the full set (--allow-partial given):\n{lines}",
              file=sys.stderr)
        return 0
    print(f"ERROR: {dataset} is NOT the full set:\n{lines}\n"
          f"A partial set would train silently on less data. Fix the source, or pass "
          f"--allow-partial to accept it.", file=sys.stderr)
    return 3
