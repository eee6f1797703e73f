"""Small ImageNet look-alikes in the distributed formats, for tests, smoke runs and benchmarks.

    python -m data_prep.synthetic --dest DIR [--layout official|kaggle|folder|class_tars]
        [--classes 10] [--train-per-class 20] [--val-per-class 5] [--size 500x375]

``official`` writes ``ILSVRC2012_img_train.tar`` (a tar of per-class tars),
``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` written with
scipy in the real struct layout — leaf synsets plus a few parents with ``num_children > 0``,
ILSVRC2012_IDs not in wnid order — and ``data/ILSVRC2012_validation_ground_truth.txt``).
``kaggle`` writes ``ILSVRC/Data/CLS-LOC/{train,val}`` with ``LOC_val_solution.csv`` and
``LOC_synset_mapping.txt``; ``folder`` an extracted ``train/<wnid>/`` folder, ``class_tars`` a
``train/<wnid>.tar`` folder (both beside the official val tar and devkit). The first class's
first three training images are the real set's quirks: a PNG named ``.JPEG``, a CMYK JPEG and a
greyscale JPEG; the first val image is greyscale.

Images are smooth random fields with a little noise, so that a 500×375 JPEG has about the size
and decode cost of an ImageNet photo (≈ 110 KB), unlike pure noise or flat colour.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

from workbench.data.synthetic import encode, photo, wnids, write_class_folders  # noqa: F401

LAYOUTS = ("official", "kaggle", "folder", "class_tars")
QUIRKS = ("PNG RGB", "JPEG CMYK", "JPEG L")


def _image(rng, size, quirk: str | None) -> bytes:
    img = photo(rng, *size)
    if quirk == "PNG RGB":
        return encode(img, "PNG")
    if quirk == "JPEG CMYK":
        return encode(img.convert("CMYK"))
    if quirk == "JPEG L":
        return encode(img.convert("L"))
    return encode(img)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            _tar_add(t, name, data)
    return buf.getvalue()


def meta_mat(classes: list[str], ids: list[int], parents: int = 3) -> bytes:
    """``meta.mat`` as in the devkit: a (n, 1) struct array ``synsets`` whose first rows are the
    leaf synsets (``num_children == 0``) with the given ILSVRC2012_IDs, then ``parents`` inner
    nodes."""
    import scipy.io

    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images")
    rows = [(i, w, f"class {w}, synthetic", f"gloss of {w}", 0, np.zeros(0), 0, 1300)
            for w, i in zip(classes, ids)]
    n = len(classes)
    rows += [(n + k + 1, f"n{9000000 + k:08d}", f"parent {k}", "inner node", 2,
              np.array([1.0, 2.0]), 1, 0) for k in range(parents)]
    arr = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        arr[r, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": arr})
    return buf.getvalue()


def write(dest, layout: str = "official", classes: int = 10, train_per_class: int = 20,
          val_per_class: int = 5, size: tuple[int, int] = (500, 375), seed: int = 0) -> dict:
    """Write a small ImageNet look-alike into ``dest`` in ``layout``; return the truth:
    ``{"train": {wnid: [names]}, "val": {name: wnid}, "quirks": {name: quirk}, "images":
    {"train/<wnid>/<name>" or "val/<name>": source bytes}}``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    if classes < 1 or train_per_class < 1 or val_per_class < 0:
        raise ValueError("classes and train_per_class must be ≥ 1, val_per_class ≥ 0")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = wnids(classes)
    truth = {"train": {}, "val": {}, "quirks": {}, "images": {}}
    per_class = {}
    for c, wnid in enumerate(names):
        files = {}
        for k in range(train_per_class):
            quirk = QUIRKS[k] if c == 0 and k < len(QUIRKS) else None
            name = f"{wnid}_{k + 1}.JPEG"
            files[name] = _image(rng, size, quirk)
            truth["images"][f"train/{wnid}/{name}"] = files[name]
            if quirk:
                truth["quirks"][name] = quirk
        per_class[wnid] = files
        truth["train"][wnid] = sorted(files)
    val_labels = list(np.repeat(np.arange(classes), val_per_class))
    rng.shuffle(val_labels)
    val = {}
    for i, c in enumerate(val_labels, 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        val[name] = _image(rng, size, "JPEG L" if i == 1 else None)
        truth["val"][name] = names[c]
        truth["images"][f"val/{name}"] = val[name]
    if layout == "kaggle":
        _write_kaggle(dest, names, per_class, val, truth["val"])
    else:
        _write_official(dest, layout, names, per_class, val, truth["val"])
    return truth


def _write_official(dest, layout, names, per_class, val, val_wnid) -> None:
    if layout == "official":
        with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w") as outer:
            for wnid in names:
                _tar_add(outer, f"{wnid}.tar", _tar_bytes(per_class[wnid]))
    else:
        for wnid in names:
            if layout == "class_tars":
                (dest / "train").mkdir(exist_ok=True)
                (dest / "train" / f"{wnid}.tar").write_bytes(_tar_bytes(per_class[wnid]))
            else:
                folder = dest / "train" / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for name, data in per_class[wnid].items():
                    (folder / name).write_bytes(data)
    (dest / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(val))
    ids = [(i + 1) % len(names) + 1 for i in range(len(names))]  # not in wnid order
    id_of = dict(zip(names, ids))
    truth_txt = "".join(f"{id_of[val_wnid[n]]}\n" for n in sorted(val))
    with tarfile.open(dest / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as t:
        _tar_add(t, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(names, ids))
        _tar_add(t, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                 truth_txt.encode())
        _tar_add(t, "ILSVRC2012_devkit_t12/readme.txt", b"synthetic devkit\n")


def _write_kaggle(dest, names, per_class, val, val_wnid) -> None:
    root = dest / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid in names:
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for name, data in per_class[wnid].items():
            (root / "train" / wnid / name).write_bytes(data)
    (root / "val").mkdir(parents=True, exist_ok=True)
    for name, data in val.items():
        (root / "val" / name).write_bytes(data)
    with open(dest / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for name in sorted(val):
            wnid = val_wnid[name]
            w.writerow([name.split(".")[0], f"{wnid} 10 12 200 180 {wnid} 5 5 50 60 "])
    (dest / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class {w}, synthetic\n" for w in names))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.synthetic",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", required=True)
    p.add_argument("--layout", default="official", choices=LAYOUTS)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=20)
    p.add_argument("--val-per-class", type=int, default=5)
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of every image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--size takes WIDTHxHEIGHT, e.g. 500x375; got {args.size!r}")
    truth = write(args.dest, args.layout, args.classes, args.train_per_class,
                  args.val_per_class, size, args.seed)
    print(json.dumps({"dest": args.dest, "layout": args.layout, "classes": args.classes,
                      "train": sum(map(len, truth["train"].values())), "val": len(truth["val"]),
                      "quirks": truth["quirks"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
