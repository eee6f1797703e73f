"""``synthetic``: seeded random images of any shape, for smoke runs without a dataset.

Each class has a fixed random template; an example is half its class template plus uniform
noise, so the task is learnable (a smoke run's loss goes down) yet needs no file. The data depend
only on the shape and class count (templates seed 0, the train split seed 1, the test split
seed 2), never on the run's seed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .images import ImageDataset

__all__ = ["build_synthetic", "SIZES"]

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
