"""What a run is made of, from its config: the input size, the datasets, the model, the
automatic choices decided for the device, the default run folder. The trainer
(:mod:`workbench.training.train`) and the widgets' ``load_run`` build a run the same way here,
so that a run folder's model is rebuilt exactly as it was trained."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from .. import data
from ..engine import models
from .config import RunOptions, TrainConfig

__all__ = ["input_size", "build_datasets", "build_model", "resolve", "default_run_dir",
           "method_name"]


def input_size(cfg: TrainConfig) -> Optional[int]:
    """The image size the data is prepared at: ``cfg.image_size``, else the model registry's
    (:func:`workbench.engine.models.input_size`: vgg5's 32, the paper's 28×28 MNIST
    zero-padded), else the dataset's own (None)."""
    return cfg.image_size or models.input_size(cfg.model)


def build_datasets(cfg: TrainConfig, options: Optional[RunOptions] = None,
                   splits=("train", "test")) -> list:
    """The datasets of a run, one per split, as every command builds them (``options``: where
    the data lives and whether it may be downloaded; default :class:`RunOptions`'s)."""
    options = options or RunOptions()
    kw = dict(data_root=options.data_root, image_size=input_size(cfg),
              in_channels=cfg.in_channels, num_classes=cfg.num_classes,
              download=options.download, options=cfg.data_args)
    return [data.build(cfg.dataset, split, **kw) for split in splits]


def build_model(cfg: TrainConfig, dataset) -> "models.PCN":
    """The run's model for a built dataset (its shape decides the model's)."""
    shape = data.describe(dataset, cfg.dataset, input_size(cfg))
    return models.build(cfg.model, **shape, **cfg.model_args)


def resolve(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with the estimator's automatic choices (precision ``auto``, ``fused=None``)
    decided for ``device`` and a float32 model
    (:meth:`~workbench.engine.settings.EstimatorSettings.resolved`), so that config.json records
    the arithmetic the run used and a resume on another device cannot change it silently."""
    return cfg.replace(estimator=cfg.estimator.resolved(
        torch.float32, device, linear=not models.general(cfg.model)))


def method_name(cfg: TrainConfig) -> str:
    """``bp``, ``ipc``, ``il`` or ``ep-<scheme>``: how a run's weights learn."""
    scheme = cfg.estimator.scheme
    if cfg.incremental:
        return "ipc"
    return scheme if scheme in ("bp", "il") else f"ep-{scheme}"


def default_run_dir(cfg: TrainConfig) -> str:
    """``runs/<model>-<dataset>-<method>-<time>`` (:func:`method_name`)."""
    what = method_name(cfg)
    return str(Path("runs") / f"{cfg.model}-{cfg.dataset}-{what}-{time.strftime('%Y%m%d-%H%M%S')}")
