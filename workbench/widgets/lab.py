"""Models, data and cached engine calls for the explorers (:class:`Lab`), and the helpers
they share with the notebooks: examples of a dataset, padding to a model's input, the relative
error and the log–log slope, and loading a training run's model."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import synthetic
from ..engine import ep, models
from ..engine.blocks import couples_examples
from ..engine.energy import check_cost

__all__ = ["Lab", "default_models", "synthetic_data", "examples", "fit_input", "log_slope",
           "relative_error", "load_run"]


def default_models(num_classes: int = 10, in_channels: int = 1,
                   image_size: int = 28) -> dict:
    """Three small randomly initialised models (seed 0) that equilibrate on a CPU in
    milliseconds. The vgg5 takes the next multiple of 16 ≥ 32: :func:`fit_input` pads to it."""
    padded = max(32, -(-image_size // 16) * 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return {
            "mlp 128-64": models.build("mlp", num_classes, in_channels, image_size,
                                       widths=(128, 64)),
            "mlp 6×64": models.build("mlp", num_classes, in_channels, image_size,
                                     widths=(64,) * 6),
            "vgg5 tiny": models.build("vgg5", num_classes, in_channels, padded,
                                      channels=(4, 8, 8, 8, 8)),
        }


def synthetic_data(n: int = 64, in_channels: int = 1, image_size: int = 28,
                   num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded pool of ``n`` uniform [0, 1) images ``(n, C, S, S)`` and random labels ``(n,)``
    (:func:`workbench.data.synthetic.images`)."""
    return synthetic.images(n, in_channels, image_size, num_classes, seed)


def examples(dataset="fashion-mnist", n: int = 256, *, split: str = "test",
             data_root: Optional[str] = None,
             image_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of a dataset split as a model sees them: float images
    ``(n, C, S, S)`` (normalised by the dataset's ``device_transform``) and labels ``(n,)``.
    ``dataset``: a name of :mod:`workbench.data` or a dataset it built."""
    from .. import data
    ds = data.build(dataset, split, data_root=data_root, image_size=image_size) \
        if isinstance(dataset, str) else dataset
    items = [ds[i] for i in range(min(n, len(ds)))]
    x = torch.stack([torch.as_tensor(image) for image, _ in items])
    y = torch.tensor([int(label) for _, label in items])
    transform = getattr(ds, "device_transform", None)
    return (transform(x) if transform is not None else x.float()), y


def fit_input(x: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad images ``(N, C, S, S)`` to a model's larger ``in_shape`` (MNIST 28 → 32)."""
    want = tuple(in_shape)
    if tuple(x.shape[1:]) == want:
        return x
    if x.dim() != 4 or len(want) != 3 or x.shape[1] != want[0] or x.shape[2] > want[1] \
            or x.shape[3] > want[2]:
        raise ValueError(f"images of shape {tuple(x.shape[1:])} do not fit a model taking "
                         f"{want}: channels must match and images may only be zero-padded")
    dh, dw = want[1] - x.shape[2], want[2] - x.shape[3]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


relative_error = ep.relative_error


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log10 y`` against ``log10 x`` (the order of a power law)."""
    return float(np.polyfit(np.log10(xs), np.log10(ys), 1)[0])


def load_run(run_dir: str, n: int = 256):
    """The trained model of a run folder, its config and its first ``n`` test examples.

    Returns ``(net, config, (x, y))``: the model rebuilt from ``config.json`` with the weights of
    ``checkpoint.pt`` (the latest checkpoint; CPU), the run's
    :class:`~workbench.training.config.TrainConfig`, and test images as the run saw them.
    """
    from ..training import assembly
    from ..training.config import RunOptions, TrainConfig, saved_parts
    from ..training.runfolder import CHECKPOINT, CONFIG, PREVIOUS_CHECKPOINT, RunFolder
    folder = Path(run_dir)
    missing = [name for name in (CONFIG, CHECKPOINT) if not (folder / name).is_file()]
    if CHECKPOINT in missing and (folder / PREVIOUS_CHECKPOINT).is_file():
        missing.remove(CHECKPOINT)
    if missing:
        raise ValueError(f"{folder} is not a training run folder with a checkpoint: "
                         f"{' and '.join(missing)} missing (a run of `workbench train` or "
                         f"notebooks/03_train.ipynb writes both)")
    saved = RunFolder(folder, writer=False)
    fields, run = saved_parts(saved.config())
    cfg = TrainConfig.from_dict(fields)
    options = RunOptions(data_root=run.get("data_root"), download=False)
    test, = assembly.build_datasets(cfg, options, ("test",))
    net = assembly.build_model(cfg, test)
    net.load_state_dict(saved.latest_checkpoint()["model"])
    return net, cfg, examples(test, n)


class Lab:
    """Models, a pool of examples, and the engine calls on them, cached by their settings.

    Args:
        models: name → PCN (copied, moved to ``dtype``) or one PCN; default :func:`default_models`.
        data: ``(x, y)`` pool of examples, images ``(N, C, S, S)`` and labels ``(N,)``; default
            :func:`synthetic_data`. Batches are consecutive slices of ``batch_size`` examples.
        cost: ``ce`` | ``mse``. dtype: the models' dtype (float64: the error shown is algorithmic).
        seed: seeds the ``random`` scheme's signs (the same settings give the same estimate).
    """

    def __init__(self, models=None, data=None, batch_size: int = 16, cost: str = "ce",
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        check_cost(cost)
        self.x, self.y = synthetic_data() if data is None else data
        if models is None:
            models = default_models(max(10, int(self.y.max()) + 1), self.x.shape[1],
                                    self.x.shape[-1])
        elif isinstance(models, torch.nn.Module):
            models = {getattr(models, "name", "model"): models}
        if not models:
            raise ValueError("models must be a PCN or a non-empty dict name -> PCN")
        self.models = {name: copy.deepcopy(net).to(dtype) for name, net in models.items()}
        if self.x.shape[0] != self.y.shape[0] or self.x.shape[0] < 1:
            raise ValueError(f"data must be (x, y) with the same number (>= 1) of examples, got "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = min(batch_size, self.x.shape[0])
        self.cost, self.dtype, self.seed = cost, dtype, seed
        self._estimates: dict = {}
        self.engine_calls = 0

    @property
    def num_batches(self) -> int:
        return self.x.shape[0] // self.batch_size

    def layers(self, model: str) -> int:
        return len(self.models[model].layers)

    def batch(self, model: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` shaped for ``model``: ``x`` ``(B, *in_shape)``, ``y`` ``(B,)``."""
        if not 0 <= index < self.num_batches:
            raise ValueError(f"batch index must lie in [0, {self.num_batches}), got {index}")
        net = self.models[model]
        sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
        p = next(net.parameters())
        x = self.x[sl] if net.in_shape is None else fit_input(self.x[sl], net.in_shape)
        return x.to(p.device, self.dtype), self.y[sl].to(p.device)

    def estimate(self, model: str, batch: int, scheme: str, beta: float = 0.0,
                 iterations: int = 0, update: str = "mod_pgd", order: str = "async",
                 perturbation: str = "nudge") -> ep.Estimate:
        """``ep.estimate`` for these settings (``scheme="bp"``: the reference), computed once."""
        kw = {} if scheme == "bp" else dict(
            beta=float(beta), iterations=int(iterations), update=update, order=order,
            perturbation=perturbation)
        key = (model, batch, scheme, *kw.values())
        if key not in self._estimates:
            x, y = self.batch(model, batch)
            if scheme == "random":
                kw["generator"] = torch.Generator().manual_seed(self.seed)
                if couples_examples(self.models[model]):     # train-mode BatchNorm: one sign
                    kw["signs"] = "batch"                    # per batch (docs/method.md §9)
            self.engine_calls += 1
            self._estimates[key] = ep.estimate(self.models[model], x, y, scheme=scheme,
                                               cost=self.cost, accumulate=False,
                                               diagnostics=scheme != "bp", **kw)
        return self._estimates[key]
