"""Files that survive faults: atomic writes, and errors that name the file and the cause.

A file written by :func:`write_atomic` is either absent (or its old version) or complete, never
torn; with ``previous=`` the old version is kept under a second name (the run folder keeps its
last two checkpoints). A write that fails — a full disk, a quota, an I/O error — raises
:class:`WriteError`: one line naming the file and the cause, the temporary file removed, the
old version untouched. A file that cannot be read back as what it should be raises
:class:`DamagedFileError`, naming it, what is wrong (a JSON file: the line and column) and what
to do. Used by the run folder (checkpoints, metrics, summaries), the sweeps (plans) and
``data_prep`` (prepared datasets, manifests).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

__all__ = ["WriteError", "DamagedFileError", "write_atomic", "append_bytes", "read_json",
           "remove_stale_temporaries"]


class WriteError(OSError):
    """A file could not be written: ``path``, ``reason`` (e.g. "No space left on device"), and
    ``advice`` (what is kept, what to do), all in one line."""

    def __init__(self, path, reason: str, advice: str = "", errno: Optional[int] = None):
        self.path, self.reason, self.advice = Path(path), reason, advice
        text = f"cannot write {self.path}: {reason}" + (f"; {advice}" if advice else "")
        super().__init__(errno, text)

    def __str__(self) -> str:
        return self.args[1]

    def __reduce__(self):          # across processes (a worker pool) with its fields
        return type(self), (self.path, self.reason, self.advice, self.errno)

    @classmethod
    def wrap(cls, path, cause: BaseException) -> "WriteError":
        """The error for ``cause`` raised while writing ``path`` (its strerror for an OSError)."""
        if isinstance(cause, WriteError):
            return cause
        if isinstance(cause, OSError) and cause.strerror:
            return cls(path, cause.strerror, errno=cause.errno)
        return cls(path, f"{type(cause).__name__}: {cause}")

    def with_advice(self, advice: str) -> "WriteError":
        return WriteError(self.path, self.reason, advice, self.errno)


class DamagedFileError(ValueError):
    """A file exists but cannot be read as what it should be (truncated, not valid JSON, …)."""

    def __init__(self, path, what: str, advice: str = ""):
        self.path, self.what, self.advice = Path(path), what, advice
        super().__init__(f"{self.path} is damaged: {what}" + (f". {advice}" if advice else ""))

    def __reduce__(self):
        return type(self), (self.path, self.what, self.advice)


class _Recording(io.RawIOBase):
    """A binary file that remembers the first OSError its writes raised (``torch.save`` reports a
    failed write as its own RuntimeError, without the cause)."""

    def __init__(self, f: BinaryIO):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def write_atomic(path: Path, fill: Callable[[BinaryIO], None] | bytes,
                 previous: Optional[Path] = None) -> None:
    """Write ``path`` so that it is either absent/old or complete: a temporary file in the same
    folder (named ``.<name>.<random>.tmp``), fsynced, then renamed over ``path`` — after the
    old ``path``, if any, was renamed to ``previous`` (when given: the last two versions are
    kept; a crash between the renames leaves ``previous`` and the complete new temporary).

    ``fill`` is the content (bytes) or a function that writes it to the open binary file.
    The folder is fsynced last, so that the renames themselves survive a crash. Raises
    :class:`WriteError` (the temporary file removed, ``path`` untouched) if any step fails.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError.wrap(path, e) from e
    rec = None
    try:
        with os.fdopen(fd, "wb") as f:
            rec = _Recording(f)
            if isinstance(fill, (bytes, bytearray)):
                rec.write(fill)
            else:
                fill(rec)
            rec.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise WriteError.wrap(path, rec.error if rec is not None and rec.error else e) \
                from e
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise WriteError.wrap(path.parent, e) from e


def append_bytes(f: BinaryIO, path: Path, data: bytes) -> None:
    """Append ``data`` to the open file ``f`` (which is ``path``) and flush it; a failure raises
    :class:`WriteError` naming ``path``."""
    try:
        f.write(data)
        f.flush()
    except OSError as e:
        raise WriteError.wrap(path, e) from e


def read_json(path: Path, what: str = "", advice: str = ""):
    """The JSON content of ``path``; :class:`DamagedFileError` naming the file, the line and
    column of the error, ``what`` the file is and ``advice``."""
    path = Path(path)
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        kind = f" ({what})" if what else ""
        raise DamagedFileError(path, f"not valid JSON{kind}: {e.msg} at line {e.lineno}, "
                                     f"column {e.colno}", advice) from None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files an interrupted :func:`write_atomic` left in ``folder``."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)
