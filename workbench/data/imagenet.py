"""Full-size ImageNet from the class-folder layout that ``python -m data_prep.imagenet`` writes.

``build(root, split, image_size)`` returns a :class:`ImageNetFolder` over
``root/<split>/<wnid>/*.JPEG``. Labels index ``.classes``, the sorted wnids of ``root/train`` and
``root/val`` together, so both splits share one labelling. Transforms (torchvision transforms v2,
docs/method.md §5): train = ``RandomResizedCrop(image_size)`` + horizontal flip; val =
``Resize(round(256/224 · image_size))`` + ``CenterCrop(image_size)``; then scaling to [0, 1] and
normalisation with the ImageNet mean/std.

Where the work happens is a choice (``build(..., decode=, normalize=)``):

* ``decode="cpu"`` (default): DataLoader workers decode (libjpeg-turbo via ``torchvision.io``),
  crop and flip. With ``normalize="device"`` (default, like every dataset of
  :mod:`workbench.data`) items stay uint8 ``(3, S, S)`` — a quarter of the bytes to pass between
  processes and to copy to the GPU — and the dataset's ``device_transform`` converts and
  normalises each batch on the device; with ``normalize="worker"`` items are normalised float32.
* ``decode="device"``: workers only read the file and draw the crop/flip; items are the encoded
  JPEG with a small header (uint8, 1-D; a batch is padded to its longest file), and
  ``device_transform`` decodes the batch with ``torchvision.io.decode_jpeg(..., device=<the
  batch's device>)`` (nvJPEG on CUDA), crops, flips and normalises there. ``batch()`` and
  ``collate()`` pad a batch of encoded items to its longest file.

The training loop applies ``dataset.device_transform`` (when the attribute exists) to every image
batch after moving it to the device. ``bench_loader`` measures the input pipeline alone.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .images import IMAGENET_MEAN, IMAGENET_STD, normalize
from .locate import DatasetNotFoundError, search_roots

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
SPLITS = ("train", "val")
DECODES = ("cpu", "device")
NORMALIZES = ("device", "worker")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
HEADER = 6  # int64 fields before the JPEG bytes: nbytes, top, left, height, width, flip
HOW_TO = ("Pass --data-root (or set $WORKBENCH_DATA) to the folder holding train/ and val/. "
          "Create it from the official archives with: python -m data_prep.imagenet --source "
          "<folder with ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, "
          "ILSVRC2012_devkit_t12.tar.gz> --dest {root}")

__all__ = ["MEAN", "STD", "build", "ImageNetFolder", "Normalize", "DeviceDecode",
           "bench_loader", "val_resize"]


def val_resize(image_size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, in proportion otherwise."""
    return round(image_size * 256 / 224)


def _geometry(split: str, image_size: int) -> v2.Compose:
    if split == "train":
        return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                           v2.RandomHorizontalFlip()])
    return v2.Compose([v2.Resize(val_resize(image_size), antialias=True),
                       v2.CenterCrop(image_size)])


class Normalize:
    """uint8 images ``(…, 3, H, W)`` → float32 scaled to [0, 1], minus MEAN, over STD, on the
    images' device."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, MEAN, STD)


class DeviceDecode:
    """``device_transform`` for ``decode="device"``: a uint8 batch ``(N, 8·HEADER + L)`` of
    encoded items → normalised float32 ``(N, 3, S, S)`` on the batch's device.

    ``decode_jpeg`` takes its input on the CPU: a caller that knows this (``wants_host``) passes
    the batch as the loader made it plus the target ``device``; a batch already moved to the GPU
    is copied back (compressed bytes, ≈ 0.1 MB per image). nvJPEG decodes on ``device``.
    """
    wants_host = True

    def __init__(self, split: str, image_size: int):
        self.split, self.image_size = split, image_size
        self.normalize = Normalize()

    def __call__(self, batch: torch.Tensor, device=None) -> torch.Tensor:
        device = torch.device(device) if device is not None else batch.device
        if batch.dtype != torch.uint8 or batch.dim() != 2 or batch.shape[1] <= 8 * HEADER:
            raise ValueError(f"expected a uint8 batch of encoded images (N, >{8 * HEADER}), "
                             f"got {batch.dtype} {tuple(batch.shape)}")
        host = batch.cpu()
        if device.type == "cuda":
            # nvJPEG decodes on a private stream that does not wait for the caller's stream, and
            # may be handed memory that queued kernels still read (pytorch/vision#9606): decode
            # with nothing in flight.
            torch.cuda.current_stream(device).synchronize()
        header = host[:, :8 * HEADER].contiguous().view(torch.int64).tolist()
        data = [host[i, 8 * HEADER:8 * HEADER + h[0]] for i, h in enumerate(header)]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        s = self.image_size
        out = []
        for img, (_, top, left, height, width, flip) in zip(images, header):
            if self.split == "train":
                img = TF.resized_crop(img, top, left, height, width, [s, s], antialias=True)
                img = TF.horizontal_flip(img) if flip else img
            else:
                img = TF.center_crop(TF.resize(img, val_resize(s), antialias=True), [s, s])
            out.append(img)
        return self.normalize(torch.stack(out))


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir()) if folder.is_dir() else []


def locate(root: str | None, split: str) -> Path:
    """The folder holding ``<split>/<wnid>/``: ``root`` or ``root/imagenet``, where ``root`` is
    ``data_root`` or else ``$WORKBENCH_DATA``. Raises :class:`DatasetNotFoundError` naming every
    folder tried and how to create one."""
    tried = []
    for base in search_roots(root):
        for folder in (base, base / "imagenet"):
            tried.append(folder / split)
            if (folder / split).is_dir():
                return folder
    raise DatasetNotFoundError("imagenet", tried, [f"{split}/<wnid>/*.JPEG"],
                               HOW_TO.format(root=root or "<data root>"))


def _scan(root: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(classes, relative paths as bytes, labels)`` for ``root/split``, interleaved across
    classes (the first image of every class, then the second, …) so that the first N items,
    which ``--limit-train`` / ``--limit-test`` take, cover the classes evenly."""
    folder = root / split
    loose = [e.name for e in os.scandir(folder) if e.is_file() and
             e.name.lower().endswith(IMAGE_SUFFIXES)]
    if loose:
        raise DatasetNotFoundError(
            "imagenet", [folder], [f"{split}/<wnid>/*.JPEG"],
            f"{folder} holds {len(loose)} images outside class folders (e.g. {loose[0]}), like "
            f"the flat ILSVRC2012 val folder; they must be sorted into <wnid>/ folders: "
            + HOW_TO.format(root=root))
    classes = sorted(set(_class_dirs(root / "train")) | set(_class_dirs(root / "val")))
    paths, labels, ranks = [], [], []
    for label, wnid in enumerate(classes):
        if not (folder / wnid).is_dir():
            continue
        names = sorted(e.name for e in os.scandir(folder / wnid)
                       if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        paths += [f"{wnid}/{n}" for n in names]
        labels += [label] * len(names)
        ranks += range(len(names))
    if not paths:
        raise DatasetNotFoundError("imagenet", [folder], [f"{split}/<wnid>/*.JPEG"],
                                   "its class folders are empty. " + HOW_TO.format(root=root))
    order = np.lexsort((labels, ranks))
    return classes, np.array(paths, dtype=np.bytes_)[order], np.array(labels, np.int64)[order]


class ImageNetFolder(Dataset):
    """``root/<split>/<wnid>/*.JPEG`` as ``(image, label)`` items; see the module docstring.

    Items are interleaved across classes (see ``_scan``): item ``k`` is image ``k // C`` of
    class ``k % C`` while every class still has images.
    Attributes: ``classes`` (sorted wnids), ``split``, ``image_size``, ``decode``; and
    ``device_transform`` only when part of the pipeline runs on the device.
    Paths are kept in one numpy array (not a list of Python strings) so forked DataLoader
    workers do not copy them page by page.
    """

    def __init__(self, root, split: str, image_size: int, *, decode: str = "cpu",
                 normalize: str = "device"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        if decode not in DECODES:
            raise ValueError(f"unknown decode {decode!r}; accepted: {', '.join(DECODES)}")
        if normalize not in NORMALIZES:
            raise ValueError(f"unknown normalize {normalize!r}; accepted: "
                             f"{', '.join(NORMALIZES)}")
        if decode == "device" and normalize != "device":
            raise ValueError("decode='device' normalises on the device: use normalize='device'")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.root, self.split, self.image_size, self.decode = locate(root, split), split, \
            image_size, decode
        self.classes, self._paths, self._labels = _scan(self.root, split)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.geometry = _geometry(split, image_size)
        self.normalize = Normalize()
        if decode == "device":
            self.device_transform = DeviceDecode(split, image_size)
        elif normalize == "device":
            self.device_transform = self.normalize
        self._normalize_here = normalize == "worker"

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        return self.root / self.split / self._paths[index].decode()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data = torchvision.io.read_file(str(self.path(index)))
        label = int(self._labels[index])
        if self.decode == "device":
            return self._encoded(index, data), label
        img = self.geometry(decode_image(data, mode=ImageReadMode.RGB))
        return (self.normalize(img) if self._normalize_here else img), label

    def collate(self, items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items into ``(x, y)``; encoded items are zero-padded to the longest first."""
        if self.decode == "device":
            width = max(x.numel() for x, _ in items)
            items = [(torch.nn.functional.pad(x, (0, width - x.numel())), y) for x, y in items]
        return default_collate(items)

    def batch(self, indices: torch.Tensor, seeds: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``(x, y)`` of ``indices``; with ``seeds``, item ``k``'s random crop and flip
        are drawn from torch's RNG seeded with ``seeds[k]`` (so a batch is a pure function of its
        keys: exact resume, same batches on any number of processes). The training loader
        (:mod:`workbench.data.loader`) calls this."""
        if seeds is None:
            return self.collate([self[i] for i in indices.tolist()])
        items = []
        for i, seed in zip(indices.tolist(), seeds.tolist()):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                items.append(self[i])
        return self.collate(items)

    def _encoded(self, index: int, data: torch.Tensor) -> torch.Tensor:
        """``HEADER`` int64 (nbytes, crop top, left, height, width, flip) + the JPEG bytes."""
        with Image.open(io.BytesIO(data.numpy())) as im:
            if im.format != "JPEG" or im.mode != "RGB":
                raise ValueError(f"{self.path(index)} is a {im.format} {im.mode} image; device "
                                 f"decoding needs RGB JPEGs: prepare the folder with "
                                 f"data_prep.imagenet, which converts every file")
            width, height = im.size
        top = left = h = w = flip = 0
        if self.split == "train":
            shape = torch.empty((1, 1, 1), dtype=torch.uint8).expand(3, height, width)
            top, left, h, w = RandomResizedCrop.get_params(shape, (0.08, 1.0), (3 / 4, 4 / 3))
            flip = int(torch.rand(()) < 0.5)
        header = torch.tensor([data.numel(), top, left, h, w, flip], dtype=torch.int64)
        return torch.cat([header.view(torch.uint8), data])


def build(root: str | None, split: str, image_size: int, *, decode: str = "cpu",
          normalize: str = "device") -> ImageNetFolder:
    """The ImageNet ``split`` ("train" or "val") under ``root`` (or ``root/imagenet``; ``None``:
    ``$WORKBENCH_DATA``) at ``image_size`` pixels; raises :class:`DatasetNotFoundError` (a
    ``FileNotFoundError``) naming where it looked and how to create the folder."""
    return ImageNetFolder(root, split, image_size, decode=decode,
                          normalize=normalize)


# ---------------------------------------------------------------------------------------------
# the loader benchmark (``workbench bench --loader``)
# ---------------------------------------------------------------------------------------------
def _per_core_rate(ds: ImageNetFolder, count: int) -> tuple[float, float]:
    """Items per second one thread of this process prepares (what one worker can do), by CPU
    time (the cost of an item, whatever else the machine runs) and by wall-clock time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds[0]
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(count):
            ds[i % len(ds)]
        return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)
    finally:
        torch.set_num_threads(threads)


def bench_loader(data_root: str | None = None, image_size: int = 224, batch_size: int = 256,
                 workers: int = os.cpu_count() or 1, batches: int = 20, gpu_decode: bool = False,
                 device: str = "cpu", split: str = "train", *, normalize: str = "device",
                 target_rate: float = 600.0, per_core_images: int = 64) -> dict:
    """Measure the input pipeline alone, in images/s.

    Runs ``batches`` batches (after one warm-up batch, which pays for starting the workers)
    through a DataLoader with ``workers`` worker processes, pinned memory on CUDA and persistent
    workers, moving each batch to ``device`` and applying ``device_transform`` there (GPU JPEG
    decode with ``gpu_decode``). Separately times ``per_core_images`` items on one thread of this
    process: the decode + transform rate of one core (``per_core_images_per_s``, by the CPU time
    used, so other load on the machine does not lower it; ``per_core_wall_images_per_s`` by the
    clock), from which it derives the cores needed for ``target_rate`` images/s. With
    ``data_root=None`` it first writes 256 photo-like 500×375 JPEGs (≈ 100 KB each) to a
    temporary folder; files are then read from the page cache, so the numbers measure CPU work,
    not the disk.
    """
    if gpu_decode and not str(device).startswith("cuda"):
        raise ValueError(f"gpu_decode needs a CUDA device, got device={device!r}")
    if batches < 1 or batch_size < 1 or workers < 0:
        raise ValueError("batches and batch_size must be ≥ 1 and workers ≥ 0")
    with tempfile.TemporaryDirectory(prefix="imagenet-bench-") as tmp:
        if data_root is None:
            from .synthetic import write_class_folders

            data_root = str(write_class_folders(tmp, classes=8, per_class=32, split=split))
            source = "generated: 256 JPEGs of 500x375"
        else:
            source = str(data_root)
        ds = build(data_root, split, image_size, decode="device" if gpu_decode else "cpu",
                   normalize=normalize)
        sizes = [ds.path(i).stat().st_size for i in range(min(len(ds), 256))]
        per_core, per_core_wall = _per_core_rate(ds, per_core_images)
        rate, warmup = _loader_rate(ds, batch_size, workers, batches, torch.device(device))
    result = {
        "data_root": source, "split": split, "image_size": image_size,
        "batch_size": batch_size, "workers": workers, "batches": batches,
        "gpu_decode": gpu_decode, "normalize": normalize, "device": str(device),
        "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "images_per_s": round(rate, 1),
        "images_per_s_per_worker": round(rate / workers, 1) if workers else None,
        "per_core_images_per_s": round(per_core, 1),
        "per_core_wall_images_per_s": round(per_core_wall, 1),
        "target_images_per_s": target_rate,
        "cores_for_target": math.ceil(target_rate / per_core),
        "warmup_s": round(warmup, 2), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    return result


def _loader_rate(ds: ImageNetFolder, batch_size: int, workers: int, batches: int,
                 device: torch.device) -> tuple[float, float]:
    cuda = device.type == "cuda"
    sampler = RandomSampler(ds, replacement=True, num_samples=(batches + 1) * batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=ds.collate, pin_memory=cuda,
                        persistent_workers=workers > 0, drop_last=True)
    transform = getattr(ds, "device_transform", None)
    start = time.perf_counter()
    t0 = None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = transform(x) if transform is not None else x
        if cuda:
            torch.cuda.synchronize(device)
        if t0 is None:
            t0 = time.perf_counter()
    end = time.perf_counter()
    return batches * batch_size / (end - t0), t0 - start
