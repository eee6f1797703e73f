"""Datasets, each behind one name: ``build(name, split, data_root=..., image_size=...)``.

=================  ==========================================================  =========  =====
name               source                                                      classes    size
=================  ==========================================================  =========  =====
``fashion-mnist``  IDX files (Debian ``/usr/share/datasets/fashion-mnist``,    10         28
                   torchvision's ``FashionMNIST/raw``, or download)
``mnist``          IDX files (torchvision's ``MNIST/raw``, or download)        10         28
``cifar10``        ``cifar-10-batches-py`` pickles (torchvision's format)      10         32
``cifar100``       ``cifar-100-python`` pickles (torchvision's format)         100        32
``imagenet32``     ``train_data_batch_{1..10}.npz`` / ``val_data.npz``         1000       32
``imagenet``       the class-folder layout of ``data_prep``                    1000       224
                   (:mod:`workbench.data.imagenet`)
``synthetic``      seeded random images of any shape (smoke runs)              any        any
=================  ==========================================================  =========  =====

Splits are ``train`` and ``test`` (``imagenet``'s ``val`` is its test split). Items are
``(image, label: int)``; the datasets defined here yield uint8 images and carry a
``device_transform`` (uint8 batch on the device → float, normalised), which the training loop
applies after moving each batch to the device. Preprocessing follows the paper: per-dataset
normalisation; random crop + horizontal flip for the CIFAR and ImageNet training splits;
28×28 images zero-padded to 32 when ``image_size=32`` (vgg5). Files are looked for under
``data_root``, then ``$WORKBENCH_DATA``, then system folders; a missing dataset raises
:class:`DatasetNotFoundError` naming every folder tried and the files expected.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Optional

from torch.utils.data import Dataset

from .locate import DatasetNotFoundError

__all__ = ["DATASETS", "SPLITS", "available", "native", "build", "describe",
           "DatasetNotFoundError"]

SPLITS = ("train", "test")
DATASETS = {  # name -> (module, builder, native (classes, channels, size), downloadable)
    "fashion-mnist": ("mnist", "build_fashion_mnist", (10, 1, 28), True),
    "mnist": ("mnist", "build_mnist", (10, 1, 28), True),
    "cifar10": ("cifar", "build_cifar10", (10, 3, 32), True),
    "cifar100": ("cifar", "build_cifar100", (100, 3, 32), True),
    "imagenet32": ("imagenet32", "build_imagenet32", (1000, 3, 32), False),
    "imagenet": ("imagenet", "build", (1000, 3, 224), False),
    "synthetic": ("synthetic", "build_synthetic", (10, 3, 32), False),
}


def available() -> list[str]:
    return list(DATASETS)


def native(name: str) -> tuple[int, int, int]:
    """``(num_classes, in_channels, image_size)`` of a dataset as stored (synthetic: defaults)."""
    _check(name)
    return DATASETS[name][2]


def _check(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def build(name: str, split: str = "train", *, data_root: Optional[str] = None,
          image_size: Optional[int] = None, in_channels: Optional[int] = None,
          num_classes: Optional[int] = None, download: bool = True,
          options: Optional[dict] = None) -> Dataset:
    """The ``split`` of dataset ``name``.

    ``image_size``: None for the stored size; 32 pads 28×28 data; ``imagenet`` resizes to it and
    ``synthetic`` generates it. ``in_channels`` / ``num_classes`` shape ``synthetic`` only.
    ``download``: let torchvision fetch MNIST, Fashion-MNIST and CIFAR when they are not found.
    ``options``: the dataset's own keyword options (``imagenet``: ``decode`` cpu|device,
    ``normalize`` device|worker); other datasets take none.
    """
    _check(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if name != "synthetic" and (in_channels is not None or num_classes is not None):
        raise ValueError(f"in_channels and num_classes shape the synthetic dataset only; "
                         f"{name!r} has {native(name)[1]} channels, {native(name)[0]} classes")
    module, fn, _, downloadable = DATASETS[name]
    builder = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
    options = dict(options or {})
    if options:
        accepted = ([p.name for p in inspect.signature(builder).parameters.values()
                     if p.kind == p.KEYWORD_ONLY] if name == "imagenet" else [])
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"dataset {name!r} takes no option {unknown}; accepted: "
                             f"{', '.join(accepted) or 'none'}")
    if name == "imagenet":
        return builder(data_root, "val" if split == "test" else "train", image_size or 224,
                       **options)
    if name == "synthetic":
        return builder(split, image_size, in_channels=in_channels, num_classes=num_classes)
    if downloadable:
        return builder(data_root, split, image_size, download=download)
    return builder(data_root, split, image_size)


def describe(dataset: Dataset, name: str, image_size: Optional[int] = None) -> dict:
    """``{num_classes, in_channels, image_size}`` of a built dataset: its own attributes where it
    has them (``num_classes`` or ``classes``), else the registry's native values."""
    classes, channels, size = native(name)
    found = getattr(dataset, "num_classes", None)
    if found is None and getattr(dataset, "classes", None) is not None:
        found = len(dataset.classes)
    return {"num_classes": int(found or classes),
            "in_channels": int(getattr(dataset, "in_channels", channels)),
            "image_size": int(getattr(dataset, "image_size", image_size or size))}
