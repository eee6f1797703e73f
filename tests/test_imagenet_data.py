"""The ImageNet input pipeline (workbench.data.imagenet) on small prepared class folders.
Each test names its oracle."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import synthetic
from workbench import data
from workbench.data import imagenet
from workbench.data.loader import EpochBatches, make_loader

# torchvision 0.29 deprecates torchvision.io decoding (in favour of TorchCodec); 0.26 does not.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
MEAN, STD = torch.tensor(imagenet.MEAN).view(3, 1, 1), torch.tensor(imagenet.STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """3 classes × 4 train images, 2 classes × 2 val images (the third class has no val
    images, so labels must come from both splits), 80×60 photo-like JPEGs."""
    r = tmp_path_factory.mktemp("imagenet")
    synthetic.write_class_folders(r, classes=3, per_class=4, size=(80, 60), split="train")
    synthetic.write_class_folders(r, classes=2, per_class=2, size=(60, 80), split="val", seed=1)
    return r


def test_items_labels_and_classes(root):
    """Oracle: the folder tree — classes are the sorted wnids, each item's label indexes its
    folder's wnid, items are uint8 (3, S, S) (normalised on the device), interleaved across
    classes (so the first N, as --limit-train takes them, cover every class)."""
    for split, n, first in (("train", 12, [0, 1, 2, 0, 1, 2]), ("val", 4, [0, 1, 0, 1])):
        ds = imagenet.build(str(root), split, 32)
        assert ds.classes == synthetic.wnids(3) and len(ds) == n
        assert [ds[i][1] for i in range(len(first))] == first
        for i in range(n):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
            assert ds.path(i).parent.name == ds.classes[y]


def test_val_is_resize_then_centre_crop(root):
    """Oracle: PIL — resize the shorter side to round(256/224·S) with antialiased bilinear,
    crop the centre S×S, scale to [0, 1], normalise with the ImageNet mean/std."""
    ds = imagenet.build(str(root), "val", 56, normalize="worker")
    for i in range(len(ds)):
        with Image.open(ds.path(i)) as im:
            w, h = im.size
            r = imagenet.val_resize(56)
            size = (r, round(h * r / w)) if w <= h else (round(w * r / h), r)
            im = im.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - 56) // 2, (size[1] - 56) // 2
            ref = torch.from_numpy(np.asarray(im.crop((left, top, left + 56, top + 56))).copy())
        ref = (ref.permute(2, 0, 1).float() / 255 - MEAN) / STD
        assert (ds[i][0] - ref).abs().max() * 0.226 * 255 <= 3.0  # ≤ 3 grey levels


def test_train_augmentation_is_seeded_and_random(root):
    """Oracle: repetition — the same (index, seed) keys give the same batch; other seeds give
    other crops; every output pixel lies in the normalised range of [0, 1]."""
    ds = imagenet.build(str(root), "train", 32, normalize="worker")
    idx = torch.arange(8)
    a, ya = ds.batch(idx, torch.arange(8))
    b, _ = ds.batch(idx, torch.arange(8))
    c, _ = ds.batch(idx, torch.arange(8) + 100)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ya, torch.tensor([int(ds[i][1]) for i in range(8)]))
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert ((a >= lo - 1e-5) & (a <= hi + 1e-5)).all()


@pytest.mark.parametrize("split", ["train", "val"])
def test_device_paths_equal_the_cpu_path(root, split):
    """Oracle: the all-in-the-worker pipeline (normalize="worker") — for the same keys, uint8
    items normalised by ``device_transform`` (the default) and encoded items decoded, cropped,
    flipped and normalised by ``device_transform`` (here on the CPU device) give the same batch,
    also through the training loader with 2 workers."""
    cpu = imagenet.build(str(root), split, 32, normalize="worker")
    keys = (torch.arange(4) * 3 + 1) % len(cpu), torch.arange(4) * 13 + 5
    ref, yref = cpu.batch(*keys)
    for kw in (dict(), dict(decode="device")):
        ds = imagenet.build(str(root), split, 32, **kw)
        x, y = ds.batch(*keys)
        assert x.dtype == torch.uint8 and torch.equal(y, yref)
        assert torch.allclose(ds.device_transform(x), ref, atol=1e-6), kw
    ds = imagenet.build(str(root), split, 32, decode="device")
    sampler = EpochBatches(len(ds), 4, seed=0, augment=split == "train")
    loader = make_loader(ds, sampler, workers=2)
    x, y = next(iter(loader))
    first = next(iter(sampler))
    ref, _ = cpu.batch(torch.tensor([k[0] for k in first]), torch.tensor([k[1] for k in first]))
    assert torch.allclose(ds.device_transform(x), ref, atol=1e-6)


def test_registry_builds_imagenet(root):
    """Oracle: the registry contract — ``test`` is the val split, classes give num_classes."""
    ds = data.build("imagenet", "test", data_root=str(root), image_size=32)
    assert ds.split == "val" and data.describe(ds, "imagenet")["num_classes"] == 3


def test_dataset_options_reach_the_builder(root):
    """Oracle: the registry contract — ``options`` are imagenet's keyword options; an unknown
    one, or any option for a dataset that takes none, is refused naming what is accepted."""
    ds = data.build("imagenet", "train", data_root=str(root), image_size=32,
                    options={"decode": "device"})
    assert ds.decode == "device" and ds.device_transform.wants_host
    with pytest.raises(ValueError, match="accepted: decode, normalize"):
        data.build("imagenet", "train", data_root=str(root), image_size=32,
                   options={"decoder": "gpu"})
    with pytest.raises(ValueError, match="accepted: none"):
        data.build("synthetic", "train", image_size=8, options={"decode": "device"})


def test_training_with_device_decode_equals_cpu_decode(root, tmp_path):
    """Oracle: the CPU pipeline — `--data-arg decode=device` (JPEG decoding in the training
    loop's device step, here on the CPU) trains to exactly the weights of CPU decoding."""
    from workbench.training import train
    from workbench.cli import main

    weights = []
    for name, extra in (("cpu", []), ("device", ["--data-arg", "decode=device"])):
        argv = ["train", "--dataset", "imagenet", "--data-root", str(root), "--model", "vgg10",
                "--model-arg", "channels=[4,4,4,4,4,4,4,4]", "--model-arg", "dense=8",
                "--image-size", "32", "--scheme", "bp", "--epochs", "1", "--batch-size",
                "4", "--device", "cpu", "--progress", "none", "--probe-every", "0",
                "--run-dir", str(tmp_path / name), *extra]
        assert main(argv) == 0
        ckpt = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        weights.append(ckpt["model"])
    saved = json.loads((tmp_path / "device" / "config.json").read_text())
    assert train.as_run(saved)[0].data_args == {"decode": "device"}
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-6), k


def test_missing_and_malformed_folders_are_explained(root, tmp_path, monkeypatch):
    """Oracle: the message names the folders tried and the data_prep command; a flat val folder
    and empty class folders are named as such; bad arguments name what is accepted."""
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        imagenet.build(str(tmp_path / "nowhere"), "train", 32)
    assert str(tmp_path / "nowhere" / "train") in str(e.value)
    assert "python -m data_prep.imagenet" in str(e.value)
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="outside class folders"):
        imagenet.build(str(flat), "val", 32)
    (tmp_path / "empty" / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="class folders are empty"):
        imagenet.build(str(tmp_path / "empty"), "train", 32)
    monkeypatch.setenv("WORKBENCH_DATA", str(root))
    assert len(imagenet.build(None, "val", 32)) == 4
    for kw, match in ((dict(split="test"), "train, val"), (dict(decode="gpu"), "cpu, device"),
                      (dict(normalize="host"), "device, worker"),
                      (dict(decode="device", normalize="worker"), "normalize='device'"),
                      (dict(image_size=0), "positive integer")):
        args = {"root": str(root), "split": "train", "image_size": 32, **kw}
        with pytest.raises(ValueError, match=match):
            imagenet.build(**args)


def test_device_decode_refuses_non_rgb_jpeg(tmp_path):
    """Oracle: the nvJPEG requirement — a PNG in a class folder is refused with the fix."""
    folder = tmp_path / "train" / "n01440764"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(folder / "a.JPEG", "PNG")
    ds = imagenet.build(str(tmp_path), "train", 16, decode="device")
    with pytest.raises(ValueError, match="data_prep.imagenet"):
        ds[0]


def test_bench_loader_reports_rates():
    """Oracle: arithmetic — cores for the target = ceil(target / per-core rate); the rates are
    positive and the generated JPEGs are photo-sized (50–200 KB)."""
    r = imagenet.bench_loader(None, image_size=64, batch_size=8, workers=1, batches=2,
                              per_core_images=8)
    assert r["images_per_s"] > 0 and r["per_core_images_per_s"] > 0
    assert r["cores_for_target"] == math.ceil(600 / r["per_core_images_per_s"])
    assert 50 < r["mean_file_kb"] < 200
    with pytest.raises(ValueError, match="CUDA"):
        imagenet.bench_loader(None, gpu_decode=True, device="cpu")
