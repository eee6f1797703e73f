"""ImageNet32: the official downsampled ImageNet (Chrabaszcz et al., 2017), 32×32, 1000 classes.

Files: ``train_data_batch_1.npz`` … ``train_data_batch_10.npz`` and ``val_data.npz``, each with
``data``: uint8 ``(N, 3072)`` channel-major (as CIFAR) and ``labels``: 1…1000 (stored here as
0…999). Looked for in ``<root>``, ``<root>/imagenet32`` and the archives' own folder names
``Imagenet32_train_npz`` / ``Imagenet32_val_npz`` (under both). Training batches get a random crop
of the 4-pixel zero-padded image and a horizontal flip; normalisation uses ImageNet's constants.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .images import IMAGENET_MEAN, IMAGENET_STD, ImageDataset
from .locate import DatasetNotFoundError, find_dir, search_roots

__all__ = ["build_imagenet32", "TRAIN_FILES", "VAL_FILES", "VAL_FILE", "MEAN", "STD"]

# the official file names (data_prep.imagenet32 checks and copies exactly these)
TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILES = ("val_data.npz",)
VAL_FILE, = VAL_FILES
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
CROP_PADDING = 4


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            data, labels = f["data"], f["labels"]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not an ImageNet32 batch (expected an .npz with 'data' "
                         f"(N, 3072) uint8 and 'labels' (N,) in 1..1000): {e!r}") from e
    labels = np.asarray(labels).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected 'data' uint8 (N, 3072) and 'labels' (N,), got "
                         f"{data.dtype} {data.shape} and {labels.shape}")
    if labels.size and (labels.min() < 1 or labels.max() > 1000):
        raise ValueError(f"{path}: labels must lie in 1..1000, got {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64) - 1


def build_imagenet32(data_root: Optional[str], split: str,
                     image_size: Optional[int] = None) -> ImageDataset:
    if image_size not in (None, 32):
        raise ValueError(f"imagenet32 images are 32×32: image_size must be 32, got {image_size}")
    train = split == "train"
    files = TRAIN_FILES if train else (VAL_FILE,)
    archive = "Imagenet32_train_npz" if train else "Imagenet32_val_npz"
    subdirs = ("", "imagenet32", archive, f"imagenet32/{archive}")
    tried: list[Path] = []
    d = find_dir(search_roots(data_root), subdirs, [(f,) for f in files], tried)
    if d is None:
        raise DatasetNotFoundError(
            "imagenet32", tried, files,
            "Download 'Imagenet32_train_npz' and 'Imagenet32_val_npz' from image-net.org "
            "(downsampled ImageNet) and unpack them into --data-root.")
    parts = [_load(d / f) for f in files]
    n = sum(p[0].shape[0] for p in parts)
    images = torch.empty((n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    at = 0
    for data, lab in parts:
        images[at:at + len(lab)] = torch.from_numpy(data.reshape(-1, 3, 32, 32))
        labels[at:at + len(lab)] = torch.from_numpy(lab)
        at += len(lab)
    return ImageDataset(images, labels, num_classes=1000, mean=MEAN, std=STD,
                        crop_padding=CROP_PADDING if train else 0, flip=train, name="imagenet32")
