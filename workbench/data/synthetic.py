"""``synthetic``: seeded random images of any shape, for smoke runs without a dataset.

Each class has a fixed random template; an example is half its class template plus uniform
noise, so the task is learnable (a smoke run's loss goes down) yet needs no file. The data depend
only on the shape and class count (templates seed 0, the train split seed 1, the test split
seed 2), never on the run's seed.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .images import ImageDataset

__all__ = ["build_synthetic", "SIZES", "images", "photo", "encode", "wnids",
           "write_class_folders"]

SIZES = {"train": 2048, "test": 512}


def build_synthetic(split: str, image_size: Optional[int] = None, *,
                    in_channels: Optional[int] = None,
                    num_classes: Optional[int] = None) -> ImageDataset:
    """``in_channels`` (default 3) × ``image_size`` (default 32)² images, ``num_classes``
    (default 10) classes; 2048 training and 512 test examples."""
    size, channels, classes = image_size or 32, in_channels or 3, num_classes or 10
    for what, v in (("image_size", size), ("in_channels", channels), ("num_classes", classes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"synthetic: {what} must be a positive integer, got {v!r}")
    shape = (channels, size, size)
    templates = torch.randint(0, 256, (classes, *shape), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1 if split == "train" else 2)
    n = SIZES[split]
    labels = torch.randint(0, classes, (n,), generator=gen)
    noise = torch.randint(0, 128, (n, *shape), generator=gen)
    images = (templates[labels] // 2 + noise).to(torch.uint8)
    return ImageDataset(images, labels, num_classes=classes, mean=(0.5,) * channels,
                        std=(0.25,) * channels, name="synthetic")


# ---------------------------------------------------------------------------------------------
# seeded random images (with a model: workbench.seeded.batch)
# ---------------------------------------------------------------------------------------------
def images(n: int, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
           seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform [0, 1) images ``(n, C, S, S)`` drawn in ``dtype`` and random labels
    ``(n,)``, from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, in_channels, image_size, image_size), generator=gen, dtype=dtype)
    return x, torch.randint(0, num_classes, (n,), generator=gen)


# ---------------------------------------------------------------------------------------------
# photo-like JPEGs on disk (the ImageNet loader's benchmark; data_prep's test archives)
# ---------------------------------------------------------------------------------------------
def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image with photo-like statistics: a smooth colour field, edges, fine grain."""
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                        dtype=np.float32)
    grain = rng.normal(0.0, 20.0, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def wnids(n: int) -> list[str]:
    """``n`` distinct wnid-like names in sorted order."""
    return [f"n{1440764 + 7919 * i:08d}" for i in range(n)]


def write_class_folders(root, classes: int = 8, per_class: int = 32,
                        size: tuple[int, int] = (500, 375), split: str = "train",
                        seed: int = 0) -> Path:
    """Write RGB JPEGs straight into the prepared layout ``root/<split>/<wnid>/`` (what
    ``python -m data_prep.imagenet`` produces); return ``root``."""
    rng = np.random.default_rng(seed)
    for wnid in wnids(classes):
        folder = Path(root) / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (folder / f"{wnid}_{k + 1}.JPEG").write_bytes(encode(photo(rng, *size)))
    return Path(root)
