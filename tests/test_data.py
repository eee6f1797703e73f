"""Datasets and the deterministic batch sampler (``workbench.data``)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fashion_mnist, write_cifar, write_idx, write_mnist

from workbench import data
from workbench.data.images import augment_params
from workbench.data.loader import EpochBatches, SeededItems, make_loader


def _all(ds):
    return SeededItems(ds, augment=False).__getitems__([(i, 0) for i in range(len(ds))])


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_in_torchvision_raw_layout(tmp_path, no_data_env, gz):
    """oracle: the arrays written into IDX files (torchvision's ``MNIST/raw``), read back."""
    written = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    for split in ("train", "test"):
        ds = data.build("mnist", split, data_root=str(tmp_path), download=False)
        x, y = _all(ds)
        assert x.dtype == torch.uint8 and x.shape == (len(written[split][0]), 1, 28, 28)
        assert torch.equal(x[:, 0], torch.from_numpy(written[split][0]))
        assert torch.equal(y, torch.from_numpy(written[split][1]).long())
        assert data.describe(ds, "mnist") == {"num_classes": 10, "in_channels": 1,
                                              "image_size": 28}


def test_fashion_mnist_found_through_env_and_padded_to_32(tmp_path, monkeypatch):
    """oracle: zero padding by hand (``F.pad`` by 2) of the written images; ``$WORKBENCH_DATA``
    is searched when no data_root is given."""
    written = write_mnist(tmp_path / "fashion-mnist", seed=3)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    ds = data.build("fashion-mnist", "test", image_size=32, download=False)
    x, _ = _all(ds)
    want = F.pad(torch.from_numpy(written["test"][0]), (2, 2, 2, 2))
    assert x.shape[-2:] == (32, 32) and torch.equal(x[:, 0], want)
    assert ds.image_size == 32


def test_device_transform_normalises(tmp_path, no_data_env):
    """oracle: ``(x/255 − mean)/std`` with Fashion-MNIST's constants, by hand."""
    write_mnist(tmp_path)
    ds = data.build("fashion-mnist", "train", data_root=str(tmp_path), download=False)
    x, _ = _all(ds)
    assert torch.allclose(ds.device_transform(x), (x.float() / 255 - 0.2860) / 0.3530)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickles(tmp_path, no_data_env, classes):
    """oracle: the pickled arrays (channel-major rows) reshaped to (N, 3, 32, 32) by hand."""
    written = write_cifar(tmp_path, classes)
    name = "cifar10" if classes == 10 else "cifar100"
    for split in ("train", "test"):
        ds = data.build(name, split, data_root=str(tmp_path), download=False)
        x, y = _all(ds)
        assert torch.equal(x, torch.from_numpy(written[split][0]))
        assert torch.equal(y, torch.from_numpy(written[split][1]))
        assert ds.num_classes == classes and ds.augments == (split == "train")


@pytest.mark.parametrize("sub", ["", "imagenet32"])
def test_imagenet32_npz(tmp_path, no_data_env, sub):
    """oracle: the npz arrays written, labels shifted from 1..1000 to 0..999."""
    folder = tmp_path / sub
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        d, lab = rng.integers(0, 256, (5, 3072), dtype=np.uint8), rng.integers(1, 1001, 5)
        np.savez(folder / name, data=d, labels=lab)
        arrays[name] = (d, lab)
    ds = data.build("imagenet32", "test", data_root=str(tmp_path))
    x, y = _all(ds)
    assert torch.equal(x.reshape(5, -1), torch.from_numpy(arrays["val_data.npz"][0]))
    assert torch.equal(y, torch.from_numpy(arrays["val_data.npz"][1] - 1))
    train = data.build("imagenet32", "train", data_root=str(tmp_path))
    assert len(train) == 50 and train.num_classes == 1000 and train.augments
    x, _ = _all(train)
    assert torch.equal(x[45:].reshape(5, -1), torch.from_numpy(arrays["train_data_batch_10.npz"][0]))


def test_augmentation_is_crop_and_flip_of_the_padded_image(tmp_path, no_data_env):
    """oracle: per image, pad by 4, slice at the seed's offsets, flip when the seed says so."""
    write_cifar(tmp_path, 10)
    ds = data.build("cifar10", "train", data_root=str(tmp_path), download=False)
    idx = torch.arange(40)
    seeds = torch.randint(0, 2 ** 62, (40,), generator=torch.Generator().manual_seed(1))
    got, _ = ds.batch(idx, seeds)
    dy, dx, flip = augment_params(seeds, 4)
    assert flip.any() and (~flip).any() and len(set(dx.tolist())) > 3
    for i in range(40):
        padded = F.pad(ds.images[i], (4, 4, 4, 4))
        want = padded[:, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(got[i], want.flip(-1) if flip[i] else want)


def test_synthetic_any_shape_and_deterministic():
    """oracle: the requested shape, and a second build giving identical data."""
    a = data.build("synthetic", "train", image_size=12, in_channels=2, num_classes=5)
    b = data.build("synthetic", "train", image_size=12, in_channels=2, num_classes=5)
    assert a.images.shape == (2048, 2, 12, 12) and int(a.labels.max()) == 4
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


@needs_fashion_mnist
def test_real_fashion_mnist_from_debian(no_data_env):
    """oracle: the published sizes: 60 000 / 10 000 images, 6 000 / 1 000 per class."""
    train = data.build("fashion-mnist", "train", download=False)
    test = data.build("fashion-mnist", "test", download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_imagenet_goes_through_the_imagenet_module(monkeypatch):
    """oracle: the contract call ``workbench.data.imagenet.build(root, split, image_size)``,
    with the test split called ``val``."""
    calls = []
    fake = types.ModuleType("workbench.data.imagenet")
    fake.build = lambda root, split, image_size: calls.append((root, split, image_size)) or \
        torch.utils.data.TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    monkeypatch.setitem(sys.modules, "workbench.data.imagenet", fake)
    data.build("imagenet", "train", data_root="/r", image_size=64)
    data.build("imagenet", "test", data_root="/r")
    assert calls == [("/r", "train", 64), ("/r", "val", 224)]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_missing_dataset_names_where_it_looked(tmp_path, no_data_env):
    """oracle: the message lists each folder tried and the files expected."""
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.build("cifar10", "train", data_root=str(tmp_path), download=False)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    with pytest.raises(data.DatasetNotFoundError, match="MNIST/raw"):
        data.build("mnist", "train", data_root=str(tmp_path), download=False)
    with pytest.raises(data.DatasetNotFoundError, match="val_data.npz"):
        data.build("imagenet32", "test", data_root=str(tmp_path))


def test_malformed_files_are_named(tmp_path, no_data_env):
    """oracle: a wrong magic number, a truncated IDX file and a non-pickle CIFAR batch each
    raise ``ValueError`` naming the file."""
    write_mnist(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + bad.read_bytes()[4:])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        data.build("mnist", "train", data_root=str(tmp_path), download=False)
    write_idx(bad, np.zeros((3, 28, 28), np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match="declares shape"):
        data.build("mnist", "train", data_root=str(tmp_path), download=False)
    write_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch.*not a CIFAR python batch"):
        data.build("cifar10", "test", data_root=str(tmp_path), download=False)


@pytest.mark.parametrize("kw, match", [
    (dict(name="mnist2"), "unknown dataset 'mnist2'; available: fashion-mnist"),
    (dict(name="mnist", split="val"), "unknown split 'val'; accepted: train, test"),
    (dict(name="cifar10", image_size=28), "image_size must be 32"),
    (dict(name="mnist", in_channels=3), "synthetic dataset only"),
])
def test_bad_arguments(kw, match):
    """oracle: the documented accepted values appear in the message."""
    name = kw.pop("name")
    with pytest.raises(ValueError, match=match):
        data.build(name, kw.pop("split", "train"), download=False, **kw)


# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------
def _keys(n=50, batch=8, world=1, rank=0, epoch=0, start=0, seed=0, augment=True):
    s = EpochBatches(n, batch, seed=seed, rank=rank, world=world, augment=augment)
    s.set_epoch(epoch, start)
    return list(s)


def test_epoch_is_a_permutation_and_epochs_differ():
    """oracle: each example at most once per epoch, ``n // B`` full batches, new order per
    epoch and per seed."""
    e0 = _keys()
    flat = [i for b in e0 for i, _ in b]
    assert len(e0) == 6 and all(len(b) == 8 for b in e0) and len(set(flat)) == 48
    assert _keys(epoch=1) != e0 and _keys(seed=1) != e0 and _keys() == e0


def test_processes_split_each_global_batch():
    """oracle: the single-process batches: rank slices, concatenated, give them exactly."""
    one = _keys()
    two = [_keys(world=2, rank=r) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one


def test_resume_mid_epoch_continues_the_same_batches():
    """oracle: the uninterrupted epoch's batches from step 4 on."""
    assert _keys(epoch=3, start=4) == _keys(epoch=3)[4:]


def test_sampler_rejects_bad_sizes():
    """oracle: the batch must split evenly and fit in the data."""
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        EpochBatches(100, 9, world=2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatches(10, 16)


class _RandomItems(torch.utils.data.Dataset):
    """Items drawn from torch's global RNG, like torchvision's random transforms."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.rand(3) + i, i


def test_seeded_items_make_random_transforms_deterministic():
    """oracle: the same (index, seed) keys give the same items; the caller's RNG is untouched."""
    keys = [(i, 1000 + i) for i in range(6)]
    view = SeededItems(_RandomItems(), augment=True)
    state = torch.get_rng_state()
    a, b = view.__getitems__(keys), view.__getitems__(keys)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], torch.arange(6))
    other = view.__getitems__([(i, 7) for i in range(6)])
    assert not torch.equal(a[0], other[0])


def test_workers_give_the_same_batches(tmp_path, no_data_env):
    """oracle: the batches loaded in the main process (``workers=0``)."""
    write_cifar(tmp_path, 10)
    ds = data.build("cifar10", "train", data_root=str(tmp_path), download=False)

    def batches(workers):
        s = EpochBatches(len(ds), 16, seed=5, augment=True)
        s.set_epoch(2)
        return [b for b in make_loader(ds, s, workers=workers)]

    for (xa, ya), (xb, yb) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
