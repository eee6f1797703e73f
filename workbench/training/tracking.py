"""Experiment tracking beside ``metrics.jsonl``: TensorBoard event files (on by default) and
Weights & Biases in offline mode (only when asked for and installed; never required).

Every row the trainer writes to ``metrics.jsonl`` is also logged as scalars at its global step
(:func:`scalars` names them): ``train/loss``, ``train/lr``, ``train/final_energy``,
``train/images_per_second``, ``test/loss``, ``test/top1_error``, ``test/top5_error`` for each
epoch; ``probe/cosine/layer_i`` and ``probe/rel_error/layer_i`` (layer i counted from the input,
as in ``ep.compare``) and ``probe/final_energy`` for each probe. A finished run adds the
hyper-parameters (the config, flattened) with its final and best test errors to TensorBoard's
HParams table.

The event files live in ``<run folder>/tensorboard/``; ``tensorboard --logdir runs/sweeps/NAME``
shows every run of a sweep side by side. A resumed run writes a new event file that starts by
purging the steps after its checkpoint (TensorBoard's ``purge_step``), so what TensorBoard
shows equals ``metrics.jsonl`` also after a kill.
"""
from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from .runfolder import flat_config
from ..files import WriteError

__all__ = ["Tracker", "scalars", "hparams", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"

_EPOCH = {"train_loss": "train/loss", "lr": "train/lr", "final_energy": "train/final_energy",
          "final_state_change": "train/final_state_change",
          "images_per_second": "train/images_per_second", "test_loss": "test/loss",
          "test_top1_error": "test/top1_error", "test_top5_error": "test/top5_error"}


def scalars(row: dict) -> dict[str, float]:
    """The scalars of one ``metrics.jsonl`` row, by tag (finite numbers only)."""
    out: dict[str, float] = {}
    if row.get("type") == "epoch":
        out = {tag: row.get(key) for key, tag in _EPOCH.items()}
        out["train/epoch"] = row.get("epoch")
    elif row.get("type") == "probe":
        out["probe/final_energy"] = row.get("final_energy")
        for what in ("cosine", "rel_error"):
            for i, v in enumerate(row.get(what) or []):
                out[f"probe/{what}/layer_{i + 1}"] = v
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def hparams(config: dict) -> dict:
    """The config flattened (:func:`workbench.training.runfolder.flat_config`: the estimator's fields by
    their own names, model/data options as ``model_args.NAME``) to TensorBoard's
    hyper-parameter values: numbers, strings and bools as they are, anything else as JSON."""
    return {k: v if isinstance(v, (bool, str)) or (isinstance(v, (int, float))
                                                    and math.isfinite(v)) else json.dumps(v)
            for k, v in flat_config(config).items()}


class Tracker:
    """The trackers of one run (rank 0 only). ``resume_step``: the step of the checkpoint the
    run continues from (None: a fresh start, which clears event files a killed attempt left
    before its first checkpoint)."""

    def __init__(self, run_dir, config: dict, tensorboard: bool = True, wandb: bool = False,
                 resume_step: Optional[int] = None):
        self.tb = self.wb = None
        self.config = config
        if wandb:                          # first: a missing package stops before any writing
            self.wb = _wandb_run(run_dir, config)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=True needs the tensorboard package (pip install "
                                 "tensorboard), or pass --no-tensorboard") from None
            logdir = Path(run_dir) / TENSORBOARD_DIR
            if resume_step is None and logdir.exists():
                shutil.rmtree(logdir)
            _after_existing_files(logdir)
            _quiet_writer_threads()
            # events of the killed attempt after the checkpoint's step are hidden; everything
            # at or before it was written (and flushed) before the checkpoint
            self.tb = SummaryWriter(str(logdir), flush_secs=30,
                                    purge_step=None if resume_step is None else resume_step + 1)

    def _tensorboard(self, write) -> None:
        """``write(writer)`` on the event file; a failure (the writer's thread reports a full
        disk at the next call) is a :class:`~workbench.files.WriteError` naming the file."""
        if self.tb is None:
            return
        try:
            write(self.tb)
        except Exception as e:
            raise WriteError.wrap(self._event_file(), e) from e

    def _event_file(self) -> Path:
        files = sorted(Path(self.tb.log_dir).glob("events.out.tfevents.*"),
                       key=lambda p: p.stat().st_mtime)
        return files[-1] if files else Path(self.tb.log_dir)

    def log(self, row: dict) -> None:
        values, step = scalars(row), int(row.get("step", 0))
        self._tensorboard(lambda tb: [tb.add_scalar(tag, v, step) for tag, v in values.items()])
        if self.wb is not None and values:
            self.wb.log(values, step=step)

    def flush(self) -> None:
        self._tensorboard(lambda tb: tb.flush())

    def finish(self, summary: dict) -> None:
        """The run ended: its hyper-parameters with the final and best test errors."""
        metrics = {f"hparams/{k}": summary[k] for k in (
            "test_top1_error", "test_top5_error", "best_test_top1_error", "test_loss")
            if isinstance(summary.get(k), (int, float))}
        if self.tb is not None and summary.get("status") == "completed":
            from torch.utils.tensorboard.summary import hparams as hp_summary
            exp, ssi, sei = hp_summary(hparams(self.config), metrics)

            def write(tb):
                for s in (exp, ssi, sei):
                    tb.file_writer.add_summary(s)
                for k, v in metrics.items():
                    tb.add_scalar(k, v, int(summary.get("steps", 0)))
            self._tensorboard(write)
        if self.wb is not None:
            self.wb.summary.update({k.split("/", 1)[1]: v for k, v in metrics.items()})

    def close(self) -> None:
        if self.tb is not None:
            try:
                self._tensorboard(lambda tb: tb.close())
            finally:
                self.tb = None
        if self.wb is not None:
            self.wb.finish()
            self.wb = None


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread re-raises a failed write (a full disk) in the next call on
    the writer, where :class:`Tracker` reports it as one line; keep threading's default hook
    from also printing the thread's traceback. Other threads are reported as before."""
    from tensorboard.summary.writer import event_file_writer
    writer_thread = getattr(event_file_writer, "_AsyncWriterThread", None)
    previous = threading.excepthook
    if writer_thread is None or getattr(previous, "workbench_quiet", False):
        return

    def hook(args):
        if not isinstance(args.thread, writer_thread):
            previous(args)
    hook.workbench_quiet = True
    threading.excepthook = hook


def _after_existing_files(logdir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the
    second it was created (``events.out.tfevents.<seconds>.<host>.<pid>.<n>``): wait until
    the clock has passed the newest file's second, so the resumed run's file (which purges
    the killed attempt's later steps) is read after the files it corrects."""
    seconds = [int(p.name.split(".")[3]) for p in logdir.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _wandb_run(run_dir, config: dict):
    try:
        import wandb
    except ImportError:
        raise ValueError("wandb=True needs the wandb package (pip install wandb); it is "
                         "optional — TensorBoard event files are written regardless") from None
    run_dir = Path(run_dir)
    # one W&B run per run folder: the same id when it resumes
    run_id = "".join(c if c.isalnum() else "-" for c in run_dir.resolve().as_posix())[-64:]
    return wandb.init(mode="offline", dir=str(run_dir), name=run_dir.name, config=config,
                      id=run_id.strip("-") or "run", resume="allow")
