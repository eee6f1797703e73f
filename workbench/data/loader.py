"""Batches that are a pure function of ``(seed, epoch, step)``: exact resume and exact
multi-process splitting.

:class:`EpochBatches` is a batch sampler. For epoch ``e`` it draws, from a generator seeded by
``(seed, e)`` alone, a permutation of the examples and one augmentation seed per example. Global
batch ``s`` is positions ``[s·B, (s+1)·B)`` of that permutation; process ``r`` of ``W`` takes the
``r``-th of ``W`` equal slices. So one process and ``W`` processes see the same global batches in
the same order, with the same augmentations, and a run resumed at step ``s`` sees the batches an
uninterrupted run would have seen.

The sampler yields keys ``(index, seed)``. :class:`SeededItems` turns them into a batch: datasets
with a vectorised ``batch(indices, seeds)`` (:class:`~workbench.data.images.ImageDataset`) use it;
any other dataset is indexed item by item with torch's RNG seeded by the item's seed (in a
forked RNG state), so torchvision's random transforms become deterministic as well.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

__all__ = ["mix_seed", "EpochBatches", "SeededItems", "make_loader", "fixed_batch", "to_device"]


def mix_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (ints or strings), well mixed."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochBatches(Sampler):
    """This process's slice of every global batch of one epoch, from ``start`` on.

    Args:
        n: number of examples used (the first ``n`` of the dataset).
        batch_size: the GLOBAL batch size ``B``; ``W`` must divide it when ``drop_last``.
        seed: the run's seed. shuffle: permute (training) or keep order (evaluation).
        drop_last: drop the final partial global batch (training: every step sees ``B``).
        rank, world: this process and the number of processes.
        augment: draw a seed per example (else every seed is 0 and nothing is augmented).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world: int = 1, augment: bool = False):
        if drop_last and batch_size % world:
            raise ValueError(f"the global batch size ({batch_size}) must be a multiple of the "
                             f"number of processes ({world})")
        if drop_last and n < batch_size:
            raise ValueError(f"{n} examples cannot fill one batch of {batch_size}; lower "
                             f"--batch-size or raise --limit-train")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` (0-based) from global step ``start`` within it."""
        self.epoch, self.start = epoch, start

    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __len__(self) -> int:
        return max(self.steps_per_epoch() - self.start, 0)

    def __iter__(self) -> Iterator[list]:
        gen = torch.Generator().manual_seed(mix_seed(self.seed, "epoch", self.epoch))
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=gen) if self.augment \
            else torch.zeros(self.n, dtype=torch.int64)
        for s in range(self.start, self.steps_per_epoch()):
            lo, hi = s * self.batch_size, min((s + 1) * self.batch_size, self.n)
            per = -(-(hi - lo) // self.world)
            a, b = lo + self.rank * per, min(lo + (self.rank + 1) * per, hi)
            if a < b:
                yield list(zip(order[a:b].tolist(), seeds[a:b].tolist()))


class SeededItems(Dataset):
    """Wraps a dataset so that keys ``(index, seed)`` fetch a whole batch ``(x, y)``."""

    def __init__(self, dataset: Dataset, augment: bool):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list):
        if hasattr(self.dataset, "batch"):
            idx = torch.tensor([k[0] for k in keys])
            seeds = torch.tensor([k[1] for k in keys]) if self.augment else None
            return self.dataset.batch(idx, seeds)
        items = []
        for i, s in keys:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                items.append(self.dataset[i])
        return default_collate(items)


def fixed_batch(dataset: Dataset, indices) -> tuple:
    """Items ``indices`` of ``dataset`` as one batch ``(x, y)``, without augmentation (the
    training loop's probe batch)."""
    return SeededItems(dataset, augment=False).__getitems__([(int(i), 0) for i in indices])


def to_device(dataset: Dataset, x: torch.Tensor, y: torch.Tensor, device) -> tuple:
    """A loader's batch on ``device``, finished by the dataset's ``device_transform`` if it has
    one (e.g. uint8 → normalised float on the GPU; a transform that ``wants_host`` — GPU JPEG
    decoding — reads the host bytes itself), else converted to float."""
    transform = getattr(dataset, "device_transform", None)
    if getattr(transform, "wants_host", False):
        x = transform(x, device=device)
    else:
        x = x.to(device, non_blocking=True)
        x = transform(x) if transform is not None else x.float()
    return x, y.to(device, non_blocking=True)


def _whole_batch(batch):
    return batch


def make_loader(dataset: Dataset, sampler: EpochBatches, *, workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s keys: ``num_workers=workers``, ``pin_memory`` (set it on
    CUDA), ``persistent_workers`` when ``workers > 0``."""
    return DataLoader(SeededItems(dataset, sampler.augment), batch_sampler=sampler,
                      collate_fn=_whole_batch, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0)
