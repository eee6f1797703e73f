"""MNIST and Fashion-MNIST from IDX files (``.gz`` or uncompressed), parsed here.

The IDX format (LeCun et al.): two zero bytes, a type code (``0x08`` = unsigned byte), the number
of dimensions ``d``, then ``d`` big-endian int32 sizes, then the data in C order. Images are
``(N, 28, 28)`` (``idx3``), labels ``(N,)`` (``idx1``). Debian's ``dataset-fashion-mnist`` ships
files whose checksums differ from torchvision's, so they are parsed here rather than through
torchvision's dataset classes.

Folders accepted under each root (``--data-root``, ``$WORKBENCH_DATA``): the root itself,
``<name>/`` and torchvision's ``MNIST/raw`` / ``FashionMNIST/raw``; for Fashion-MNIST also
``/usr/share/datasets/fashion-mnist/``. When nothing is found and ``download`` is on,
torchvision downloads the files (needs a network) into the first root, or ``./data``.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .images import NORMALISATION as NORMALISATION_TABLE
from .images import ImageDataset
from .locate import (DatasetNotFoundError, download_note, download_root, find_dir, search_roots,
                     torchvision_download)

__all__ = ["read_idx", "build_mnist", "build_fashion_mnist", "NORMALISATION"]

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NORMALISATION = {name: NORMALISATION_TABLE[name] for name in ("mnist", "fashion-mnist")}
_LAYOUT = {"mnist": ("MNIST", ("", "mnist", "MNIST/raw"), ()),
           "fashion-mnist": ("FashionMNIST", ("", "fashion-mnist", "fashion_mnist",
                                              "FashionMNIST/raw"),
                             ("/usr/share/datasets/fashion-mnist",))}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as a numpy array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read it as an IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (expected the magic bytes "
                         f"00 00 08 <ndim>, got {raw[:4].hex(' ') or 'an empty file'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: the header declares shape {shape} ({int(np.prod(shape))} "
                         f"bytes) but the file holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _path(d: Path, stem: str) -> Path:
    return d / stem if (d / stem).is_file() else d / f"{stem}.gz"


def _locate(name: str, data_root: Optional[str], download: bool) -> Path:
    folder, subdirs, system = _LAYOUT[name]
    roots = search_roots(data_root, system)
    required = [(s, s + ".gz") for pair in FILES.values() for s in pair]
    tried: list[Path] = []
    found = find_dir(roots, subdirs, required, tried)
    if found is None and download:
        found = torchvision_download(folder, download_root(data_root), f"{folder}/raw")
    if found is None:
        hint = ("Install Debian's dataset-fashion-mnist, or put the four IDX files in "
                "--data-root." if name == "fashion-mnist" else
                "Put the four IDX files in --data-root (torchvision's MNIST/raw layout works).")
        raise DatasetNotFoundError(name, tried, [r[0] + "[.gz]" for r in required],
                                   hint + download_note(download))
    return found


def _build(name: str, data_root: Optional[str], split: str, image_size: Optional[int],
           download: bool) -> ImageDataset:
    if image_size not in (None, 28, 32):
        raise ValueError(f"{name} images are 28×28: image_size must be 28, or 32 (zero-padded, "
                         f"for vgg5), got {image_size}")
    d = _locate(name, data_root, download)
    img_file, lab_file = (_path(d, s) for s in FILES[split])
    images, labels = read_idx(img_file), read_idx(lab_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: expected images (N, H, W) and labels (N,) in {img_file} and "
                         f"{lab_file}, got {images.shape} and {labels.shape}")
    mean, std = NORMALISATION[name]
    pad = (image_size - images.shape[-1]) // 2 if image_size else 0
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), num_classes=10, mean=mean,
                        std=std, pad=pad, name=name)


def build_mnist(data_root: Optional[str], split: str, image_size: Optional[int] = None, *,
                download: bool = True) -> ImageDataset:
    return _build("mnist", data_root, split, image_size, download)


def build_fashion_mnist(data_root: Optional[str], split: str, image_size: Optional[int] = None,
                        *, download: bool = True) -> ImageDataset:
    return _build("fashion-mnist", data_root, split, image_size, download)
