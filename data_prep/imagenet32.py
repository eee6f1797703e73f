"""Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017) from the official ``.npz`` archives.

    python -m data_prep.imagenet32 --source DIR --dest DIR [--allow-partial]

``--source`` holds ``Imagenet32_train_npz.zip`` and ``Imagenet32_val_npz.zip`` as downloaded
from image-net.org, or the files they contain, already extracted (directly in ``--source`` or one
folder below). ``--dest`` receives exactly the official files ``train_data_batch_1.npz`` …
``train_data_batch_10.npz`` and ``val_data.npz`` (keys ``data``: uint8 ``(N, 3072)``, each row
the R, G, B planes of a 32×32 image; ``labels``: 1..1000), which the workbench's ``imagenet32``
dataset reads from ``<data_root>`` or ``<data_root>/imagenet32``, and
``imagenet32_manifest.json`` (images and sha256 per file).

Every file is checked (keys, dtype, shape, label range); the totals must be the full set's
(1,281,167 train, 50,000 val, 1,000 classes in each): a mismatch exits with status 3 unless
``--allow-partial`` is given. Files already in ``--dest`` that pass the check are kept as they
are, so a re-run finishes an interrupted one. The source is only read.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from workbench.data.imagenet32 import TRAIN_FILES, VAL_FILES  # the loader's file names

from .files import EXPECTED, PrepError, count_problems, report_counts, sha256_file, write_atomic

ARCHIVES = {"Imagenet32_train_npz.zip": TRAIN_FILES, "Imagenet32_val_npz.zip": VAL_FILES}
MANIFEST = "imagenet32_manifest.json"


def check_file(path: Path) -> tuple[int, np.ndarray]:
    """Validate one batch file; return ``(images, labels present)``. Raises :class:`PrepError`
    saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"data", "labels"} - set(z.files)
            if missing:
                raise PrepError(f"{path} lacks the keys {sorted(missing)} (has {z.files})")
            data, labels = z["data"], np.asarray(z["labels"])
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, PrepError):
            raise
        raise PrepError(f"{path} is not a readable .npz file: {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise PrepError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} "
                        f"{tuple(data.shape)}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise PrepError(f"{path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} "
                        f"{tuple(labels.shape)}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise PrepError(f"{path}: labels must lie in 1..1000, got {labels.min()}..{labels.max()}")
    return data.shape[0], np.unique(labels)


def _locate(source: Path, name: str):
    """Where ``name`` is in ``source``: ``("file", path)``, ``("zip", (zip path, member))`` or
    ``None``."""
    for path in (source / name, *sorted(source.glob(f"*/{name}"))):
        if path.is_file():
            return "file", path
    for archive, names in ARCHIVES.items():
        zpath = source / archive
        if name in names and zpath.is_file():
            with zipfile.ZipFile(zpath) as z:
                for member in z.namelist():
                    if Path(member).name == name:
                        return "zip", (zpath, member)
    return None


def _fetch(where, out: Path) -> None:
    kind, src = where
    if kind == "file":
        if src.resolve() == out.resolve():
            return
        with open(src, "rb") as f:
            write_atomic(out, lambda dst: shutil.copyfileobj(f, dst, 1 << 20))
        return
    zpath, member = src
    with zipfile.ZipFile(zpath) as z, z.open(member) as f:
        write_atomic(out, lambda dst: shutil.copyfileobj(f, dst, 1 << 20))


def prepare(source, dest, *, allow_partial: bool = False) -> int:
    """Write and check the official files in ``dest``; return the exit status (0, or 3 when the
    set is not the full one and ``allow_partial`` is False)."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise PrepError(f"--source {source} is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    files, labels = {}, {"train": set(), "val": set()}
    missing = []
    for name in TRAIN_FILES + VAL_FILES:
        out = dest / name
        kept = out.is_file()
        if kept:
            try:
                n, present = check_file(out)
            except PrepError as e:
                print(f"{name}: the copy in {dest} is unusable ({e}); fetching it again")
                kept = False
        if not kept:
            where = _locate(source, name)
            if where is None:
                missing.append(name)
                continue
            _fetch(where, out)
            n, present = check_file(out)
        print(f"{name}: {n:,} images" + (" (already there)" if kept else ""))
        files[name] = {"images": n, "sha256": sha256_file(out)}
        labels["train" if name in TRAIN_FILES else "val"].update(present.tolist())
    if len(missing) == len(TRAIN_FILES + VAL_FILES):
        raise PrepError(f"no ImageNet32 files in {source}: expected {', '.join(ARCHIVES)} or the "
                        f"extracted {TRAIN_FILES[0]} … {VAL_FILES[0]}")
    found = {"train images": sum(f["images"] for k, f in files.items() if k in TRAIN_FILES),
             "train classes": len(labels["train"]),
             "val images": sum(f["images"] for k, f in files.items() if k in VAL_FILES),
             "val classes": len(labels["val"])}
    problems = [f"{name}: missing from {source}" for name in missing]
    problems += count_problems(found, EXPECTED)
    write_atomic(dest / MANIFEST, json.dumps(
        {"files": files, "counts": found, "expected": EXPECTED, "complete": not problems},
        indent=1).encode())
    return report_counts(problems, allow_partial, f"ImageNet32 in {dest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.imagenet32",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="folder holding the zips or the .npz files")
    p.add_argument("--dest", required=True, help="output folder for the .npz files")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept a set whose counts differ from the full ImageNet32")
    args = p.parse_args(argv)
    try:
        return prepare(args.source, args.dest, allow_partial=args.allow_partial)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:            # WriteError (a full disk: the file named) or the OS's own
        print(f"error: {e}; the files written are complete: run the same command again once "
              f"the cause is fixed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
