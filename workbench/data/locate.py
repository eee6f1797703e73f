"""Where datasets are looked for, and the error that says where that was.

Search order for every dataset: ``--data-root`` (``data_root``), then ``$WORKBENCH_DATA``, then
the dataset's own system locations (Debian's ``/usr/share/datasets/<name>/``). Each dataset
module names the sub-folders it accepts under each of these roots.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = ["DatasetNotFoundError", "search_roots", "find_dir", "download_root",
           "torchvision_download", "download_note"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files were not found; the message lists every place tried and the files
    expected there, and how to get them."""

    def __init__(self, name: str, tried: Sequence[Path], expected: Iterable[str], hint: str):
        places = "\n".join(f"  {p}" for p in tried) or "  (no folder to look in)"
        super().__init__(f"dataset {name!r} not found. Looked in:\n{places}\nfor the files: "
                         f"{', '.join(expected)}\n{hint}")


def search_roots(data_root: Optional[str], system: Sequence[str] = ()) -> list[Path]:
    """``data_root``, ``$WORKBENCH_DATA`` and the system folders, in that order, deduplicated."""
    out: list[Path] = []
    for p in (data_root, os.environ.get("WORKBENCH_DATA"), *system):
        if p and Path(p) not in out:
            out.append(Path(p))
    return out


def find_dir(roots: Sequence[Path], subdirs: Sequence[str], required: Sequence[Sequence[str]],
             tried: list[Path]) -> Optional[Path]:
    """The first ``root/subdir`` holding, for every entry of ``required``, one of its names.

    Every folder examined is appended to ``tried`` (for the error message).
    """
    for root in roots:
        for sub in subdirs:
            d = root / sub if sub else root
            tried.append(d)
            if d.is_dir() and all(any((d / n).is_file() for n in names) for names in required):
                return d
    return None


def download_root(data_root: Optional[str]) -> Path:
    """Where a download goes: ``data_root``, else ``$WORKBENCH_DATA``, else ``./data``."""
    return Path(data_root or os.environ.get("WORKBENCH_DATA") or "data")


def torchvision_download(tv_name: str, target: Path, folder: str) -> Optional[Path]:
    """Let ``torchvision.datasets.<tv_name>`` download both splits into ``target``; return
    ``target/folder`` (where the files land), or None when the download failed."""
    import torchvision
    try:
        for train in (True, False):
            getattr(torchvision.datasets, tv_name)(str(target), train=train, download=True)
    except (OSError, RuntimeError):
        return None
    return target / folder


def download_note(download: bool) -> str:
    """The end of a not-found message: why no download helped."""
    return (" torchvision's download failed (no network?)." if download else
            " Downloading was off (--no-download).")
