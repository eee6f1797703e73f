"""Faults a long run meets: a full disk, damaged files. Each test names its oracle.

A full disk is real: a tmpfs of a few hundred KB mounted by the test (root only; skipped with
the reason elsewhere), filled by a file until the kernel answers ENOSPC.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from test_train import rows, tiny, untimed
from workbench.experiments import runs as R
from workbench.experiments import sweep as sw
from workbench.files import DamagedFileError, WriteError, read_json, write_atomic
from workbench.training.runfolder import CHECKPOINT, PREVIOUS_CHECKPOINT, RunFolder
from workbench.training.tracking import Tracker
from workbench.training.train import run

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096


def _can_mount() -> str:
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    return ""


needs_mount = pytest.mark.skipif(bool(_can_mount()), reason=_can_mount() or "-")


@contextlib.contextmanager
def tmpfs(tmp_path: Path, kib: int = 512):
    """A tmpfs of ``kib`` KiB at a fresh folder under ``tmp_path``, unmounted afterwards."""
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system of ``disk`` with one file until only ``leave`` bytes (rounded down
    to pages) are free, or none; returns the filler (delete it to free the space)."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    todo = stat.f_bavail * stat.f_frsize - leave
    with open(filler, "wb", buffering=0) as f:
        try:
            while leave == 0 or todo > 0:
                todo -= f.write(b"\0" * PAGE)
        except OSError:                     # ENOSPC: full
            pass
    return filler


def cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "train", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------
@needs_mount
def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_once_space_is_freed(tmp_path):
    """Oracles: the kernel's ENOSPC and an uninterrupted run — a run whose disk fills during its
    second checkpoint exits with status 1 and one line naming checkpoint.pt and the cause; the
    first checkpoint is intact (readable, its step), no temporary file is left; after the space
    is freed, --resume ends with the uninterrupted run's metrics and weights."""
    flags = ["--dataset", "synthetic", "--image-size", "8", "--model", "mlp", "--model-arg",
             "widths=[16]", "--epochs", "2", "--batch-size", "32", "--limit-train", "128",
             "--limit-test", "64", "--lr", "0.05", "--beta", "0.05", "--iterations", "4",
             "--probe-every", "0", "--checkpoint-every", "2", "--device", "cpu", "--progress",
             "none", "--no-tensorboard"]
    ref = tmp_path / "reference"
    assert cli(*flags, "--run-dir", ref).returncode == 0
    ckpt_pages = -(-(ref / CHECKPOINT).stat().st_size // PAGE)
    with tmpfs(tmp_path) as disk:
        run_dir = disk / "run"
        # room for config.json, metrics.jsonl and one checkpoint, not for a second beside it
        filler = fill(disk, leave=(2 + ckpt_pages + 1) * PAGE)
        r = cli(*flags, "--run-dir", run_dir)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"cannot write {run_dir / CHECKPOINT}: No space left on device" in lines[0]
        assert "the last complete checkpoint is intact" in lines[0] and "--resume" in lines[0]
        assert torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == 2
        assert not list(run_dir.glob(".*.tmp"))
        filler.unlink()
        r = cli(*flags, "--run-dir", run_dir, "--resume")
        assert r.returncode == 0, r.stderr
        assert untimed(rows(run_dir)) == untimed(rows(ref))
        got = torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]
        want = torch.load(ref / CHECKPOINT, weights_only=True)["model"]
        assert all(torch.equal(got[k], want[k]) for k in want)


@needs_mount
def test_every_run_folder_write_names_its_file_on_a_full_disk(tmp_path):
    """Oracle: the kernel's ENOSPC, for each writer of a run folder on a full tmpfs — a metrics
    line, the summary, a checkpoint and an event file each raise WriteError naming the file and
    the cause; the previous checkpoint and summary stay as they were; no temporary file."""
    with tmpfs(tmp_path) as disk:
        folder = RunFolder(disk / "run")
        folder.open({"model": "mlp"}, None)
        folder.checkpoint({"step": 1, "epoch": 0, "model": {}, "optimizer": {}})
        folder.summary({"status": "running"})
        tracker = Tracker(folder.path, {"model": "mlp"}, tensorboard=True)
        tracker.log({"type": "epoch", "step": 1, "train_loss": 1.0})
        tracker.flush()
        fill(disk)
        with pytest.raises(WriteError, match=r"summary\.json: No space left on device"):
            folder.summary({"status": "completed"})
        assert json.loads(folder.file("summary.json").read_text()) == {"status": "running"}
        with pytest.raises(WriteError, match=r"checkpoint\.pt: No space left on device"):
            folder.checkpoint({"step": 2, "epoch": 0, "model": {}, "optimizer": {}})
        assert folder.latest_checkpoint()["step"] == 1
        with pytest.raises(WriteError, match=r"metrics\.jsonl: No space left on device"):
            for step in range(2 * PAGE):              # the page in use first fills up
                folder.append({"type": "epoch", "step": step, "pad": "x" * 64})
        with pytest.raises(WriteError, match=r"events\.out\.tfevents\.[^:]+: No space left"):
            for step in range(4 * PAGE):
                tracker.log({"type": "epoch", "step": step, "train_loss": 1.0})
            tracker.flush()
        assert not list(folder.path.glob(".*.tmp"))
        folder.close()


@needs_mount
def test_data_prep_on_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path):
    """Oracle: the kernel's ENOSPC — data_prep.imagenet into a tmpfs too small for the dataset
    exits non-zero with one line naming the file it could not write and the cause, leaves no
    temporary file, and every JPEG it did write is complete (decodes)."""
    from PIL import Image

    from workbench.data import synthetic
    src = tmp_path / "src"
    synthetic.write_class_folders(src, classes=4, per_class=24, size=(200, 150), split="train")
    synthetic.write_class_folders(src, classes=4, per_class=4, size=(200, 150), split="val")
    with tmpfs(tmp_path, kib=256) as disk:
        r = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--source", str(src),
                            "--dest", str(disk / "out"), "--allow-partial"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert "Traceback" not in r.stderr, r.stderr
        assert "cannot write" in last and "No space left on device" in last, r.stderr
        assert not list((disk / "out").rglob(".*.tmp"))
        written = list((disk / "out").rglob("*.JPEG"))
        assert written
        for p in written:
            Image.open(p).load()


# ---------------------------------------------------------------------------------------------
# damaged files
# ---------------------------------------------------------------------------------------------
def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_ends_as_uninterrupted(
        tmp_path):
    """Oracle: an uninterrupted run — with checkpoint.pt cut to half its length (a copy error),
    --resume warns naming the file, resumes from checkpoint.prev.pt and ends with the same
    metrics and weights; with both damaged, the error names both and says what to do."""
    ref = run(tiny(tmp_path, run_dir=str(tmp_path / "ref"), checkpoint_every=1, epochs=2))
    cfg = tiny(tmp_path, run_dir=str(tmp_path / "run"), checkpoint_every=1, epochs=2)
    run(cfg)
    ckpt, prev = Path(cfg["run_dir"]) / CHECKPOINT, Path(cfg["run_dir"]) / PREVIOUS_CHECKPOINT
    assert prev.is_file()
    (Path(cfg["run_dir"]) / "summary.json").unlink()          # as if killed at the last step
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:len(data) // 2])
    with pytest.warns(RuntimeWarning, match=rf"{ckpt} is damaged: .*resuming from the "
                                            rf"previous checkpoint {prev}"):
        run(tiny(tmp_path, run_dir=cfg["run_dir"], checkpoint_every=1, epochs=2, resume=True))
    assert untimed(rows(cfg["run_dir"])) == untimed(rows(ref["run_dir"]))
    want = torch.load(Path(ref["run_dir"]) / CHECKPOINT, weights_only=True)["model"]
    got = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    for f in (ckpt, prev):
        f.write_bytes(b"not a zip file at all")
    with pytest.raises(DamagedFileError, match=rf"{prev} is damaged: .*and so is "
                                               rf"checkpoint.pt.*new --run-dir"):
        run(tiny(tmp_path, run_dir=cfg["run_dir"], checkpoint_every=1, epochs=2, resume=True))


def test_damaged_json_files_are_named_with_the_position_of_the_error(tmp_path):
    """Oracle: json's own decoder position — a broken config.json (through the CLI: one line,
    exit 2), a sweep's plan.json and data_prep's record of an earlier preparation are named
    with line and column."""
    cfg = tiny(tmp_path)
    run(cfg)
    config = Path(cfg["run_dir"]) / "config.json"
    text = config.read_text()
    config.write_text(text.replace(",\n", ",\n}", 1))        # a stray brace on line 3
    r = cli("--run-dir", cfg["run_dir"], "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{config} is damaged: not valid JSON (the run's config): " in r.stderr
    assert "at line 3, column" in r.stderr

    spec = {"name": "s", "base": {"dataset": "synthetic", "image_size": 8, "model": "mlp",
                                  "model_args": {"widths": [8]}, "epochs": 1,
                                  "limit_train": 32, "limit_test": 32, "batch_size": 32,
                                  "device": "cpu"},
            "grid": {"beta": [0.1]}}
    (tmp_path / "s.yaml").write_text(json.dumps(spec))
    s = sw.load(tmp_path / "s.yaml", out=tmp_path / "out")
    sw.write_plan(s)
    plan = s.folder / "plan.json"
    plan.write_text(plan.read_text()[:-20])
    with pytest.raises(DamagedFileError, match=rf"{plan} is damaged: not valid JSON .*line \d+"):
        R.find_runs(s.folder)
    from data_prep import imagenet as prep

    from workbench.data import synthetic
    synthetic.write_class_folders(tmp_path / "src", classes=2, per_class=2, size=(40, 30))
    synthetic.write_class_folders(tmp_path / "src", classes=2, per_class=1, size=(40, 30),
                                  split="val")
    stored = tmp_path / "prep" / prep.PROGRESS / prep.SETTINGS
    stored.parent.mkdir(parents=True)
    stored.write_text('{"resize": null,')
    r = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--source",
                        str(tmp_path / "src"), "--dest", str(tmp_path / "prep"),
                        "--allow-partial"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{stored} is damaged: not valid JSON (the settings of an earlier preparation): " \
           f"Expecting property name enclosed in double quotes at line 1, column 17" in r.stderr


def test_atomic_writes_keep_the_old_version_when_the_content_fails(tmp_path):
    """Oracle: the bytes on disk — a write whose content raises leaves the old file and no
    temporary file, and the error names the file; with previous= the last two versions stay."""
    f = tmp_path / "a.bin"
    write_atomic(f, b"one")
    write_atomic(f, b"two", previous=tmp_path / "a.prev")

    def boom(_):
        raise RuntimeError("content failed")
    with pytest.raises(WriteError, match=rf"cannot write {f}: RuntimeError: content failed"):
        write_atomic(f, boom, previous=tmp_path / "a.prev")
    assert f.read_bytes() == b"two" and (tmp_path / "a.prev").read_bytes() == b"one"
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "x.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(DamagedFileError, match=r"x.json is damaged: not valid JSON: Expecting "
                                               r"value at line 2, column 7"):
        read_json(tmp_path / "x.json")
