"""CIFAR-10 and CIFAR-100 in torchvision's on-disk format (the official python pickles).

Under a root (``--data-root``, ``$WORKBENCH_DATA``): ``cifar-10-batches-py/data_batch_1..5`` and
``test_batch`` (labels under ``labels``), ``cifar-100-python/train`` and ``test`` (labels under
``fine_labels``). Each pickle holds ``data``: uint8 ``(N, 3072)``, channel-major (1024 red, 1024
green, 1024 blue values per image). Training batches are augmented with a random 32×32 crop of
the 4-pixel zero-padded image and a random horizontal flip (the paper's CIFAR preprocessing).
When nothing is found and ``download`` is on, torchvision downloads the archive into the first
root, or ``./data``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .images import NORMALISATION as NORMALISATION_TABLE
from .images import ImageDataset
from .locate import (DatasetNotFoundError, download_note, download_root, find_dir, search_roots,
                     torchvision_download)

__all__ = ["build_cifar10", "build_cifar100", "NORMALISATION", "CROP_PADDING"]

NORMALISATION = {name: NORMALISATION_TABLE[name] for name in ("cifar10", "cifar100")}
CROP_PADDING = 4
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                        "test": ["test_batch"]}, "labels", 10, "CIFAR10"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100,
                 "CIFAR100"),
}


def _load(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key.encode()], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR python batch (expected a pickled dict with keys "
                         f"b'data' (N, 3072) uint8 and b'{label_key}'): {e!r}") from e
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data (N, 3072) and {label_key} (N,), got "
                         f"{data.shape} and {labels.shape}")
    return data, labels


def _build(name: str, data_root: Optional[str], split: str, image_size: Optional[int],
           download: bool) -> ImageDataset:
    if image_size not in (None, 32):
        raise ValueError(f"{name} images are 32×32: image_size must be 32, got {image_size}")
    folder, files, label_key, classes, tv_name = _LAYOUT[name]
    roots = search_roots(data_root)
    tried: list[Path] = []
    required = [(f,) for names in files.values() for f in names]
    d = find_dir(roots, [folder], required, tried)
    if d is None and download:
        d = torchvision_download(tv_name, download_root(data_root), folder)
    if d is None:
        raise DatasetNotFoundError(name, tried, [f"{folder}/{r[0]}" for r in required],
                                   f"Download it with torchvision.datasets.{tv_name}(root, "
                                   f"download=True) and pass --data-root root." +
                                   download_note(download))
    parts = [_load(d / f, label_key) for f in files[split]]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    mean, std = NORMALISATION[name]
    train = split == "train"
    return ImageDataset(torch.from_numpy(data), torch.from_numpy(labels), num_classes=classes,
                        mean=mean, std=std, crop_padding=CROP_PADDING if train else 0,
                        flip=train, name=name)


def build_cifar10(data_root: Optional[str], split: str, image_size: Optional[int] = None, *,
                  download: bool = True) -> ImageDataset:
    return _build("cifar10", data_root, split, image_size, download)


def build_cifar100(data_root: Optional[str], split: str, image_size: Optional[int] = None, *,
                   download: bool = True) -> ImageDataset:
    return _build("cifar100", data_root, split, image_size, download)
