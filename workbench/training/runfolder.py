"""The run folder: ``config.json``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt``.

* ``config.json`` — the :class:`~workbench.training.config.TrainConfig`, with the run options
  under ``"run"`` (:func:`workbench.training.config.record`), written when the run starts.
* ``metrics.jsonl`` — one JSON object per line, appended and flushed as the run goes.
* ``checkpoint.pt`` — the latest checkpoint, written atomically (a temp file in the same folder,
  fsync, ``os.replace``), so a kill at any moment leaves the previous checkpoint or the new one,
  never a torn file. It records the length of ``metrics.jsonl`` at that moment: resuming
  truncates the lines written after it, which the resumed run writes again.
* ``checkpoint.prev.pt`` — the checkpoint before it: a resume whose ``checkpoint.pt`` cannot be
  read (truncated by a copy, a storage fault) falls back to it with a warning, and still ends
  where the uninterrupted run ends (the run is a pure function of its checkpoint).
* ``summary.json`` — written at the end (or when the run stops on a non-finite value).

A write that fails (a full disk) raises :class:`~workbench.files.WriteError` naming the file;
what was written before stays as it was. Only the process that owns the folder (rank 0) writes;
every process may read.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..files import (DamagedFileError, WriteError, append_bytes, read_json,
                     remove_stale_temporaries, write_atomic)

__all__ = ["RunFolder", "flat_config", "config_diff", "load_checkpoint", "read_state",
           "hardware", "cpu_name", "git_commit", "CONFIG", "METRICS", "SUMMARY", "CHECKPOINT",
           "PREVIOUS_CHECKPOINT", "ERROR"]

# the run folder's files: this module writes and reads every one of them
CONFIG, METRICS, SUMMARY, CHECKPOINT = "config.json", "metrics.jsonl", "summary.json", \
    "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: the error a sweep recorded for a run that raised (first line, then the traceback)
ERROR = "sweep-error.txt"
#: what every checkpoint holds (besides what the trainer adds)
CHECKPOINT_KEYS = ("step", "epoch", "model", "optimizer", "metrics_bytes")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file's content; :class:`DamagedFileError` naming it and what is wrong."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:          # torch's zip reader, unpickler or the OS: all mean damaged
        raise DamagedFileError(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") \
            from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise DamagedFileError(path, f"not a checkpoint of this workbench (no {missing})")
    return ckpt


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

    # -- reading -------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Has a run started here (its config written)?"""
        return self.file(CONFIG).is_file()

    def config(self) -> dict:
        """``config.json`` as written (:class:`DamagedFileError` naming it if unreadable;
        :func:`workbench.training.config.upgrade` reads it in this version's layout)."""
        return read_json(self.file(CONFIG), "the run's config", "Restore it from a backup, or "
                         "start the run again in a new --run-dir (the checkpoint cannot be "
                         "resumed without it)")

    def rows(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` (none if absent); a line cut by a kill is skipped —
        a resume writes it again."""
        path, rows = self.file(METRICS), []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return rows

    def state(self, total: Optional[int] = None, rows: Optional[list] = None) -> dict:
        """:func:`read_state` of this folder."""
        return read_state(self.path, total, rows)

    def record_error(self, text: str) -> None:
        """Record why the run raised (:data:`ERROR`; its first line is what the state shows)."""
        if self.writer:
            write_atomic(self.file(ERROR), text.encode())

    def clear_outcome(self) -> None:
        """Forget how an earlier attempt ended (its recorded error and summary), before the run
        is tried again; its config, metrics and checkpoints stay."""
        if self.writer:
            self.file(ERROR).unlink(missing_ok=True)
            self.file(SUMMARY).unlink(missing_ok=True)

    # -- starting and resuming -----------------------------------------------------------------
    def check(self, config: dict, resume: bool, normalise=None) -> Optional[dict]:
        """Check the folder before anything is written; return the checkpoint to resume from.

        New run: refuses a folder that already holds a run (never overwrites it). Resume:
        refuses a folder without ``config.json`` or whose config differs (listing the
        differences; ``normalise`` brings a saved config written by
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
        saved = self.config()
        if normalise is not None:
            saved = normalise(saved)
        diff = config_diff(saved, config)
        if diff:
            raise ValueError(f"cannot resume {self.path}: its config differs from this one "
                             f"(saved → now):\n  " + "\n  ".join(diff) +
                             "\nResume with the saved values, or start a new --run-dir.")
        return self.latest_checkpoint()

    def latest_checkpoint(self) -> Optional[dict]:
        """The newest readable checkpoint: ``checkpoint.pt``, else (with a warning naming the
        damaged or missing file) ``checkpoint.prev.pt``; None if the run has none.
        :class:`DamagedFileError` when every checkpoint there is damaged."""
        ckpt_file, prev_file = self.file(CHECKPOINT), self.file(PREVIOUS_CHECKPOINT)
        damage = None
        if ckpt_file.is_file():
            try:
                return load_checkpoint(ckpt_file)
            except DamagedFileError as e:
                damage = e
        if not prev_file.is_file():
            if damage is None:
                return None
            raise DamagedFileError(ckpt_file, damage.what,
                                   f"No earlier checkpoint is kept in {self.path}: restore "
                                   f"{CHECKPOINT} from a backup, or start the run again in a new "
                                   f"--run-dir")
        try:
            ckpt = load_checkpoint(prev_file)
        except DamagedFileError as e:
            raise DamagedFileError(prev_file, e.what,
                                   f"and so is {CHECKPOINT} ({damage}): restore one from a "
                                   f"backup, or start the run again in a new --run-dir") from None
        why = f"{damage}" if damage is not None else f"{ckpt_file} is missing"
        warnings.warn(f"{why}; resuming from the previous checkpoint {prev_file} (step "
                      f"{ckpt['step']}): the steps after it are run again", RuntimeWarning,
                      stacklevel=2)
        return ckpt

    def open(self, config: dict, checkpoint: Optional[dict]) -> None:
        """Start writing: ``config.json`` for a new run; ``metrics.jsonl`` cut back to the
        checkpoint's length (the lines after it are written again by the resumed run)."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)              # of a write that a kill interrupted
        if not self.file(CONFIG).exists():
            write_atomic(self.file(CONFIG), _json_bytes(config))
        metrics = self.file(METRICS)
        keep = checkpoint["metrics_bytes"] if checkpoint is not None else 0
        try:
            if metrics.exists() and metrics.stat().st_size > keep:
                with open(metrics, "r+b") as f:
                    f.truncate(keep)
            self._metrics = open(metrics, "ab")
        except OSError as e:
            raise WriteError.wrap(metrics, e) from e

    # -- writing -------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        if self.writer:
            append_bytes(self._metrics, self.file(METRICS), (json.dumps(row) + "\n").encode())

    def checkpoint(self, state: dict) -> None:
        """Write ``state`` (plus the current length of ``metrics.jsonl``) atomically, keeping
        the checkpoint before it as ``checkpoint.prev.pt``."""
        if not self.writer:
            return
        try:
            self._metrics.flush()
            os.fsync(self._metrics.fileno())
        except OSError as e:
            raise WriteError.wrap(self.file(METRICS), e) from e
        state = dict(state, metrics_bytes=self._metrics.tell())
        write_atomic(self.file(CHECKPOINT), lambda f: torch.save(state, f),
                     previous=self.file(PREVIOUS_CHECKPOINT))

    def summary(self, summary: dict) -> None:
        if self.writer:
            write_atomic(self.file(SUMMARY), _json_bytes(summary))

    def close(self) -> None:
        """Close ``metrics.jsonl``. Every line was flushed when it was appended, so only the
        remains of an append that already failed (and raised) can fail to be written here;
        they are dropped (a resume cuts the file back to its checkpoint's length anyway)."""
        if self._metrics is not None:
            try:
                self._metrics.close()
            except OSError:
                pass
            self._metrics = None


def read_state(folder, total: Optional[int] = None, rows: Optional[list] = None) -> dict:
    """A run folder's state from its files: ``done`` (summary says completed), ``failed`` (a
    non-finite stop, or the error a sweep recorded), ``started`` (config without summary:
    running, killed or pre-empted) or ``pending`` (nothing yet); with the epochs done of
    ``total`` and the error's first line. ``rows``: its metrics rows, when already read."""
    folder = RunFolder(folder, writer=False)
    rows = folder.rows() if rows is None else rows
    epochs = sum(1 for r in rows if r.get("type") == "epoch")
    out = {"epochs": epochs, "of": total, "error": None}
    summary = folder.file(SUMMARY)
    if summary.is_file():
        s = read_json(summary, "the run's summary")
        if s.get("status") == "completed":
            return {**out, "state": "done", "test_top1_error": s.get("test_top1_error")}
        return {**out, "state": "failed", "error": s.get("message") or s.get("status")}
    if folder.file(ERROR).is_file():
        text = folder.file(ERROR).read_text().strip().splitlines()
        return {**out, "state": "failed", "error": text[0] if text else "unknown error"}
    if folder.holds_run():
        return {**out, "state": "started"}
    return {**out, "state": "pending"}


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


def flat_config(config: dict) -> dict:
    """``{"estimator": {"beta": …}, "model_args": {"widths": …}}`` → ``{"beta": …,
    "model_args.widths": …}``: the fields as a sweep file and ``--flags`` name them."""
    out = {}
    for k, v in config.items():
        if k == "estimator" and isinstance(v, dict):
            out.update(v)
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out
