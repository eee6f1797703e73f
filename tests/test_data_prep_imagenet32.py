"""data_prep.imagenet32 on small zips in the official format. Each test names its oracle."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_prep import imagenet32

SMALL = {"train images": 40, "train classes": 5, "val images": 10, "val classes": 5}


def batches(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Ten training batches of 4 images and a val batch of 10; labels 1..5 in each split."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in imagenet32.TRAIN_FILES + imagenet32.VAL_FILES:
        n = 10 if name in imagenet32.VAL_FILES else 4
        labels = (np.arange(n) % 5 + 1) if name in (imagenet32.TRAIN_FILES[0],) + \
            imagenet32.VAL_FILES else rng.integers(1, 6, n)
        out[name] = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     "labels": [int(v) for v in labels]}
    out[imagenet32.TRAIN_FILES[0]]["mean"] = np.zeros(3072)
    return out


def write_zips(src: Path, arrays: dict) -> None:
    """``Imagenet32_train_npz.zip`` / ``Imagenet32_val_npz.zip``, files one folder down."""
    src.mkdir(parents=True, exist_ok=True)
    for archive, names in imagenet32.ARCHIVES.items():
        with zipfile.ZipFile(src / archive, "w") as z:
            for name in names:
                npz = src / f".{name}"
                np.savez(npz, **arrays[name])
                z.write(npz, f"{archive[:-4]}/{name}")
                npz.unlink()


def test_zips_become_the_official_files(tmp_path, monkeypatch):
    """Oracle: the arrays that were zipped, read back from dest; the counts of the small set
    pass, the full-set counts fail (exit 3) unless --allow-partial."""
    arrays = batches()
    write_zips(tmp_path / "src", arrays)
    dest = tmp_path / "dest"
    assert imagenet32.main(["--source", str(tmp_path / "src"), "--dest", str(dest)]) == 3
    assert imagenet32.main(["--source", str(tmp_path / "src"), "--dest", str(dest),
                            "--allow-partial"]) == 0
    for name, arr in arrays.items():
        with np.load(dest / name) as z:
            assert np.array_equal(z["data"], arr["data"]) and list(z["labels"]) == arr["labels"]
    manifest = json.loads((dest / imagenet32.MANIFEST).read_text())
    assert manifest["counts"] == SMALL and manifest["complete"] is False
    monkeypatch.setattr(imagenet32, "EXPECTED", SMALL)
    assert imagenet32.prepare(tmp_path / "src", dest) == 0


def test_extracted_files_and_resume(tmp_path, monkeypatch):
    """Oracle: file identity — already-extracted sources are copied; a valid file already in
    dest is kept (same inode and mtime); a corrupt one is fetched again; a missing batch is
    reported by name."""
    monkeypatch.setattr(imagenet32, "EXPECTED", SMALL)
    arrays = batches(1)
    src = tmp_path / "src" / "Imagenet32_train_npz"
    src.mkdir(parents=True)
    for name, arr in arrays.items():
        np.savez(src / name, **arr)
    dest = tmp_path / "dest"
    assert imagenet32.prepare(tmp_path / "src", dest) == 0
    keep, redo = dest / imagenet32.TRAIN_FILES[0], dest / imagenet32.VAL_FILES[0]
    st = keep.stat()
    redo.write_bytes(b"not an npz")
    assert imagenet32.prepare(tmp_path / "src", dest) == 0
    assert (keep.stat().st_ino, keep.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    with np.load(redo) as z:
        assert np.array_equal(z["data"], arrays[imagenet32.VAL_FILES[0]]["data"])
    (src / imagenet32.TRAIN_FILES[3]).unlink()
    (dest / imagenet32.TRAIN_FILES[3]).unlink()
    assert imagenet32.prepare(tmp_path / "src", dest) == 3


@pytest.mark.parametrize("bad, message", [
    ({"labels": [0, 1, 2, 3]}, "1..1000"),
    ({"data": np.zeros((4, 1024), np.uint8)}, "(N, 3072)"),
    ({"data": np.zeros((4, 3072), np.float32)}, "uint8"),
    ({"labels": [1, 2]}, "'labels' must be 4"),
])
def test_malformed_batches_are_explained(tmp_path, bad, message, capsys):
    """Oracle: the format's definition — wrong dtype, shape or label range exits 2 naming it."""
    arrays = batches()
    arrays[imagenet32.VAL_FILES[0]] = {**batches()[imagenet32.TRAIN_FILES[1]], **bad}
    write_zips(tmp_path / "src", arrays)
    assert imagenet32.main(["--source", str(tmp_path / "src"), "--dest",
                            str(tmp_path / "dest")]) == 2
    assert message in capsys.readouterr().err


def test_empty_source_says_what_it_expected(tmp_path, capsys):
    """Oracle: the official archive names appear in the error."""
    assert imagenet32.main(["--source", str(tmp_path), "--dest", str(tmp_path / "d")]) == 2
    assert "Imagenet32_train_npz.zip" in capsys.readouterr().err


def test_training_reader_reads_what_it_writes(tmp_path):
    """Oracle: the arrays that were zipped — workbench's ``imagenet32`` dataset, reading dest,
    sees the val images in order, labels shifted to 0..999, pixels in CHW order."""
    from workbench import data

    arrays = batches()
    write_zips(tmp_path / "src", arrays)
    dest = tmp_path / "dest"
    assert imagenet32.prepare(tmp_path / "src", dest, allow_partial=True) == 0
    ds = data.build("imagenet32", "test", data_root=str(dest))
    val = arrays[imagenet32.VAL_FILES[0]]
    assert len(ds) == len(val["labels"])
    assert [int(ds[i][1]) for i in range(len(ds))] == [v - 1 for v in val["labels"]]
    x = ds[3][0]
    assert np.array_equal(np.asarray(x).reshape(-1), val["data"][3])
