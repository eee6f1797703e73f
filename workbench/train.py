"""``workbench train`` / :func:`run`: one training loop for EP and BP, into a run folder.

One step: move the batch to the device (and apply the dataset's ``device_transform``), set the
learning rate of the cosine schedule, let :func:`workbench.ep.estimate` write the gradient of the
batch-mean cost into ``.grad`` (``scheme="bp"`` for backprop), average it over the processes,
stop on a non-finite loss, energy or gradient, and take an SGD step (Nesterov momentum, weight
decay on every parameter). Each epoch ends with a test pass, a line in ``metrics.jsonl`` and a
checkpoint; every ``probe_every`` steps a *probe* line records the per-layer cosine and relative
error of the EP estimate against the BP gradient on a fixed batch of test images (test images:
their preprocessing has no randomness, for every dataset).

Everything random is a function of ``(seed, epoch, step)`` — data order, augmentation, the random
scheme's signs (drawn for the GLOBAL batch and sliced per process) — and the learning rate is a
function of the step, so a checkpoint (model, optimizer, counters, running sums, RNG state) is
enough to continue to exactly the uninterrupted result on the CPU.

Defaults follow the paper's VGG5 cross-entropy recipe (docs/method.md §8): β = 0.02, K = 5, lr 0.01,
momentum 0.9 (Nesterov), weight decay 3e-4, batch 64, 100 epochs, cosine down to 1e-6. The cosine
schedule is applied per epoch as in the paper (``lr(e) = min_lr + (lr − min_lr)(1 + cos(π e /
E)) / 2`` for epoch ``e`` of ``E``), or per step with ``schedule="step"``; ``--preset`` names one
of the paper's recipes (:mod:`workbench.presets`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from . import data, distributed, ep, models, pc
from .blocks import kept_statistics
from .config import RESUMABLE, TrainConfig, add_arguments, config_from_args, saved_config
from .data.loader import EpochBatches, fixed_batch, make_loader, mix_seed
from .energy import cost
from .precision import Precision, precision_context
from .progress import Progress
from .files import WriteError
from .runfolder import CHECKPOINT, RunFolder, git_commit, hardware
from .tracking import Tracker

__all__ = ["TrainConfig", "run", "NonFiniteError", "add_arguments", "config_from_args", "main",
           "cosine_lr", "learning_rate", "input_size", "build_datasets", "build_model"]


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
def _default_run_dir(cfg: TrainConfig) -> str:
    scheme = cfg.estimator.scheme
    what = cfg.algorithm if cfg.algorithm in ("bp", "ipc") else \
        (scheme if scheme == "il" else f"ep-{scheme}")
    return str(Path("runs") / f"{cfg.model}-{cfg.dataset}-{what}-{time.strftime('%Y%m%d-%H%M%S')}")


def input_size(cfg: TrainConfig) -> Optional[int]:
    """The image size the data is prepared at: ``cfg.image_size``, else vgg5's registry size
    (32: 28×28 data zero-padded, the paper's MNIST set-up), else the dataset's own (None)."""
    return cfg.image_size or (models.default_image_size("vgg5") if cfg.model == "vgg5" else None)


def build_datasets(cfg: TrainConfig, splits=("train", "test")) -> list:
    """The datasets of a run, as the trainer (and the widgets' :func:`load_run`) build them."""
    kw = dict(data_root=cfg.data_root, image_size=input_size(cfg), in_channels=cfg.in_channels,
              num_classes=cfg.num_classes, download=cfg.download, options=cfg.data_args)
    return [data.build(cfg.dataset, split, **kw) for split in splits]


def build_model(cfg: TrainConfig, dataset) -> "models.PCN":
    """The run's model for a built dataset (its shape decides the model's)."""
    shape = data.describe(dataset, cfg.dataset, input_size(cfg))
    return models.build(cfg.model, **shape, **cfg.model_args)


def resolve(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with ``precision="auto"`` and ``fused=None`` decided for ``device`` (a float32
    model), so that config.json records the arithmetic the run used and a resume on another
    device cannot change it silently."""
    est = cfg.estimator
    precision = Precision.resolve(est.precision, torch.float32, device,
                                  linear=not models.general(cfg.model))
    fused = est.fused if est.fused is not None else (precision == "fast"
                                                     and device.type == "cuda")
    return dataclasses.replace(cfg, estimator=est.replace(precision=precision, fused=fused))


class Trainer:
    """One run: data, model, optimizer, run folder, and the loop. Use :func:`run`."""

    def __init__(self, cfg: TrainConfig, dist: distributed.Dist, device: torch.device,
                 folder: RunFolder, callback: Optional[Callable[[dict], None]] = None):
        self.cfg, self.dist, self.device, self.callback = cfg, dist, device, callback
        self.folder = folder
        self.train_set, self.test_set = build_datasets(cfg)
        torch.manual_seed(cfg.seed)
        self.net = build_model(cfg, self.train_set).to(device).train()
        self.params = [p for _, p in ep.trainable(self.net)]
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        n_train = min(len(self.train_set), cfg.limit_train or len(self.train_set))
        n_test = min(len(self.test_set), cfg.limit_test or len(self.test_set))
        self.sampler = EpochBatches(n_train, cfg.batch_size, seed=cfg.seed, rank=dist.rank,
                                    world=dist.world, augment=True)
        self.test_sampler = EpochBatches(n_test, cfg.eval_batch_size, shuffle=False,
                                         drop_last=False, rank=dist.rank, world=dist.world)
        pin = device.type == "cuda"
        self.loader = make_loader(self.train_set, self.sampler, workers=cfg.workers,
                                  pin_memory=pin)
        self.test_loader = make_loader(self.test_set, self.test_sampler, workers=cfg.workers,
                                       pin_memory=pin)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.n_train, self.n_test = n_train, n_test
        self.precision = Precision.make(cfg.estimator.precision, torch.float32, device,
                                        linear=self.net.wiring.linear)
        self.step, self.epoch, self.elapsed = 0, 0, 0.0
        self.acc = self._fresh_acc()
        self.best: dict = {}
        self.last: dict = {}
        self.progress = Progress(cfg.progress, dist.is_main)
        self.tracker: Optional[Tracker] = None

    @staticmethod
    def _fresh_acc() -> dict:
        return {"loss": 0.0, "energy": 0.0, "change": 0.0, "steps": 0, "seconds": 0.0}

    # -- batches -------------------------------------------------------------------------------
    def _to_device(self, dataset, x: torch.Tensor, y: torch.Tensor):
        transform = getattr(dataset, "device_transform", None)
        if getattr(transform, "wants_host", False):      # e.g. GPU JPEG decode reads host bytes
            x = transform(x, device=self.device)
        else:
            x = x.to(self.device, non_blocking=True)
            x = transform(x) if transform is not None else x.float()
        return x, y.to(self.device, non_blocking=True)

    def _signs(self, n: int) -> torch.Tensor:
        """The random scheme's ±1 per example: drawn for the global batch (one for all of it
        with ``signs="batch"``), sliced per rank."""
        gen = torch.Generator().manual_seed(mix_seed(self.cfg.seed, "signs", self.step))
        if self.cfg.estimator.signs == "batch":
            signs = ep.random_signs(1, gen).expand(self.cfg.batch_size)
        else:
            signs = ep.random_signs(self.cfg.batch_size, gen)
        per = self.cfg.batch_size // self.dist.world
        return signs[self.dist.rank * per:self.dist.rank * per + n]

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        cfg = self.cfg
        x, y = self._to_device(self.train_set, x, y)
        lr = learning_rate(cfg, self.step, self.steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if cfg.algorithm == "ipc":          # the weights step inside, after every inference step
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
        if cfg.algorithm == "bp":
            est = ep.estimate(self.net, x, y, cfg.estimator, scheme="bp")
        else:
            signs = self._signs(len(y)) if cfg.estimator.scheme == "random" else None
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
                raise NonFiniteError(self._stop_message(what, value))

    def _stop_message(self, what: str, value: float) -> str:
        ckpt = self.folder.file(CHECKPOINT)
        kept = (f"the last good checkpoint is kept: {ckpt}" if ckpt.exists()
                else "no checkpoint had been written yet")
        return (f"stopped at step {self.step + 1} (epoch {self.epoch + 1}): the {what} is "
                f"{value}; {kept}. Lower --lr or --beta, or check the data.")

    # -- measurements --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test loss and top-1 / top-5 error (fractions) over the first ``n_test`` examples."""
        k = min(5, self.net.num_classes)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        fast = self.precision.name == "fast" and self.device.type == "cuda"
        self.test_sampler.set_epoch(0)
        self.sync_statistics()
        self.net.eval()             # normalisation by the running statistics
        with precision_context(self.precision):
            for x, y in self.test_loader:
                x, y = self._to_device(self.test_set, x, y)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
                    logits = self.net(x).float()
                top = logits.topk(k, 1).indices
                totals += torch.stack([
                    torch.tensor(float(len(y)), device=self.device),
                    cost(self.cfg.estimator.cost, logits, y).double().sum(),
                    (top[:, 0] != y).double().sum(),
                    (~(top == y[:, None]).any(1)).double().sum()])
        self.net.train()
        self.dist.sum([totals])
        n, loss, wrong1, wrongk = totals.tolist()
        return {"test_loss": loss / n, "test_top1_error": wrong1 / n,
                "test_top5_error": wrongk / n}

    def probe(self) -> None:
        """Per-layer cosine / relative error of the EP estimate vs BP on the fixed probe batch,
        and where the nudged phases end: per layer, the fraction of ReLU units and of pooling
        windows that switched against the free state (mean over the phases) and the
        fixed-point residual (max over the phases)."""
        if not self.dist.is_main:
            return
        cfg = self.cfg
        gen = torch.Generator().manual_seed(mix_seed(cfg.seed, "probe"))
        idx = torch.randperm(self.n_test, generator=gen)[:cfg.probe_size].tolist()
        x, y = fixed_batch(self.test_set, idx)
        x, y = self._to_device(self.test_set, x, y)
        s = cfg.estimator
        with kept_statistics(self.net):         # a measurement: the running statistics stay
            ref, _, _ = ep.bp_gradients(self.net, x, y, s.cost, "strict")
            est = ep.estimate(self.net, x, y, s, trace=False, accumulate=False, generator=gen,
                              diagnostics=True)
        rows = ep.compare(self.net, est.grads, ref)
        phases = est.trace.phases
        self._emit({"type": "probe", "epoch": self.epoch, "step": self.step,
                    "scheme": s.scheme, "beta": s.beta, "iterations": s.iterations,
                    "cosine": [r["cosine"] for r in rows],
                    "rel_error": [r["rel_error"] for r in rows],
                    "final_energy": sum(p.final_energy for p in phases) / len(phases),
                    "switched": torch.stack([p.switched[-1] for p in phases]).mean(0).tolist(),
                    "pool_changed": torch.stack([p.pool_changed[-1] for p in phases])
                    .mean(0).tolist(),
                    "residual": torch.stack([p.residual_max[-1] for p in phases])
                    .amax(0).tolist()})

    def _emit(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        self.folder.append(row)
        if self.tracker is not None:
            self.tracker.log(row)
        if self.callback is not None:
            self.callback(row)

    # -- checkpoints ---------------------------------------------------------------------------
    def sync_statistics(self) -> None:
        """Every process's running statistics (BatchNorm) become their mean over the processes,
        so that evaluation and the checkpoint see one model (each process normalises by its own
        slice of the batch in training, as DDP does without SyncBatchNorm)."""
        stats = [b for b in self.net.buffers() if b.is_floating_point()]
        self.dist.average(stats)

    def save(self) -> None:
        if self.tracker is not None:       # every event up to this step is on disk first
            self.tracker.flush()
        self.sync_statistics()
        self.folder.checkpoint({
            "format": 1, "step": self.step, "epoch": self.epoch, "elapsed": self._elapsed(),
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "acc": dict(self.acc), "best": dict(self.best), "last": dict(self.last),
            "torch_rng": torch.get_rng_state()})

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch, self.elapsed = ckpt["step"], ckpt["epoch"], ckpt["elapsed"]
        self.acc, self.best, self.last = ckpt["acc"], ckpt["best"], ckpt["last"]
        torch.set_rng_state(ckpt["torch_rng"])

    def _elapsed(self) -> float:
        return self.elapsed + time.perf_counter() - self._t0

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, ckpt: Optional[dict]) -> dict:
        """Train from ``ckpt`` (None: from the start) to the last epoch; return the summary."""
        cfg = self.cfg
        self._t0 = time.perf_counter()
        if self.dist.is_main and (cfg.tensorboard or cfg.wandb):
            self.tracker = Tracker(self.folder.path, cfg.to_dict(), cfg.tensorboard, cfg.wandb,
                                   resume_step=None if ckpt is None else ckpt["step"])
        self.folder.open(cfg.to_dict(), ckpt)
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
            raise e.with_advice(self._kept()) from None
        finally:
            self.folder.close()
            if self.tracker is not None:
                try:
                    self.tracker.close()
                except WriteError:
                    if sys.exc_info()[0] is None:     # not while another error is on its way
                        raise

    def _kept(self) -> str:
        """What a failed write leaves: the last complete checkpoint, and how to continue."""
        ckpt = self.folder.file(CHECKPOINT)
        if ckpt.exists():
            kept = f"the last complete checkpoint is intact: {ckpt}"
        else:
            kept = "no checkpoint had been written yet"
        return (f"{kept}; fix the cause (free space on {self.folder.path}) and run again with "
                f"--resume")

    def _run_epoch(self, epoch: int) -> None:
        cfg, spe = self.cfg, self.steps_per_epoch
        start = self.step - epoch * spe
        self.sampler.set_epoch(epoch, start)
        self.progress.epoch(epoch, cfg.epochs, start, spe)
        tick = time.perf_counter()
        for x, y in self.loader:
            loss, energy, change = self.train_step(x, y)
            acc = self.acc
            acc["loss"] += loss
            acc["energy"] += energy
            acc["change"] += change
            acc["steps"] += 1
            self.progress.step(self.step - epoch * spe, loss, self.opt.param_groups[0]["lr"])
            if cfg.probe_every and self.step % cfg.probe_every == 0:
                acc["seconds"] += time.perf_counter() - tick      # images/s excludes the probe
                self.probe()
                tick = time.perf_counter()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                    and self.step % spe:
                acc["seconds"] += time.perf_counter() - tick
                tick = time.perf_counter()
                self.save()
        self.acc["seconds"] += time.perf_counter() - tick
        tick = time.perf_counter()
        test = self.evaluate()
        acc, ep_mode = self.acc, cfg.algorithm != "bp"
        row = {"type": "epoch", "epoch": epoch + 1, "step": self.step,
               "train_loss": acc["loss"] / acc["steps"], **test,
               "lr": self.opt.param_groups[0]["lr"],
               "images_per_second": acc["steps"] * cfg.batch_size / max(acc["seconds"], 1e-9),
               "seconds": acc["seconds"] + time.perf_counter() - tick,
               "final_energy": acc["energy"] / acc["steps"] if ep_mode else None,
               "final_state_change": acc["change"] / acc["steps"] if ep_mode else None}
        self.last = row
        if not self.best or row["test_top1_error"] < self.best["test_top1_error"]:
            self.best = {"epoch": epoch + 1, "test_top1_error": row["test_top1_error"],
                         "test_top5_error": row["test_top5_error"]}
        self._emit(row)
        self.progress.line(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                           f", test top-1 error {row['test_top1_error']:.4f}, top-5 "
                           f"{row['test_top5_error']:.4f}, {row['images_per_second']:.0f} img/s")
        self.epoch, self.acc = epoch + 1, self._fresh_acc()
        self.save()

    def _finish(self, status: str, message: Optional[str] = None) -> dict:
        summary = {"status": status, "run_dir": str(self.folder.path), "epochs": self.epoch,
                   "steps": self.step, "train_examples": self.n_train,
                   "test_examples": self.n_test,
                   "test_top1_error": self.last.get("test_top1_error"),
                   "test_top5_error": self.last.get("test_top5_error"),
                   "test_loss": self.last.get("test_loss"),
                   "train_loss": self.last.get("train_loss"),
                   "best_test_top1_error": self.best.get("test_top1_error"),
                   "best_test_top5_error": self.best.get("test_top5_error"),
                   "best_epoch": self.best.get("epoch"),
                   "wall_time_seconds": self._elapsed(),
                   "hardware": hardware(self.device, self.dist.world),
                   "git_commit": git_commit(), "config": self.cfg.to_dict()}
        if message:
            summary["message"] = message
        self.folder.summary(summary)
        if self.tracker is not None:
            self.tracker.finish(summary)
        return summary


def run(config, callback: Optional[Callable[[dict], None]] = None) -> dict:
    """Train as ``config`` (a :class:`TrainConfig` or a dict of its fields) says; return the
    summary written to ``summary.json``. ``callback(row)`` gets every row of ``metrics.jsonl``.

    Raises ``ValueError`` for a bad config, :class:`~workbench.data.DatasetNotFoundError` for
    missing data and :class:`NonFiniteError` when the run diverges (its last good checkpoint
    stays in the run folder).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg = dataclasses.replace(cfg).validate()
    dist, device = distributed.setup(cfg.device)
    try:
        cfg = resolve(cfg, device)
        cfg.run_dir = dist.broadcast(cfg.run_dir or _default_run_dir(cfg))
        folder = RunFolder(cfg.run_dir, writer=dist.is_main)
        ckpt = folder.check(cfg.to_dict(), cfg.resume, ignore=RESUMABLE,
                            normalise=saved_config)
        dist.barrier()
        return Trainer(cfg, dist, device, folder, callback).fit(ckpt)
    finally:
        dist.close()


# ---------------------------------------------------------------------------------------------
# command line (the flags: workbench.config)
# ---------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    try:
        summary = run(config_from_args(args))
    except (ValueError, FileNotFoundError, NonFiniteError, WriteError) as e:
        print(f"workbench train: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, (NonFiniteError, WriteError)) else 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {summary['run_dir']}\ntest top-1 error "
              f"{summary['test_top1_error']:.4f}, top-5 {summary['test_top5_error']:.4f}, "
              f"best top-1 {summary['best_test_top1_error']:.4f} (epoch "
              f"{summary['best_epoch']}), {summary['wall_time_seconds']:.1f} s")
    return 0
