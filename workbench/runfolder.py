"""The run folder: ``config.json``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt``.

* ``config.json`` — the full :class:`~workbench.train.TrainConfig`, written when the run starts.
* ``metrics.jsonl`` — one JSON object per line, appended and flushed as the run goes.
* ``checkpoint.pt`` — the latest checkpoint, written atomically (a temp file in the same folder,
  fsync, ``os.replace``), so a kill at any moment leaves the previous checkpoint or the new one,
  never a torn file. It records the length of ``metrics.jsonl`` at that moment: resuming
  truncates the lines written after it, which the resumed run writes again.
* ``summary.json`` — written at the end (or when the run stops on a non-finite value).

Only the process that owns the folder (rank 0) writes; every process may read.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

from .files import remove_stale_temporaries, write_atomic

__all__ = ["RunFolder", "config_diff", "atomic_write", "hardware", "cpu_name", "git_commit"]

CONFIG, METRICS, SUMMARY, CHECKPOINT = "config.json", "metrics.jsonl", "summary.json", \
    "checkpoint.pt"


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, rename it over ``path``
    (:func:`workbench.files.write_atomic`, which removes the temp file on failure),
    then fsync the folder so that the rename itself survives a crash."""
    write_atomic(path, write)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def config_diff(saved: dict, new: dict, ignore=()) -> list[str]:
    """``"key: saved → new"`` for every key whose value differs (JSON-normalised); nested
    dicts (the estimator settings) are compared key by key as ``outer.inner``."""
    a, b = json.loads(json.dumps(saved)), json.loads(json.dumps(new))
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ignore or a.get(k) == b.get(k):
            continue
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += [f"{k}.{line}" for line in config_diff(a[k], b[k])]
        else:
            out.append(f"{k}: {json.dumps(a.get(k))} → {json.dumps(b.get(k))}")
    return out


class RunFolder:
    """One run's folder. ``writer``: this process writes (rank 0); others only read."""

    def __init__(self, path, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self._metrics = None

    def file(self, name: str) -> Path:
        return self.path / name

    # -- starting and resuming -----------------------------------------------------------------
    def check(self, config: dict, resume: bool, ignore=(),
              normalise=None) -> Optional[dict]:
        """Check the folder before anything is written; return the checkpoint to resume from.

        New run: refuses a folder that already holds a run (never overwrites it). Resume:
        refuses a folder without ``config.json`` or whose config differs (listing the
        differences, except keys in ``ignore``; ``normalise`` brings a saved config written by
        an earlier version to the current layout first, or raises ``ValueError`` saying why it
        cannot resume). Returns None for a new run, or a resumed one killed before its first
        checkpoint.
        """
        cfg_file, ckpt_file = self.file(CONFIG), self.file(CHECKPOINT)
        if not resume:
            if cfg_file.exists() or ckpt_file.exists():
                raise ValueError(f"{self.path} already holds a run; pass --resume to continue "
                                 f"it, or choose another --run-dir (nothing was overwritten)")
            return None
        if not cfg_file.is_file():
            raise ValueError(f"cannot resume: {cfg_file} does not exist (start the run "
                             f"without --resume, or point --run-dir at an existing run)")
        saved = json.loads(cfg_file.read_text())
        if normalise is not None:
            saved = normalise(saved)
        diff = config_diff(saved, config, ignore)
        if diff:
            raise ValueError(f"cannot resume {self.path}: its config differs from this one "
                             f"(saved → now):\n  " + "\n  ".join(diff) +
                             "\nResume with the saved values, or start a new --run-dir.")
        if not ckpt_file.is_file():
            return None
        return torch.load(ckpt_file, map_location="cpu", weights_only=True)

    def open(self, config: dict, checkpoint: Optional[dict]) -> None:
        """Start writing: ``config.json`` for a new run; ``metrics.jsonl`` cut back to the
        checkpoint's length (the lines after it are written again by the resumed run)."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)              # of a write that a kill interrupted
        if not self.file(CONFIG).exists():
            atomic_write(self.file(CONFIG), lambda f: f.write(_json_bytes(config)))
        metrics = self.file(METRICS)
        keep = checkpoint["metrics_bytes"] if checkpoint is not None else 0
        if metrics.exists() and metrics.stat().st_size > keep:
            with open(metrics, "r+b") as f:
                f.truncate(keep)
        self._metrics = open(metrics, "ab")

    # -- writing -------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        if self.writer:
            self._metrics.write((json.dumps(row) + "\n").encode())
            self._metrics.flush()

    def checkpoint(self, state: dict) -> None:
        """Write ``state`` (plus the current length of ``metrics.jsonl``) atomically."""
        if not self.writer:
            return
        self._metrics.flush()
        os.fsync(self._metrics.fileno())
        state = dict(state, metrics_bytes=self._metrics.tell())
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save(state, f))

    def summary(self, summary: dict) -> None:
        if self.writer:
            atomic_write(self.file(SUMMARY), lambda f: f.write(_json_bytes(summary)))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def hardware(device: torch.device, world: int) -> dict:
    """What ran the job: device, its name, CPU count, processes, torch and python versions."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processes": world,
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The workbench checkout's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
