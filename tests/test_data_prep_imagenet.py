"""data_prep.imagenet on small archives written in the official formats (data_prep.synthetic),
with the real set's quirks. Each test names its oracle."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import imagenet, synthetic

SMALL = dict(classes=3, train_per_class=4, val_per_class=2, size=(64, 48), seed=0)


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """relative path → (sha256, inode, mtime_ns) of every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             st.st_ino, st.st_mtime_ns)
    return out


def images(dest: Path) -> dict[str, str]:
    """``split/wnid/name`` → sha256 of every prepared image."""
    return {k: v[0] for k, v in tree(dest).items() if k.split("/")[0] in ("train", "val")}


def blocks(pixels: np.ndarray) -> np.ndarray:
    h, w, c = pixels.shape
    return pixels.reshape(h // 8, 8, w // 8, 8, c).mean((1, 3))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    src = tmp_path_factory.mktemp("official")
    return src, synthetic.write(src, "official", **SMALL)


@pytest.fixture(scope="module")
def prepared(official, tmp_path_factory):
    """The official archives prepared through the command line on 2 worker processes."""
    src, truth = official
    before = tree(src)
    dest = tmp_path_factory.mktemp("prepared")
    proc = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--source", str(src),
                           "--dest", str(dest), "--workers", "2", "--allow-partial"],
                          capture_output=True, text=True, timeout=120)
    return dest, truth, proc, before, tree(src)


def test_official_archives_become_rgb_jpeg_class_folders(prepared):
    """Oracle: the generator's truth — every training image in its wnid folder, every val image
    in the folder of the class its devkit ILSVRC2012_ID names; RGB JPEGs copied byte for byte;
    the PNG / CMYK / greyscale quirks converted to RGB JPEGs of the same picture."""
    dest, truth, proc, _, _ = prepared
    assert proc.returncode == 0, proc.stderr
    got = images(dest)
    want = {f"train/{w}/{n}" for w, names in truth["train"].items() for n in names}
    want |= {f"val/{w}/{n}" for n, w in truth["val"].items()}
    assert set(got) == want
    for rel in want:
        src_key = rel if rel.startswith("train") else f"val/{Path(rel).name}"
        raw = truth["images"][src_key]
        out = (dest / rel).read_bytes()
        with Image.open(dest / rel) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB"), rel
            pixels = np.asarray(im, dtype=np.float32)
        with Image.open(io.BytesIO(raw)) as src_im:
            quirk = None if (src_im.format, src_im.mode) == ("JPEG", "RGB") else src_im.mode
            ref = np.asarray(src_im.convert("RGB"), dtype=np.float32)
        if quirk is None:
            assert out == raw, rel
        else:  # re-encoded with 4:2:0 chroma: compare 8×8 block means (the picture, not grain)
            assert np.abs(blocks(pixels) - blocks(ref)).mean() < 2.0, rel
    converted = json.loads((dest / "manifest.json").read_text())["converted"]
    first = sorted(truth["train"])[0]
    assert {f"train/{first}/{n}": q for n, q in truth["quirks"].items()}.items() \
        <= converted.items()


def test_manifest_and_checksums_describe_the_files(prepared):
    """Oracle: sha256 recomputed from the written files; counts per class from the truth."""
    dest, truth, _, _, _ = prepared
    got = images(dest)
    lines = (dest / "checksums.sha256").read_text().split("\n")
    assert {ln.split("  ")[1]: ln.split("  ")[0] for ln in lines if ln} == got
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {w: c["images"] for w, c in manifest["splits"]["train"]["classes"].items()} == \
        {w: len(n) for w, n in truth["train"].items()}
    assert manifest["counts"] == {"train classes": 3, "train images": 12,
                                  "val classes": 3, "val images": 6}
    assert manifest["complete"] is False
    assert set(manifest["words"]) == set(truth["train"])


def test_source_is_never_modified(prepared):
    """Oracle: content, inode and mtime of every source file before == after the run."""
    _, _, _, before, after = prepared
    assert before == after


def test_devkit_labels_match_torchvision(official, tmp_path, monkeypatch):
    """Oracle: torchvision's own devkit parser (leaf synsets of meta.mat, ground-truth order)."""
    import torch
    import torchvision.datasets.imagenet as tv

    src, truth = official
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(
        (src / "ILSVRC2012_devkit_t12.tar.gz").read_bytes())
    monkeypatch.setattr(tv, "_verify_archive", lambda *a, **k: None)
    tv.parse_devkit_archive(str(tmp_path))
    wnid_to_classes, val_wnids = torch.load(tmp_path / tv.META_FILE, weights_only=False)
    id_to_wnid, words, gt = imagenet.read_devkit(src / "ILSVRC2012_devkit_t12.tar.gz")
    assert [id_to_wnid[i] for i in gt] == val_wnids == [truth["val"][n] for n in
                                                        sorted(truth["val"])]
    assert set(words) == set(wnid_to_classes) == set(truth["train"])


@pytest.mark.parametrize("layout", ["kaggle", "folder", "class_tars"])
def test_other_layouts_give_the_same_files(layout, prepared, tmp_path):
    """Oracle: the official archives' output — the same images from Kaggle's
    ILSVRC/Data/CLS-LOC + LOC_val_solution.csv, an extracted train folder, or a folder of the
    per-class tars give byte-identical class folders."""
    src = tmp_path / "src"
    synthetic.write(src, layout, **SMALL)
    dest = tmp_path / "dest"
    assert imagenet.prepare(src, dest, workers=1, allow_partial=True) == 0
    assert images(dest) == images(prepared[0])


def test_count_check(official, tmp_path, monkeypatch, capsys):
    """Oracle: the expected counts. The full-set numbers fail a small set before anything is
    written (exit 3, naming 1,281,167 and --allow-partial); counts equal to the set's pass; one
    training image short of the expected number fails after the run, manifest incomplete."""
    src, _ = official
    assert imagenet.prepare(src, tmp_path / "a", workers=1) == 3
    err = capsys.readouterr().err
    assert "1,000" in err and "50,000" in err and "--allow-partial" in err
    assert not (tmp_path / "a" / "train").exists()
    exact = {"train images": 12, "train classes": 3, "val images": 6, "val classes": 3}
    monkeypatch.setattr(imagenet, "EXPECTED", exact)
    assert imagenet.prepare(src, tmp_path / "b", workers=1) == 0
    monkeypatch.setattr(imagenet, "EXPECTED", {**exact, "train images": 13})
    assert imagenet.prepare(src, tmp_path / "c", workers=1) == 3
    assert "train images: found 12, expected 13" in capsys.readouterr().err
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["complete"] is False
    assert imagenet.prepare(src, tmp_path / "c", workers=1, allow_partial=True) == 0


def test_a_corrupt_class_tar_is_named(tmp_path, capsys):
    """Oracle: the documented exit status 2 and a message naming the class — a per-class tar
    overwritten with garbage stops the run cleanly, not with a traceback."""
    src = tmp_path / "src"
    truth = synthetic.write(src, "class_tars", **SMALL)
    wnid = sorted(truth["train"])[0]
    tars = list(src.rglob(f"{wnid}.tar"))
    assert len(tars) == 1
    tars[0].write_bytes(bytes(range(256)) * 8)
    assert imagenet.main(["--source", str(src), "--dest", str(tmp_path / "dest"),
                          "--workers", "1", "--allow-partial"]) == 2
    err = capsys.readouterr().err
    assert f"train/{wnid}" in err and "Traceback" not in err


def test_interrupted_run_resumes_without_redoing_finished_classes(prepared, tmp_path):
    """Oracle: an uninterrupted run. A run that stops at a corrupt image in the second class
    (exit 2, naming the file) keeps the first class; once the image is fixed, the re-run
    leaves the first class's files untouched (same inode and mtime), removes the temporary file
    a killed writer left, and ends with exactly the uninterrupted run's files; a file deleted
    from a finished class is written again by the next run."""
    src = tmp_path / "src"
    truth = synthetic.write(src, "folder", **SMALL)
    first, second = sorted(truth["train"])[:2]
    bad = src / "train" / second / truth["train"][second][1]
    good = bad.read_bytes()
    bad.write_bytes(good[:200])
    dest = tmp_path / "dest"
    proc = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--source", str(src),
                           "--dest", str(dest), "--workers", "1", "--allow-partial"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and bad.name in proc.stderr
    assert imagenet.marker_path(dest, "train", first).is_file()
    assert not imagenet.marker_path(dest, "train", second).exists()
    kept = {k: v for k, v in tree(dest).items() if k.startswith(f"train/{first}/")}
    assert len(kept) == len(truth["train"][first])
    bad.write_bytes(good)
    stale = dest / "train" / second / f".{bad.name}.x1y2.tmp"
    stale.write_bytes(b"half")
    assert imagenet.prepare(src, dest, workers=2, allow_partial=True) == 0
    assert not stale.exists()
    assert {k: v for k, v in tree(dest).items() if k.startswith(f"train/{first}/")} == kept
    assert images(dest) == images(prepared[0])
    lost = dest / "train" / first / truth["train"][first][0]
    lost.unlink()
    assert imagenet.prepare(src, dest, workers=1, allow_partial=True) == 0
    assert images(dest) == images(prepared[0])


def test_resize_shrinks_the_shorter_side(official, tmp_path):
    """Oracle: arithmetic — 64×48 images at --resize 32 become 43×32 RGB JPEGs; at --resize 100
    (larger than the images) RGB JPEGs are copied unchanged. The settings are recorded."""
    src, truth = official
    dest = tmp_path / "r32"
    assert imagenet.prepare(src, dest, resize=32, workers=1, allow_partial=True) == 0
    for rel in images(dest):
        with Image.open(dest / rel) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (43, 32)), rel
    assert json.loads((dest / "manifest.json").read_text())["resize"] == 32
    big = tmp_path / "r100"
    assert imagenet.prepare(src, big, resize=100, workers=1, allow_partial=True) == 0
    wnid = sorted(truth["train"])[1]
    name = truth["train"][wnid][0]
    assert (big / "train" / wnid / name).read_bytes() == truth["images"][f"train/{wnid}/{name}"]


def test_bad_input_is_explained(official, tmp_path, capsys):
    """Oracle: the message names what was looked for / what conflicts, and nothing is lost."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert imagenet.main(["--source", str(empty), "--dest", str(tmp_path / "d")]) == 2
    assert imagenet.TRAIN_TAR in capsys.readouterr().err
    src, _ = official
    no_labels = tmp_path / "nolabels"
    no_labels.mkdir()
    (no_labels / imagenet.VAL_TAR).write_bytes((src / imagenet.VAL_TAR).read_bytes())
    with pytest.raises(imagenet.PrepError, match="ILSVRC2012_devkit_t12.tar.gz"):
        imagenet.discover(no_labels, ("val",))
    folder = tmp_path / "folder"
    synthetic.write(folder, "folder", **SMALL)
    with pytest.raises(imagenet.PrepError, match="overlaps the source"):
        imagenet.prepare(folder, folder, workers=1, allow_partial=True)
    dest = tmp_path / "dest"
    assert imagenet.prepare(src, dest, workers=1, allow_partial=True, splits=("val",)) == 0
    before = tree(dest)
    with pytest.raises(imagenet.PrepError, match="resize"):
        imagenet.prepare(src, dest, resize=32, workers=1, allow_partial=True)
    assert tree(dest) == before
    assert imagenet.main(["--source", str(src), "--dest", str(dest), "--splits", "test"]) == 2
    assert "train,val" in capsys.readouterr().err


def test_synthetic_command_writes_what_it_reports(tmp_path, capsys):
    """Oracle: the files on disk — the command's JSON counts match the archive's members, the
    quirks are what the JPEG/PNG headers say; a malformed --size is refused."""
    assert synthetic.main(["--dest", str(tmp_path), "--classes", "2", "--train-per-class", "3",
                           "--val-per-class", "1", "--size", "32x24"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["train"], report["val"]) == (6, 2)
    plan = imagenet.discover(tmp_path)
    assert sum(len(j.members) for j in plan.jobs if j.split == "val") == 2
    first = next(j for j in plan.jobs if j.split == "train")
    found = {}
    for name, data in imagenet._images(first):
        with Image.open(io.BytesIO(data)) as im:
            found[name] = f"{im.format} {im.mode}"
    assert {n: q for n, q in found.items() if q != "JPEG RGB"} == report["quirks"]
    with pytest.raises(SystemExit):
        synthetic.main(["--dest", str(tmp_path), "--size", "32"])
