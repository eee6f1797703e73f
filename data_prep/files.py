"""Small pieces both preparers share: atomic writes, checksums, the full-set count check."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from workbench.files import remove_stale_temporaries, write_atomic  # noqa: F401 (re-exported)

CHUNK = 1 << 20
# ILSVRC2012 as distributed (and its 32×32 downsampled copy): images and classes per split
EXPECTED = {"train images": 1_281_167, "train classes": 1000,
            "val images": 50_000, "val classes": 1000}


class PrepError(ValueError):
    """The source or destination is not usable; the message says what was expected."""


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
