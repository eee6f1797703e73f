"""Shared fixtures: tiny datasets written in each dataset's real on-disk format."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                      for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(payload)


def write_mnist(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True,
                seed: int = 0) -> dict:
    """The four MNIST IDX files in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images, labels)
    return out


def write_cifar(root: Path, classes: int = 10, per_file: int = 24, seed: int = 0) -> dict:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) pickles."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, files, key = root / "cifar-10-batches-py", \
            {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels"
    else:
        folder, files, key = root / "cifar-100-python", {"train": ["train"], "test": ["test"]}, \
            "fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, names in files.items():
        datas, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            lab = rng.integers(0, classes, per_file).tolist()
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": data, key.encode(): lab}, f)
            datas.append(data)
            labels += lab
        out[split] = (np.concatenate(datas).reshape(-1, 3, 32, 32), np.array(labels))
    return out


@pytest.fixture
def tiny_cifar10(tmp_path):
    """``(root, arrays)``: 120 training and 24 test images in CIFAR-10's python format."""
    return tmp_path, write_cifar(tmp_path, 10)


@pytest.fixture
def no_data_env(monkeypatch):
    """No ``$WORKBENCH_DATA``, so only the paths a test gives are searched."""
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)


needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")
