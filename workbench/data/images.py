"""An in-memory image dataset: uint8 pixels on the host, augmentation by batch, normalisation
on the device.

:class:`ImageDataset` holds ``images`` as uint8 ``(N, C, H, W)`` and ``labels`` as int64 ``(N,)``.
Items are uint8 ``(C, S, S)`` tensors (``S = H + 2·pad``), so a batch crosses to the device at a
quarter of the float size; :meth:`ImageDataset.device_transform` then turns it into the float,
normalised batch the model sees: ``(x / 255 − mean) / std`` per channel.

Augmentation (training splits of CIFAR and ImageNet32) is the usual random crop with zero padding
plus a horizontal flip. Its randomness comes from one integer *seed per item*, drawn by the
sampler (:mod:`workbench.data.loader`) from the run's seed, epoch and position, never from a
global RNG: so a resumed run, or a run split over processes, sees exactly the same pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "augment_params", "normalize", "IMAGENET_MEAN", "IMAGENET_STD",
           "NORMALISATION"]


#: mean and standard deviation per channel, by dataset: the paper's Table 4 (App. B.1) for MNIST,
#: CIFAR-10, CIFAR-100 and ImageNet (also ImageNet32); Fashion-MNIST, which the paper does not
#: use, has the values measured on its 60,000 training images (0.2860 / 0.3530).
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALISATION["imagenet32"] = NORMALISATION["imagenet"]
IMAGENET_MEAN, IMAGENET_STD = NORMALISATION["imagenet"]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images ``(…, C, H, W)`` on any device → float32 ``(x/255 − mean)/std`` per channel."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float().div_(255) - m) / s


def augment_params(seeds: torch.Tensor, crop_padding: int) -> tuple[torch.Tensor, ...]:
    """Crop offsets ``(dy, dx)`` in ``[0, 2·crop_padding]`` and flip flags from per-item seeds.

    ``seeds`` are uniform non-negative int64 (< 2**62); disjoint digits of each seed give the
    three draws, so they are independent and uniform.
    """
    span = 2 * crop_padding + 1
    dy = seeds % span
    dx = (seeds // span) % span
    flip = (seeds // (span * span)) % 2 == 1
    return dy, dx, flip


class ImageDataset(Dataset):
    """Images in memory. ``dataset[i]`` is ``(uint8 (C, S, S), label: int)``, never augmented.

    Args:
        images: uint8 ``(N, C, H, W)``. labels: int64 ``(N,)`` in ``[0, num_classes)``.
        mean, std: per-channel normalisation constants (fractions of 255).
        pad: zero padding added on every side, train and test alike (28 → 32 for vgg5).
        crop_padding: random-crop padding for augmented batches (0: no crop).
        flip: random horizontal flips for augmented batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], pad: int = 0,
                 crop_padding: int = 0, flip: bool = False, name: str = "images"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"{name}: images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{name}: {images.shape[0]} images but labels of shape "
                             f"{tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"{name}: mean/std need one value per channel ({images.shape[1]})")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        self.images, self.labels = images, labels.long()
        self.num_classes, self.name = num_classes, name
        self.in_channels = images.shape[1]
        self.image_size = images.shape[-1] + 2 * pad
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.pad, self.crop_padding, self.flip = pad, crop_padding, flip
        self.augments = crop_padding > 0 or flip

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x, y = self.batch(torch.tensor([int(i)]))
        return x[0], int(y[0])

    def batch(self, indices: torch.Tensor, seeds: Optional[torch.Tensor] = None):
        """``(uint8 (B, C, S, S), int64 (B,))`` for ``indices``; augmented when ``seeds`` given."""
        x = self.images[indices]
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if seeds is not None and self.augments:
            x = self._augment(x, seeds)
        return x, self.labels[indices]

    def _augment(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        p = self.crop_padding
        n, _, h, w = x.shape
        dy, dx, flip = augment_params(seeds, p)
        if not self.flip:
            flip = torch.zeros_like(flip)
        xp = F.pad(x, (p,) * 4) if p else x
        rows = dy[:, None] + torch.arange(h)
        cols = torch.arange(w).expand(n, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
        b = torch.arange(n)[:, None, None]
        return xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]] \
            .permute(0, 3, 1, 2).contiguous()

    def device_transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch on any device → float32 ``(x/255 − mean)/std``, same shape."""
        return normalize(x, self.mean, self.std)
