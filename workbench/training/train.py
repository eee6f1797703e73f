"""``workbench train`` / :func:`run`: one training loop for EP and BP, into a run folder.

One step: move the batch to the device (and apply the dataset's ``device_transform``), set the
learning rate of the cosine schedule, let :func:`workbench.engine.ep.estimate` write the gradient of the
batch-mean cost into ``.grad`` (``scheme="bp"``: backprop; ``incremental``: iPC, whose weights
step inside, :func:`workbench.engine.pc.ipc_step`), average it over the processes,
stop on a non-finite loss, energy or gradient, and take an SGD step (Nesterov momentum, weight
decay on every parameter). Each epoch ends with a test pass, a line in ``metrics.jsonl`` and a
checkpoint; every ``probe_every`` steps a *probe* line records the per-layer cosine and relative
error of the EP estimate against the BP gradient on a fixed batch of test images (test images:
their preprocessing has no randomness, for every dataset; a BP run has no probe: its gradient is
the reference). What a run computes is its :class:`TrainConfig`; how this process runs it (the
folder, the device, the display, the workers, the trackers) its :class:`RunOptions`.

Everything random is a function of ``(seed, epoch, step)`` — data order, augmentation, the random
scheme's signs (drawn for the GLOBAL batch and sliced per process) — and the learning rate is a
function of the step, so a checkpoint (model, optimizer, counters, running sums, RNG state) is
enough to continue to exactly the uninterrupted result on the CPU.

Defaults follow the paper's VGG5 cross-entropy recipe (docs/method.md §8): β = 0.02, K = 5, lr 0.01,
momentum 0.9 (Nesterov), weight decay 3e-4, batch 64, 100 epochs, cosine down to 1e-6. The cosine
schedule is applied per epoch as in the paper (``lr(e) = min_lr + (lr − min_lr)(1 + cos(π e /
E)) / 2`` for epoch ``e`` of ``E``), or per step with ``schedule="step"``; ``--preset`` names one
of the paper's recipes (:mod:`workbench.training.presets`).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from ..data.loader import EpochBatches, make_loader, mix_seed, to_device
from ..engine import ep, pc
from ..engine.precision import Precision
from ..files import WriteError
from . import distributed
from .assembly import build_datasets, build_model, default_run_dir, input_size, resolve
from .config import (RunOptions, TrainConfig, add_arguments, as_run, config_from_args, record,
                     resumable)
from .evaluation import Evaluation, sync_statistics
from .progress import Progress
from .runfolder import CHECKPOINT, RunFolder, git_commit, hardware
from .tracking import Tracker

__all__ = ["TrainConfig", "RunOptions", "as_run", "run", "NonFiniteError", "add_arguments",
           "config_from_args", "main", "cosine_lr", "learning_rate", "input_size",
           "build_datasets", "build_model", "Trainer", "EpochStats", "Keys"]


class NonFiniteError(RuntimeError):
    """The loss, an energy or a gradient became NaN or Inf; the run stopped."""


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """The learning rate used for step ``step`` (0-based) of ``total``."""
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * step / total)) / 2


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based): cosine annealing from ``lr`` to ``min_lr``
    over the epochs, constant within an epoch (``schedule="epoch"``, the paper's T_max =
    epochs), or over the steps (``"step"``). A pure function of the step: resume is exact."""
    if cfg.schedule == "epoch":
        return cosine_lr(step // steps_per_epoch, cfg.epochs, cfg.lr, cfg.min_lr)
    return cosine_lr(step, cfg.epochs * steps_per_epoch, cfg.lr, cfg.min_lr)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Keys:
    """The keys of a checkpoint (``checkpoint.pt``); ``format`` 1 since the first release.
    :data:`workbench.training.runfolder.CHECKPOINT_KEYS` are those a resume needs."""
    FORMAT, STEP, EPOCH, ELAPSED = "format", "step", "epoch", "elapsed"
    MODEL, OPTIMIZER, RNG = "model", "optimizer", "torch_rng"
    EPOCH_STATS, BEST, LAST = "acc", "best", "last"


@dataclass
class EpochStats:
    """The running sums of the epoch in progress (checkpointed, so that a resume mid-epoch
    reports the epoch an uninterrupted run reports)."""
    loss: float = 0.0
    energy: float = 0.0
    change: float = 0.0
    steps: int = 0
    seconds: float = 0.0

    def add(self, loss: float, energy: float, change: float) -> None:
        self.loss += loss
        self.energy += energy
        self.change += change
        self.steps += 1


def batch_signs(cfg: TrainConfig, step: int, dist: distributed.Dist, n: int) -> torch.Tensor:
    """The random scheme's ±1 per example at ``step``: drawn for the global batch from the
    run's seed (one for all of it with ``signs="batch"``), this process's slice of ``n``."""
    gen = torch.Generator().manual_seed(mix_seed(cfg.seed, "signs", step))
    if cfg.estimator.signs == "batch":
        signs = ep.random_signs(1, gen).expand(cfg.batch_size)
    else:
        signs = ep.random_signs(cfg.batch_size, gen)
    per = cfg.batch_size // dist.world
    return signs[dist.rank * per:dist.rank * per + n]


def epoch_row(cfg: TrainConfig, epoch: int, step: int, acc: EpochStats, test: dict, lr: float,
              test_seconds: float) -> dict:
    """The ``metrics.jsonl`` row of an epoch: its mean training loss, the test pass, the
    learning rate, the throughput (training steps only) and, for EP, where the phases ended."""
    ep_mode = cfg.estimator.scheme != "bp"
    return {"type": "epoch", "epoch": epoch + 1, "step": step,
            "train_loss": acc.loss / acc.steps, **test, "lr": lr,
            "images_per_second": acc.steps * cfg.batch_size / max(acc.seconds, 1e-9),
            "seconds": acc.seconds + test_seconds,
            "final_energy": acc.energy / acc.steps if ep_mode else None,
            "final_state_change": acc.change / acc.steps if ep_mode else None}


def stop_message(folder: RunFolder, step: int, epoch: int, what: str, value: float) -> str:
    """Why a run stopped on a non-finite value, and what it leaves."""
    ckpt = folder.file(CHECKPOINT)
    kept = (f"the last good checkpoint is kept: {ckpt}" if ckpt.exists()
            else "no checkpoint had been written yet")
    return (f"stopped at step {step + 1} (epoch {epoch + 1}): the {what} is {value}; {kept}. "
            f"Lower --lr or --beta, or check the data.")


def kept_after_failed_write(folder: RunFolder) -> str:
    """What a failed write leaves: the last complete checkpoint, and how to continue."""
    ckpt = folder.file(CHECKPOINT)
    if ckpt.exists():
        kept = f"the last complete checkpoint is intact: {ckpt}"
    else:
        kept = "no checkpoint had been written yet"
    return (f"{kept}; fix the cause (free space on {folder.path}) and run again with "
            f"--resume")


class Trainer:
    """One run's loop: :meth:`setup` (seed, data, model, optimizer, loaders), :meth:`train`
    (from a checkpoint or the start, to the last epoch), :meth:`save` (a checkpoint). Use
    :func:`run`, which also resolves the config and opens the run folder."""

    def __init__(self, cfg: TrainConfig, options: RunOptions, dist: distributed.Dist,
                 device: torch.device, folder: RunFolder,
                 callback: Optional[Callable[[dict], None]] = None):
        self.cfg, self.dist, self.device, self.callback = cfg, dist, device, callback
        self.options, self.folder = options, folder
        self.step, self.epoch, self.elapsed = 0, 0, 0.0
        self.stats = EpochStats()
        self.best: dict = {}
        self.last: dict = {}
        self.progress = Progress(options.progress, dist.is_main)
        self.tracker: Optional[Tracker] = None

    def setup(self) -> "Trainer":
        """Datasets, the model (built after seeding torch with the run's seed), the optimizer
        (SGD, Nesterov, weight decay on every parameter), the batch samplers and loaders."""
        cfg, dist, device = self.cfg, self.dist, self.device
        self.train_set, test_set = build_datasets(cfg, self.options)
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg, self.train_set).to(device).train()
        self.params = [p for _, p in ep.trainable(self.net)]
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.n_train = min(len(self.train_set), cfg.limit_train or len(self.train_set))
        self.sampler = EpochBatches(self.n_train, cfg.batch_size, seed=cfg.seed, rank=dist.rank,
                                    world=dist.world, augment=True)
        pin = device.type == "cuda"
        self.loader = make_loader(self.train_set, self.sampler, workers=self.options.workers,
                                  pin_memory=pin)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.precision = Precision.make(cfg.estimator.precision, torch.float32, device,
                                        linear=self.net.wiring.linear)
        self.evaluation = Evaluation(cfg, test_set, dist, device, self.precision, pin,
                                     self.options.workers)
        return self

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """One optimizer step on a loader batch; returns (loss, final energy, state change)
        averaged over the processes."""
        cfg = self.cfg
        x, y = to_device(self.train_set, x, y, self.device)
        lr = learning_rate(cfg, self.step, self.steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if cfg.incremental:                 # the weights step inside, after every inference step
            out = pc.ipc_step(self.net, x, y, cfg.estimator, self.opt,
                              before_update=self._averaged_and_finite)
            stats = torch.tensor([out["loss"], out["energy"], out["state_change"]],
                                 device=self.device)
            self.dist.average([stats])
            loss, energy, change = stats.tolist()
            self._check_finite(("training loss", loss), ("final energy", energy))
            self.step += 1
            return loss, energy, change
        self.opt.zero_grad(set_to_none=True)
        if cfg.estimator.scheme == "bp":
            est = ep.estimate(self.net, x, y, cfg.estimator)
        else:
            signs = batch_signs(cfg, self.step, self.dist, len(y)) \
                if cfg.estimator.scheme == "random" else None
            est = ep.estimate(self.net, x, y, cfg.estimator, signs=signs, trace=False)
        phases = est.trace.phases
        stats = torch.tensor([est.loss,
                              sum(p.final_energy for p in phases) / max(len(phases), 1),
                              sum(float(p.state_change[-1].max()) for p in phases)
                              / max(len(phases), 1)], device=self.device)
        self.dist.average([stats])
        self._averaged_and_finite([p.grad for p in self.params])
        loss, energy, change = stats.tolist()
        self._check_finite(("training loss", loss), ("final energy", energy))
        self.opt.step()
        self.step += 1
        return loss, energy, change

    def _averaged_and_finite(self, grads: list) -> None:
        """The gradients averaged over the processes, then checked finite (before any update)."""
        self.dist.average(grads)
        grad_sq = torch.stack([torch.linalg.vector_norm(g) for g in grads]).pow(2).sum()
        self._check_finite(("gradient norm", float(grad_sq.sqrt())))

    def _check_finite(self, *values) -> None:
        for what, value in values:
            if not math.isfinite(value):
                raise NonFiniteError(stop_message(self.folder, self.step, self.epoch, what,
                                                  value))

    # -- measurements --------------------------------------------------------------------------
    def probe(self) -> None:
        """The probe row (:meth:`Evaluation.probe`), measured on the main process (none for a
        BP run: its gradient is the reference)."""
        if self.dist.is_main and self.cfg.estimator.scheme != "bp":
            self._emit(self.evaluation.probe(self.net, self.epoch, self.step))

    def _emit(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        self.folder.append(row)
        if self.tracker is not None:
            self.tracker.log(row)
        if self.callback is not None:
            self.callback(row)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> None:
        """A checkpoint of the step reached (after every tracked event is on disk, with the
        running statistics averaged over the processes)."""
        if self.tracker is not None:
            self.tracker.flush()
        sync_statistics(self.net, self.dist)
        self.folder.checkpoint({
            Keys.FORMAT: 1, Keys.STEP: self.step, Keys.EPOCH: self.epoch,
            Keys.ELAPSED: self.wall_time(), Keys.MODEL: self.net.state_dict(),
            Keys.OPTIMIZER: self.opt.state_dict(), Keys.EPOCH_STATS: asdict(self.stats),
            Keys.BEST: dict(self.best), Keys.LAST: dict(self.last),
            Keys.RNG: torch.get_rng_state()})

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt[Keys.MODEL])
        self.opt.load_state_dict(ckpt[Keys.OPTIMIZER])
        self.step, self.epoch = ckpt[Keys.STEP], ckpt[Keys.EPOCH]
        self.elapsed = ckpt[Keys.ELAPSED]
        self.stats = EpochStats(**ckpt[Keys.EPOCH_STATS])
        self.best, self.last = ckpt[Keys.BEST], ckpt[Keys.LAST]
        torch.set_rng_state(ckpt[Keys.RNG])

    def wall_time(self) -> float:
        """Seconds of training so far, over every resume."""
        return self.elapsed + time.perf_counter() - self._t0

    # -- the loop ------------------------------------------------------------------------------
    def train(self, ckpt: Optional[dict]) -> dict:
        """Train from ``ckpt`` (None: from the start) to the last epoch; return the summary."""
        cfg, opts = self.cfg, self.options
        self._t0 = time.perf_counter()
        if self.dist.is_main and (opts.tensorboard or opts.wandb):
            self.tracker = Tracker(self.folder.path, cfg.to_dict(), opts.tensorboard, opts.wandb,
                                   resume_step=None if ckpt is None else ckpt[Keys.STEP])
        self.folder.open(record(cfg, opts), ckpt)
        try:
            if ckpt is not None:
                self.load(ckpt)
            elif cfg.probe_every:
                self.probe()
            for epoch in range(self.epoch, cfg.epochs):
                self._run_epoch(epoch)
            return self._finish("completed")
        except NonFiniteError as e:
            self._finish("non_finite", str(e))
            raise
        except WriteError as e:
            raise e.with_advice(kept_after_failed_write(self.folder)) from None
        finally:
            self.folder.close()
            if self.tracker is not None:
                try:
                    self.tracker.close()
                except WriteError:
                    if sys.exc_info()[0] is None:     # not while another error is on its way
                        raise

    def _run_epoch(self, epoch: int) -> None:
        cfg, spe = self.cfg, self.steps_per_epoch
        start = self.step - epoch * spe
        self.sampler.set_epoch(epoch, start)
        self.progress.epoch(epoch, cfg.epochs, start, spe)
        tick = time.perf_counter()
        for x, y in self.loader:
            loss, energy, change = self.train_step(x, y)
            self.stats.add(loss, energy, change)
            self.progress.step(self.step - epoch * spe, loss, self.opt.param_groups[0]["lr"])
            if cfg.probe_every and self.step % cfg.probe_every == 0:
                self.stats.seconds += time.perf_counter() - tick  # images/s excludes the probe
                self.probe()
                tick = time.perf_counter()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                    and self.step % spe:
                self.stats.seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                self.save()
        self.stats.seconds += time.perf_counter() - tick
        tick = time.perf_counter()
        self._end_epoch(epoch, self.evaluation.test(self.net), tick)

    def _end_epoch(self, epoch: int, test: dict, tick: float) -> None:
        """The epoch's row (metrics.jsonl), the best epoch so far, the progress line, and a
        checkpoint."""
        cfg = self.cfg
        row = epoch_row(cfg, epoch, self.step, self.stats, test, self.opt.param_groups[0]["lr"],
                        time.perf_counter() - tick)
        self.last = row
        if not self.best or row["test_top1_error"] < self.best["test_top1_error"]:
            self.best = {"epoch": epoch + 1, "test_top1_error": row["test_top1_error"],
                         "test_top5_error": row["test_top5_error"]}
        self._emit(row)
        self.progress.line(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                           f", test top-1 error {row['test_top1_error']:.4f}, top-5 "
                           f"{row['test_top5_error']:.4f}, {row['images_per_second']:.0f} img/s")
        self.epoch, self.stats = epoch + 1, EpochStats()
        self.save()

    def _finish(self, status: str, message: Optional[str] = None) -> dict:
        summary = results(self, status)
        if message:
            summary["message"] = message
        self.folder.summary(summary)
        if self.tracker is not None:
            self.tracker.finish(summary)
        return summary


def results(trainer: Trainer, status: str) -> dict:
    """The run's summary (``summary.json``): how it ended, its last and best epochs, its time,
    hardware, commit and config."""
    t = trainer
    return {"status": status, "run_dir": str(t.folder.path), "epochs": t.epoch,
            "steps": t.step, "train_examples": t.n_train,
            "test_examples": t.evaluation.n_test,
            "test_top1_error": t.last.get("test_top1_error"),
            "test_top5_error": t.last.get("test_top5_error"),
            "test_loss": t.last.get("test_loss"),
            "train_loss": t.last.get("train_loss"),
            "best_test_top1_error": t.best.get("test_top1_error"),
            "best_test_top5_error": t.best.get("test_top5_error"),
            "best_epoch": t.best.get("epoch"),
            "wall_time_seconds": t.wall_time(),
            "hardware": hardware(t.device, t.dist.world),
            "git_commit": git_commit(), "config": record(t.cfg, t.options)}


def run(config, options=None, *, callback: Optional[Callable[[dict], None]] = None) -> dict:
    """Train as ``config`` says (a :class:`TrainConfig`, or a dict of its fields — run options
    may be among them), run as ``options`` says (:class:`RunOptions` or a dict of its fields,
    over those in ``config``); return the summary written to ``summary.json``.
    ``callback(row)`` gets every row of ``metrics.jsonl``.

    Raises ``ValueError`` for a bad config, :class:`~workbench.data.DatasetNotFoundError` for
    missing data and :class:`NonFiniteError` when the run diverges (its last good checkpoint
    stays in the run folder).
    """
    cfg, opts = as_run(config, options)
    dist, device = distributed.setup(opts.device)
    try:
        cfg = resolve(cfg, device)
        opts = opts.replace(run_dir=dist.broadcast(opts.run_dir or default_run_dir(cfg)))
        folder = RunFolder(opts.run_dir, writer=dist.is_main)
        ckpt = folder.check(cfg.to_dict(), opts.resume, normalise=resumable)
        dist.barrier()
        return Trainer(cfg, opts, dist, device, folder, callback).setup().train(ckpt)
    finally:
        dist.close()


# ---------------------------------------------------------------------------------------------
# command line (the flags: workbench.training.config)
# ---------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    try:
        summary = run(*config_from_args(args))
    except (ValueError, FileNotFoundError, NonFiniteError, WriteError) as e:
        print(f"workbench train: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, (NonFiniteError, WriteError)) else 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {summary['run_dir']}\ntest top-1 error "
              f"{summary['test_top1_error']:.4f}, top-5 {summary['test_top5_error']:.4f}, "
              f"best top-1 {summary['best_test_top1_error']:.4f} (epoch "
              f"{summary['best_epoch']}), {summary['wall_time_seconds']:.1f} s")
    return 0
